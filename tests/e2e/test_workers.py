"""``pacsd serve --workers N`` (issue 6, R-H1; pacsd/server.py): real processes, no mocks.

Two worker processes accept HTTP on one port (one shared listening socket, connections
balanced by the workers: pacsd/web/balance.py). Many concurrent
clients store through both (LD-1, LD-6: the same instances sent twice at once), on
SQLite (two processes writing one index: no "database is locked" answer, FT-10) and on
PostgreSQL; everything reads back byte for byte through QIDO and WADO-RS; the audit chain
both processes appended to verifies (``pacsd audit verify``). A killed worker is started
again while the port keeps answering (FT-1 applied to one worker); SIGTERM lets an upload
in flight finish and the supervisor exits 0; only the primary runs the DIMSE SCP; failed
logins and a plugin's refused share-link openings are counted across workers (SEC-8);
rendered images are shared by the workers in ``<data_dir>/render-cache``, which is gone
once the server stopped.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests
from dicomgen import make_dataset, multipart, to_part10
from pacsd_server import Server, stow_sigterm_midway

SINGLE = {"Accept": "application/dicom; transfer-syntax=*"}
STARTED = re.compile(rb"started worker (\d+) \(pid (\d+)\)")


def _log(srv: Server) -> bytes:
    srv.log.flush()
    with open(srv.log.name, "rb") as fh:
        return fh.read()


def worker_pids(srv: Server, n: int = 2, timeout: float = 60.0) -> dict[int, int]:
    """index -> pid of the current workers, once each has logged that it listens."""
    deadline = time.monotonic() + timeout
    while True:
        text = _log(srv)
        pids = {int(i): int(p) for i, p in STARTED.findall(text)}  # the latest per index
        if len(pids) == n and all(
                f"worker {i} (pid {p}) listening".encode() in text for i, p in pids.items()):
            return pids
        if time.monotonic() > deadline or srv.proc.poll() is not None:
            raise AssertionError("workers did not start:\n" + text.decode(errors="replace"))
        time.sleep(0.1)


def written(pid: int) -> int:
    """Bytes the process has written (``wchar`` of /proc/PID/io)."""
    with open(f"/proc/{pid}/io") as fh:
        return int(dict(line.split(": ") for line in fh.read().splitlines())["wchar"])


def listening_inodes(port: int) -> list[str]:
    """The socket inodes listening on TCP ``port`` (any process), from /proc/net/tcp."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    out.append(fields[9])
    return out


def listeners(port: int) -> int:
    """Listening TCP sockets on ``port`` (any process)."""
    return len(listening_inodes(port))


def holds_socket(pid: int, inode: str) -> bool:
    """Whether process ``pid`` has socket ``inode`` open."""
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, fd)) == f"socket:[{inode}]":
                return True
        except OSError:
            continue
    return False


def stow(url: str, data: bytes) -> int:
    body, ctype = multipart([data])
    # A new connection per request: the kernel spreads connections over the workers.
    return requests.post(url + "/dicom-web/studies", data=body,
                         headers={"Content-Type": ctype, "Connection": "close"},
                         timeout=120).status_code


def pacsd_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pacsd.cli", *args], capture_output=True,
                          timeout=120)


def instances(n_studies: int = 4, per_study: int = 12) -> list[tuple[str, str, str, bytes]]:
    out = []
    for s in range(n_studies):
        study = f"2.25.{uuid.uuid4().int}"
        for i in range(per_study):
            series = f"{study}.{i % 2 + 1}"
            sop = f"{series}.{i + 1}"
            out.append((study, series, sop, to_part10(make_dataset(
                study=study, series=series, sop=sop, seed=s * 100 + i, rows=64, columns=64,
                SeriesNumber=i % 2 + 1, InstanceNumber=i + 1, Modality=("CT", "MR")[i % 2]))))
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def index_config(request, tmp_path) -> list[str]:
    """Extra ``pacsd serve`` arguments: the index on SQLite (the data directory's) or on a
    fresh PostgreSQL database."""
    if request.param == "sqlite":
        return []
    url = request.getfixturevalue("pg_fresh_url")  # tests/conftest.py
    conf = tmp_path / "pg.toml"
    conf.write_text(f'[index]\nurl = "{url}"\n')
    return ["--config", str(conf)]


