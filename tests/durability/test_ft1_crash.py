"""FT-1: ``kill -9`` of ``pacsd serve`` at every instant of the ingest path loses no
acknowledged instance and needs no manual repair.

Each trial arms one fail point (pacsd/failpoints.py) in a real server process — SIGKILL
on its N-th hit, N drawn per point from a fixed seed — and sends instances one per request
(STOW-RS) or per C-STORE until the process dies. A restarted server on the same data
directory must then return every acknowledged instance byte for byte; the instance in
flight at the crash is either absent or complete; re-sending everything not acknowledged
succeeds (idempotent, BI-25); and ``pacsd verify`` finds every copy intact. Variants: the
embedded default (SQLite + one local copy), and PostgreSQL + three copies (two local
directories and a real S3 server). A last test kills the process from outside at random
instants while four clients store concurrently.
"""
from __future__ import annotations

import concurrent.futures as cf
import io
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pydicom
import pytest
import requests
from dicomgen import make_dataset, multipart, to_part10
from pacsd_server import Server
from pynetdicom import AE

STOW_POINTS = ("ingest.after_parse", "store.after_fsync", "store.after_rename",
               "index.before_commit", "index.after_commit", "web.before_response")
SINGLE = {"Accept": "application/dicom; transfer-syntax=*"}
INSTANCES = 8


def _instances(n: int = INSTANCES) -> list[tuple[str, str, bytes]]:
    """(study, sop, Part 10 bytes) of n instances of one new study."""
    study = f"2.25.{uuid.uuid4().int}"
    series = f"{study}.1"
    out = []
    for i in range(n):
        sop = f"{series}.{i + 1}"
        out.append((study, sop, to_part10(make_dataset(
            study=study, series=series, sop=sop, seed=i, InstanceNumber=i + 1))))
    return out


def _stow(url: str, data: bytes) -> int | None:
    """HTTP status, or None when the server went away before answering."""
    body, ctype = multipart([data])
    try:
        return requests.post(url + "/dicom-web/studies", data=body,
                             headers={"Content-Type": ctype}, timeout=60).status_code
    except requests.ConnectionError:
        return None


def _stored(url: str, study: str, sop: str) -> bytes | None:
    r = requests.get(f"{url}/dicom-web/studies/{study}/series/{study}.1/instances/{sop}",
                     headers=SINGLE, timeout=60)
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return r.content  # a single application/dicom object (Accept above)


def _verify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pacsd.cli", "verify", *args],
                          capture_output=True, text=True, timeout=300)


def _same_object(got: bytes, data: bytes, exact: bool) -> bool:
    """STOW-RS keeps the file byte for byte; C-STORE keeps the data set as received under
    File Meta Information pacsd writes, so there the pixels and UIDs must agree."""
    if exact:
        return got == data
    a, b = pydicom.dcmread(io.BytesIO(got)), pydicom.dcmread(io.BytesIO(data))
    return (a.SOPInstanceUID, a.PixelData) == (b.SOPInstanceUID, b.PixelData)


def _check_after_restart(srv: Server, sent: list[tuple[str, str, bytes]],
                         acked: set[str], dimse: bool = False) -> None:
    """FT-1 outcome rules, then re-send what was not acknowledged, the same way (a C-STORE
    re-sent by STOW-RS carries other File Meta bytes: 409, never overwritten, BI-26)."""
    exact = not dimse
    for study, sop, data in sent:
        got = _stored(srv.url, study, sop)
        if sop in acked:
            assert got is not None, "an acknowledged instance was lost"
            assert _same_object(got, data, exact)
        else:
            assert got is None or _same_object(got, data, exact), \
                "a half-stored instance is visible"
    for study, sop, data in sent:
        if sop not in acked:
            assert (_c_store(srv.dicom_port, data) if dimse else _stow(srv.url, data)) \
                in (0, 200)
    study = sent[0][0]
    r = requests.get(f"{srv.url}/dicom-web/studies/{study}/instances", timeout=60)
    assert r.status_code == 200 and len(r.json()) == len(sent)


