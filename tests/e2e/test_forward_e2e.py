"""Store-and-forward between real processes (issue 3 "Done when"; R-B2, R-B3, R-A9): a
modality simulated with DCMTK ``storescu`` (calling AE CT01) stores a study in pacsd A;
a rule on the calling AE forwards it over STOW-RS to a second ``pacsd serve`` B within
seconds, bit-exact, and A's monitoring page shows its upload time. A restart of A while
a study waits for a destination that is down loses nothing: after the restart and once
the destination is up, the study is delivered, each instance once."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from dicomgen import make_dataset, to_part10
from pacsd_server import Server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
from fwd_helpers import StorageSCP, dataset_bytes  # noqa: E402

STORESCU = Path("/usr/bin/storescu")


def wait(predicate, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, "condition not reached before the deadline"
        time.sleep(0.1)


def config(tmp: Path, text: str) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "pacsd.toml"
    path.write_text("[jobs]\npoll_interval_s = 0.1\nbackoff_base_s = 0.5\n"
                    "backoff_jitter = 0.0\n[forward]\nbatch_delay_s = 0.5\n" + text)
    return path


def status(srv: Server) -> dict:
    return requests.get(srv.url + "/api/v1/forwarding/status", timeout=10).json()


@pytest.mark.skipif(not STORESCU.exists(), reason="DCMTK storescu is not installed")
def test_storescu_to_pacsd_forwarded_to_a_second_pacsd_R_B3(tmp_path):
    (tmp_path / "b").mkdir()
    b = Server(str(tmp_path / "b"))
    try:
        conf = config(tmp_path / "a", f"""
[forward.destinations.city]
type = "dicomweb"
url = "{b.url}/dicom-web/studies"
[[forward.rules]]
name = "the CT room"
destinations = ["city"]
match = {{ calling_aet = "CT0?" }}
""")
        a = Server(str(tmp_path / "a"), "--config", str(conf), dicom_port=None)
        try:
            first = make_dataset(seed=1)
            study = [first] + [make_dataset(study=first.StudyInstanceUID,
                                            series=first.SeriesInstanceUID, seed=n)
                               for n in range(2, 4)]
            files = []
            for n, ds in enumerate(study):
                f = tmp_path / f"ct{n}.dcm"
                f.write_bytes(to_part10(ds))
                files.append(str(f))
            other = tmp_path / "other.dcm"
            other_ds = make_dataset(seed=9)
            other.write_bytes(to_part10(other_ds))
            r = subprocess.run([str(STORESCU), "-aet", "CT01", "-aec", "PACSD", "127.0.0.1",
                                str(a.dicom_port), *files], capture_output=True, timeout=60)
            assert r.returncode == 0, r.stderr
            r = subprocess.run([str(STORESCU), "-aet", "MR07", "-aec", "PACSD", "127.0.0.1",
                                str(a.dicom_port), str(other)], capture_output=True,
                               timeout=60)
            assert r.returncode == 0, r.stderr
            wait(lambda: status(a)["destinations"]["city"]["delivered_24h"] == 1)
            for ds in study:
                url = (f"{b.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
                       f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")
                got = requests.get(url, headers={"Accept": 'multipart/related; '
                                   'type="application/dicom"; transfer-syntax=*'},
                                   timeout=10)
                assert got.status_code == 200
                assert dataset_bytes(to_part10(ds)) in got.content  # bit-exact (R-A5)
            # The MR07 instance matched no rule: B never saw it.
            r = requests.get(f"{b.url}/dicom-web/studies?StudyInstanceUID="
                             f"{other_ds.StudyInstanceUID}", timeout=10)
            assert r.status_code in (200, 204) and (r.status_code == 204 or r.json() == [])
            log = requests.get(a.url + "/api/v1/forwarding/log", timeout=10).json()["items"]
            assert {(i["calling_aet"], i["state"]) for i in log} == {("CT01", "sent")}
            city = status(a)["destinations"]["city"]
            assert city["upload_p50_s"] is not None and city["upload_p50_s"] >= 0
            page = requests.get(a.url + "/admin/forwarding", timeout=10).text
            assert "upload p50" in page and "<td>city</td>" in page
            assert "–</td>" not in page.split("<td>city</td>", 1)[1].split("</tr>")[0]
            # The study's own upload time, first arrival to confirmed delivery.
            delivered = page.split('<table id="delivered">', 1)[1].split("</table>")[0]
            assert study[0].StudyInstanceUID in delivered and " s</td>" in delivered
        finally:
            a.stop()
    finally:
        b.stop()


def test_restart_mid_queue_loses_nothing_R_B2(tmp_path):
    scp = StorageSCP("BACKUP")  # not started: the destination is down
    conf = config(tmp_path / "a", f"""
[forward.destinations.backup]
type = "dimse"
ae_title = "BACKUP"
host = "127.0.0.1"
port = {scp.port}
timeout_s = 5.0
[[forward.rules]]
destinations = ["backup"]
""")
    a = Server(str(tmp_path / "a"), "--config", str(conf))
    first = make_dataset(seed=1)
    study = [first, make_dataset(study=first.StudyInstanceUID, seed=2)]
    try:
        from dicomgen import multipart
        body, ctype = multipart([to_part10(d) for d in study])
        r = requests.post(a.url + "/dicom-web/studies", data=body,
                          headers={"Content-Type": ctype}, timeout=30)
        assert r.status_code == 200
        wait(lambda: any(j["attempts"] >= 1 for j in requests.get(
            a.url + "/api/v1/forwarding/jobs", timeout=10).json()["jobs"]))
    finally:
        a.stop()  # SIGTERM while the study waits in the queue
    scp.start()
    a = Server(str(tmp_path / "a"), "--config", str(conf))
    try:
        wait(lambda: len(scp.received) == 2)
        wait(lambda: status(a)["destinations"]["backup"]["delivered_24h"] == 1)
        assert sorted(c[1] for c in scp.calls) == sorted(d.SOPInstanceUID for d in study)
        for ds in study:
            assert scp.received[ds.SOPInstanceUID] == dataset_bytes(to_part10(ds))
    finally:
        a.stop()
        scp.stop()
