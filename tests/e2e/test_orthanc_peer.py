"""Orthanc as the other PACS (issue 3 "Done when"; R-A3, R-H2, R-B2, R-B3): a real
Orthanc 1.10 with its DICOMweb plugin (Debian packages ``orthanc`` and
``orthanc-dicomweb``, started here on loopback ports with its own configuration) is

* the old archive ``pacsd import --from-peer`` pulls a date range of history from, by
  C-FIND + C-GET into the archive directory and by C-MOVE into a running ``pacsd serve``;
* a forwarding destination over C-STORE and over STOW-RS.

Every object arrives bit-exact in its pixel data and UIDs (Orthanc keeps what it
received; what pacsd stores from a C-STORE is the data set as received). Skipped with the
apt command when Orthanc is not installed (scripts/test.sh installs it when root).
"""
from __future__ import annotations

import io
import subprocess
import sys
import time

import pydicom
import pytest
import requests
from dicomgen import make_dataset, multipart, to_part10
from pacsd_server import Server

try:
    from benchmarks.servers import OrthancProcess, find_orthanc, free_port
    find_orthanc()
except RuntimeError as exc:  # not installed
    pytest.skip(str(exc), allow_module_level=True)

SINGLE = {"Accept": "application/dicom; transfer-syntax=*"}


def history() -> tuple[list[bytes], list[bytes]]:
    """(two studies of 2024, one of 2022) as Part 10 bytes."""
    wanted, other = [], []
    for k, (date, pid) in enumerate((("20240105", "ORT-1"), ("20240620", "ORT-2"),
                                     ("20220301", "ORT-3"))):
        first = make_dataset(seed=10 * k, StudyDate=date, PatientID=pid)
        sets = [first] + [make_dataset(study=first.StudyInstanceUID,
                                       series=first.SeriesInstanceUID, seed=10 * k + n,
                                       StudyDate=date, PatientID=pid, InstanceNumber=n + 1)
                          for n in (1, 2)]
        (wanted if date.startswith("2024") else other).extend(to_part10(d) for d in sets)
    return wanted, other


def upload(orthanc: OrthancProcess, parts: list[bytes]) -> None:
    base = f"http://127.0.0.1:{orthanc.http_port}"
    for data in parts:
        r = requests.post(base + "/instances", data=data, timeout=30)
        assert r.status_code == 200, r.text


def orthanc_instances(orthanc: OrthancProcess) -> dict[str, bytes]:
    """SOP Instance UID -> the Part 10 file Orthanc holds."""
    base = f"http://127.0.0.1:{orthanc.http_port}"
    out = {}
    for oid in requests.get(base + "/instances", timeout=30).json():
        data = requests.get(f"{base}/instances/{oid}/file", timeout=30).content
        out[str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)] = data
    return out


def same_object(a: bytes, b: bytes) -> bool:
    x, y = pydicom.dcmread(io.BytesIO(a)), pydicom.dcmread(io.BytesIO(b))
    return ((x.StudyInstanceUID, x.SeriesInstanceUID, x.SOPInstanceUID, x.PixelData)
            == (y.StudyInstanceUID, y.SeriesInstanceUID, y.SOPInstanceUID, y.PixelData))


def wado(url: str, data: bytes) -> bytes | None:
    ds = pydicom.dcmread(io.BytesIO(data))
    r = requests.get(f"{url}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
                     f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
                     headers=SINGLE, timeout=30)
    return r.content if r.status_code == 200 else None


def test_R_A3_pull_history_from_orthanc_by_c_get_and_c_move(tmp_path):
    pacsd_dimse = free_port()
    orthanc = OrthancProcess(aet="OLDORTHANC", extra={
        "DicomModalities": {"pacsd": ["PACSD", "127.0.0.1", pacsd_dimse]}})
    try:
        wanted, other = history()
        upload(orthanc, wanted + other)
        peer = f"OLDORTHANC=127.0.0.1:{orthanc.dicom_port}"

        # C-GET into an archive directory, with progress and a final report.
        here = tmp_path / "here"
        run = subprocess.run(
            [sys.executable, "-m", "pacsd.cli", "import", "--from-peer", "OLDORTHANC",
             "--peer", peer, "--study-date", "20240101-20241231", "--data-dir", str(here)],
            capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        for line in ("studies found: 2", "pulled: 2", "instances stored: 6", "failed: 0"):
            assert line in run.stdout, run.stdout
        srv = Server(str(here))
        try:
            for data in wanted:
                got = wado(srv.url, data)
                assert got is not None and same_object(got, data)
            for data in other:
                assert wado(srv.url, data) is None  # outside the date range
        finally:
            srv.stop()
        again = subprocess.run(  # resumable: nothing is fetched twice
            [sys.executable, "-m", "pacsd.cli", "import", "--from-peer", "OLDORTHANC",
             "--peer", peer, "--study-date", "20240101-20241231", "--data-dir", str(here)],
            capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "already complete here: 2" in again.stdout and "pulled: 0" in again.stdout

        # C-MOVE: Orthanc sends the 2022 study to the running pacsd (its AE PACSD).
        (tmp_path / "live").mkdir()
        live = Server(str(tmp_path / "live"), dicom_port=pacsd_dimse)
        try:
            run = subprocess.run(
                [sys.executable, "-m", "pacsd.cli", "import", "--from-peer", "OLDORTHANC",
                 "--peer", peer, "--study-date", "20220101-20221231", "--method", "move",
                 "--data-dir", str(tmp_path / "live")],
                capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stdout + run.stderr
            for data in other:
                got = wado(live.url, data)
                assert got is not None and same_object(got, data)
        finally:
            live.stop()
    finally:
        orthanc.stop()


def test_R_B2_R_B3_forward_to_orthanc_over_c_store_and_stow_rs(tmp_path):
    orthanc = OrthancProcess(aet="CITYORTHANC")
    try:
        config = tmp_path / "pacsd.toml"
        config.write_text(f"""
[jobs]
poll_interval_s = 0.1
backoff_base_s = 0.5
[forward]
batch_delay_s = 0.3

[forward.destinations.city-dimse]
type = "dimse"
ae_title = "CITYORTHANC"
host = "127.0.0.1"
port = {orthanc.dicom_port}

[forward.destinations.city-web]
type = "dicomweb"
url = "http://127.0.0.1:{orthanc.http_port}/dicom-web/studies"

[[forward.rules]]
name = "CT over DIMSE"
destinations = ["city-dimse"]
match = {{ Modality = "CT" }}

[[forward.rules]]
name = "MR over DICOMweb"
destinations = ["city-web"]
match = {{ Modality = "MR" }}
""")
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        srv = Server(str(data_dir), "--config", str(config))
        try:
            ct = [to_part10(make_dataset(seed=n, Modality="CT")) for n in range(3)]
            mr = [to_part10(make_dataset(seed=50 + n, Modality="MR")) for n in range(2)]
            for group in (ct, mr):
                body, ctype = multipart(group)
                r = requests.post(srv.url + "/dicom-web/studies", data=body,
                                  headers={"Content-Type": ctype}, timeout=30)
                assert r.status_code == 200
            deadline = time.monotonic() + 90
            while True:
                held = orthanc_instances(orthanc)
                if len(held) >= 5 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert len(held) == 5, f"Orthanc holds {len(held)} of 5"
            for data in ct + mr:
                sop = str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
                assert same_object(held[sop], data)
            status = requests.get(srv.url + "/api/v1/forwarding/status", timeout=10).json()
            assert status, status
        finally:
            srv.stop()
    finally:
        orthanc.stop()