def _c_store(port: int, data: bytes) -> int | None:
    """C-STORE status, or None when the association failed (the server died)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ae = AE(ae_title="FT1SCU")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSD")
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(ds)
    finally:
        if assoc.is_established:
            assoc.release()
    return int(status.Status) if status else None


def _run_trial(data_dir: Path, point: str, nth: int, extra: tuple[str, ...] = (), *,
               per_instance_hits: int = 1, dimse: bool = False) -> None:
    """Arm ``point`` to kill at its ``nth`` hit, store until the server dies, restart,
    check (module docstring)."""
    sent = _instances()
    acked: set[str] = set()
    srv = Server(str(data_dir), *extra, dicom_port=None if dimse else 0,
                 env={"PACSD_FAILPOINTS": f"{point}=kill@{nth}"})
    try:
        for study, sop, data in sent:
            status = _c_store(srv.dicom_port, data) if dimse else _stow(srv.url, data)
            if status is None:
                break
            assert status in (0, 200)
            acked.add(sop)
        assert srv.proc.wait(30) == -signal.SIGKILL, "the fail point did not fire"
    finally:
        srv.stop()
    # One instance per request: every instance before the fatal hit was acknowledged.
    assert len(acked) == (nth - 1) // per_instance_hits
    srv = Server(str(data_dir), *extra, dicom_port=None if dimse else 0)  # no repair
    try:
        _check_after_restart(srv, sent, acked, dimse)
    finally:
        srv.stop()
    result = _verify("--data-dir", str(data_dir), *extra)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("point", STOW_POINTS)
def test_FT1_kill_at_each_ingest_instant_sqlite_local(tmp_path, point):
    _run_trial(tmp_path, point, random.Random(point).randint(2, 5))


@pytest.mark.parametrize("point", ("store.after_rename", "index.after_commit",
                                   "dimse.before_status"))
def test_FT1_kill_during_c_store(tmp_path, point):
    _run_trial(tmp_path, point, random.Random(point).randint(2, 5), dimse=True)


@pytest.mark.postgres
@pytest.mark.parametrize("point", ("store.after_copy", "index.before_commit",
                                   "index.after_commit"))
def test_FT1_kill_postgres_three_copies_with_s3(tmp_path, point, pg_fresh_url,
                                                s3_endpoint):
    opts = s3_endpoint.store_options()
    config = tmp_path / "pacsd.toml"
    config.write_text(f"""
[index]
url = "{pg_fresh_url}"

[storage]
endpoint_url = "{opts['endpoint_url']}"
key = "{opts['key']}"
secret = "{opts['secret']}"
region = "{opts['region']}"

[[storage.copies]]
url = "{tmp_path / 'copy-a'}"
[[storage.copies]]
url = "{tmp_path / 'copy-b'}"
[[storage.copies]]
url = "s3://pacsd-e2e/ft1-{uuid.uuid4().hex[:8]}"
""")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # store.after_copy is hit once per copy: a kill between two copies of one instance.
    hits = 3 if point == "store.after_copy" else 1
    nth = random.Random(point).randint(2 * hits, 4 * hits - 1)
    _run_trial(data_dir, point, nth, ("--config", str(config)), per_instance_hits=hits)


def test_FT1_kill_from_outside_at_random_instants_during_concurrent_stow(tmp_path):
    rng = random.Random(20261127)
    for trial in range(3):
        data_dir = tmp_path / f"trial-{trial}"
        data_dir.mkdir()
        sent = _instances(24)
        acked: set[str] = set()
        srv = Server(str(data_dir))
        try:
            def send(item):
                return item[1], _stow(srv.url, item[2])

            with cf.ThreadPoolExecutor(4) as pool:
                futures = [pool.submit(send, item) for item in sent]
                time.sleep(rng.uniform(0.05, 1.0))
                srv.proc.send_signal(signal.SIGKILL)
                for f in futures:
                    sop, status = f.result()
                    if status == 200:
                        acked.add(sop)
                    else:
                        assert status is None, status
        finally:
            srv.stop()
        srv = Server(str(data_dir))
        try:
            _check_after_restart(srv, sent, acked)
        finally:
            srv.stop()
        result = _verify("--data-dir", str(data_dir))
        assert result.returncode == 0, result.stdout + result.stderr