def test_RH1_LD1_LD6_two_workers_concurrent_stow_read_back_audit_verifies(tmp_path,
                                                                         index_config):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    srv = Server(str(data_dir), "--workers", "2", *index_config)
    try:
        pids = worker_pids(srv)
        before = {i: written(p) for i, p in pids.items()}
        items = instances()
        jobs = [data for *_, data in items]
        jobs += [data for k, (*_, data) in enumerate(items) if k % 4 == 0]  # LD-6 twice
        with cf.ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda d: stow(srv.url, d), jobs))
        assert statuses == [200] * len(jobs)  # never 503 "index busy" / "locked" (FT-10)
        # Both workers stored: each wrote at least one instance's bytes.
        smallest = min(len(d) for d in jobs)
        grew = {i: written(p) - before[i] for i, p in pids.items()}
        assert all(g >= smallest for g in grew.values()), grew

        studies = sorted({study for study, *_ in items})
        for study in studies:
            r = requests.get(f"{srv.url}/dicom-web/studies",
                             params={"StudyInstanceUID": study}, timeout=60)
            assert r.status_code == 200
            [item] = r.json()
            assert item["00201208"]["Value"] == [12]  # NumberOfStudyRelatedInstances
            assert item["00201206"]["Value"] == [2]
        with cf.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda it: requests.get(
                f"{srv.url}/dicom-web/studies/{it[0]}/series/{it[1]}/instances/{it[2]}",
                headers={**SINGLE, "Connection": "close"}, timeout=60), items))
        for r, (*_, data) in zip(got, items):
            assert r.status_code == 200 and r.content == data
    finally:
        srv.stop()
    assert srv.proc.returncode == 0
    # Both processes appended to one hash chain: it verifies end to end.
    p = pacsd_cli("audit", "verify", "--data-dir", str(data_dir), *index_config)
    assert p.returncode == 0, p.stdout + p.stderr


def test_RH1_FT1_killed_worker_is_replaced_port_keeps_answering(tmp_path):
    srv = Server(str(tmp_path), "--workers", "2", dicom_port=None)
    try:
        pids = worker_pids(srv)
        stop = threading.Event()
        answers: list[int] = []

        def probe() -> None:  # health checks on new connections the whole time
            while not stop.is_set():
                try:
                    answers.append(requests.get(srv.url + "/api/v1/health", timeout=10,
                                                headers={"Connection": "close"}).status_code)
                except requests.ConnectionError:
                    answers.append(-1)  # a connection queued on the killed worker
                time.sleep(0.02)

        t = threading.Thread(target=probe)
        t.start()
        try:
            for index in (1, 0):  # a secondary, then the primary (it runs DIMSE)
                os.kill(pids[index], signal.SIGKILL)
                deadline = time.monotonic() + 60
                while (new := worker_pids(srv))[index] == pids[index]:
                    assert time.monotonic() < deadline, "the worker was not started again"
                    time.sleep(0.1)
                assert new[1 - index] == pids[1 - index]
                assert b"died (signal SIGKILL); starting it again" in _log(srv)
                pids = new
        finally:
            stop.set()
            t.join(30)
        assert answers.count(200) >= 0.9 * len(answers) and answers[-1] == 200
        deadline = time.monotonic() + 30  # the new primary's DIMSE SCP
        while _log(srv).count(b"DIMSE listening") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        echo = subprocess.run(["/usr/bin/echoscu", "-aec", "PACSD", "127.0.0.1",
                               str(srv.dicom_port)], capture_output=True, timeout=60)
        assert echo.returncode == 0, echo.stderr
        assert requests.get(srv.url + "/api/v1/health", timeout=10).status_code == 200
    finally:
        srv.stop()


def test_RH1_one_DIMSE_SCP_answers_C_ECHO_once(tmp_path):
    srv = Server(str(tmp_path), "--workers", "2", dicom_port=None)
    try:
        pids = worker_pids(srv)
        assert listeners(srv.dicom_port) == 1  # only the primary listens for DICOM
        # both workers accept HTTP from one shared socket (web/balance.py)
        [http] = listening_inodes(srv.port)
        assert all(holds_socket(pid, http) for pid in pids.values())
        assert _log(srv).count(b"DIMSE listening") == 1
        echo = subprocess.run(["/usr/bin/echoscu", "-v", "-aec", "PACSD", "127.0.0.1",
                               str(srv.dicom_port)], capture_output=True, timeout=60)
        assert echo.returncode == 0, echo.stderr
        assert echo.stderr.count(b"Received Echo Response (Success)") == 1
    finally:
        srv.stop()
    assert srv.proc.returncode == 0


def test_RH1_sigterm_drains_upload_in_flight_exit_0(tmp_path):
    srv = Server(str(tmp_path), "--workers", "2")
    worker_pids(srv)
    ds = make_dataset(rows=64, columns=64)
    body, ctype = multipart([to_part10(ds)])
    assert stow_sigterm_midway(srv, body, ctype) == 200  # SIGTERM to the supervisor
    assert srv.proc.wait(40) == 0
    srv.stop()
    srv2 = Server(str(tmp_path))
    try:
        r = requests.get(f"{srv2.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
                         f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}", headers=SINGLE)
        assert r.status_code == 200 and r.content == to_part10(ds)
    finally:
        srv2.stop()


def test_RH1_SEC8_failed_logins_counted_across_workers(tmp_path):
    conf = tmp_path / "pacsd.toml"
    conf.write_text("[security]\nenabled = true\nlogin_rate_limit = 3\n"
                    "login_rate_window_s = 600.0\n")
    srv = Server(str(tmp_path), "--workers", "2", "--config", str(conf))
    try:
        worker_pids(srv)
        codes = [requests.get(srv.url + "/dicom-web/studies", timeout=30, headers={
            "Authorization": f"Bearer wrong-{k}", "Connection": "close"}).status_code
                 for k in range(6)]
        # Per process, up to 2 x 3 failures would pass before the first 429.
        assert codes == [401, 401, 401, 429, 429, 429]
    finally:
        srv.stop()


def test_RH1_SEC8_plugin_rate_limit_counted_across_workers(tmp_path):
    """pacsd-share's link-guessing limit (PluginAPI.rate_limiter) holds per server."""
    pytest.importorskip("pacsd_share")
    conf = tmp_path / "pacsd.toml"
    conf.write_text("[security]\nenabled = true\n\n[plugins.share]\nrate_limit = 3\n")
    srv = Server(str(tmp_path), "--workers", "2", "--config", str(conf))
    try:
        worker_pids(srv)
        codes = []
        for k in range(8):
            r = requests.get(f"{srv.url}/plugins/share/s/guess-{k}-{uuid.uuid4().hex}",
                             allow_redirects=False, timeout=30,
                             headers={"Connection": "close"})
            codes.append(r.status_code)
        # Per process, up to 2 x 3 refusals would pass before the first 429.
        assert codes == [401, 401, 401] + [429] * 5, codes
    finally:
        srv.stop()


def test_RH1_no_rendered_pixels_on_disk_with_encryption_at_rest(tmp_path):
    from pacsd.config import load_settings
    from pacsd.server import shared_render_cache

    plain = shared_render_cache(load_settings(None, server__data_dir=str(tmp_path)))
    assert plain is not None and plain.dir == tmp_path / "render-cache"
    assert shared_render_cache(load_settings(None, server__data_dir=str(tmp_path),
                                             encryption__enabled=True)) is None


def test_RH1_auto_is_one_worker_per_usable_cpu(tmp_path):
    from pacsd.config import load_settings
    from pacsd.server import usable_cpus, worker_count

    assert load_settings(None).server.workers == 0  # the default: auto
    mine = len(os.sched_getaffinity(0))
    assert usable_cpus(str(tmp_path)) == mine  # no cgroup file: the affinity mask
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(str(tmp_path)) == mine
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a container's --cpus 1.5
    assert usable_cpus(str(tmp_path)) == min(mine, 2)
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert usable_cpus(str(tmp_path)) == 1
    assert worker_count(load_settings(None, server__workers=3)) == 3
    assert worker_count(load_settings(None)) == usable_cpus()


def test_RH1_workers_setting_and_option(tmp_path):
    p = pacsd_cli("serve", "--data-dir", str(tmp_path), "--workers", "0")
    assert p.returncode == 2 and b"positive number" in p.stderr
    conf = tmp_path / "bad.toml"
    conf.write_text("[server]\nworkers = -1\n")
    p = pacsd_cli("serve", "--data-dir", str(tmp_path), "--config", str(conf))
    assert p.returncode == 2 and b"[server] workers" in p.stderr


def test_RH1_study_stable_fires_once_for_a_study_stored_through_two_workers(tmp_path):
    probe = tmp_path / "stable.txt"
    conf = tmp_path / "pacsd.toml"
    conf.write_text('[server]\nstable_age_s = 5.0\n'
                    '[plugins.probe]\nmodule = "stable_probe"\n')
    here = os.path.dirname(os.path.abspath(__file__))
    env = {"PACSD_STABLE_PROBE": str(probe),
           "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")}
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    srv = Server(str(data_dir), "--workers", "2", "--config", str(conf), env=env)
    try:
        pids = worker_pids(srv)
        before = {i: written(p) for i, p in pids.items()}
        study = f"2.25.{uuid.uuid4().int}"
        items = [to_part10(make_dataset(study=study, series=f"{study}.1",
                                        sop=f"{study}.1.{i + 1}", seed=i, rows=64, columns=64,
                                        InstanceNumber=i + 1)) for i in range(16)]
        with cf.ThreadPoolExecutor(8) as pool:
            assert list(pool.map(lambda d: stow(srv.url, d), items)) == [200] * 16
        smallest = min(len(d) for d in items)
        assert all(written(p) - before[i] >= smallest for i, p in pids.items())
        deadline = time.monotonic() + 60
        while not probe.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(7)  # longer than stable_age_s: a second announcement would be here
        lines = probe.read_text().split()
        # Once, by the primary, though both workers stored instances of the study.
        assert lines == [study, str(pids[0])]
    finally:
        srv.stop()


def test_RH1_rendered_images_shared_by_workers_and_removed_at_stop(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shared = data_dir / "render-cache"
    shared.mkdir()
    (shared / "left-by-a-crash").write_bytes(b"x")
    srv = Server(str(data_dir), "--workers", "2")
    try:
        worker_pids(srv)
        study, series, sop, data = instances(1, 1)[0]
        assert stow(srv.url, data) == 200
        url = f"{srv.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}/rendered"
        # New connections: the kernel spreads them over both workers.
        answers = {requests.get(url, headers={"Accept": "image/jpeg", "Connection": "close"},
                                timeout=60).content for _ in range(8)}
        assert len(answers) == 1 and next(iter(answers))[:2] == b"\xff\xd8"
        assert not (shared / "left-by-a-crash").exists() and len(list(shared.iterdir())) == 1
        # Rendered pixels: readable by the server's user only.
        assert shared.stat().st_mode & 0o777 == 0o700
        assert [f.stat().st_mode & 0o777 for f in shared.iterdir()] == [0o600]
    finally:
        srv.stop()
    assert not shared.exists()


def test_RH1_kept_qido_answers_shared_by_workers(tmp_path):
    """A kept QIDO page (here all 9 studies) is built by the first worker asked and
    shared through ``<data_dir>/render-cache`` with the other (services/query.py): eight
    new connections, spread over both workers, get the same bytes, and the shared file is
    never written again (a worker that built the page anew would replace it)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shared = data_dir / "render-cache"
    srv = Server(str(data_dir), "--workers", "2")
    try:
        worker_pids(srv)
        for _study, _series, _sop, data in instances(9, 1):
            assert stow(srv.url, data) == 200
        def studies() -> bytes:
            return requests.get(f"{srv.url}/dicom-web/studies",
                                headers={"Accept": "application/dicom+json",
                                         "Connection": "close"}, timeout=60).content
        first = studies()
        assert len(json.loads(first)) == 9
        [built] = list(shared.iterdir())
        inode = built.stat().st_ino
        assert {studies() for _ in range(8)} == {first}
        assert [(f, f.stat().st_ino) for f in shared.iterdir()] == [(built, inode)]
    finally:
        srv.stop()
    assert not shared.exists()
