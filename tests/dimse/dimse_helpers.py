"""Helpers for the DIMSE tests: DCMTK tools (``/usr/bin``: pynetdicom installs console
scripts of the same names earlier on PATH), a DCMTK storescp peer, pynetdicom SCUs,
Part 10 splitting, WADO-RS reads. No mocks: every peer is a real implementation."""
from __future__ import annotations

import contextlib
import io
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pacsd_server import Server, free_port
from pydicom.filereader import read_dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

DCMTK_DIR = Path("/usr/bin")
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PACS_AET = "PACSD"
PEER_AET = "STORESCP"


def dcmtk(tool: str) -> str:
    path = DCMTK_DIR / tool
    if not path.exists():
        pytest.skip(f"DCMTK {tool} is not installed in {DCMTK_DIR}")
    return str(path)


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


class Peer:
    """DCMTK storescp: accepts every transfer syntax it knows and writes what it
    receives bit for bit (+B), one file per instance, into ``directory``."""

    def __init__(self, directory: Path, ae_title: str = PEER_AET) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.ae_title = ae_title
        self.log = open(directory.parent / f"storescp-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [dcmtk("storescp"), "-aet", ae_title, "+xa", "+B", "-od", str(directory),
             str(self.port)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("storescp did not start")
                time.sleep(0.05)

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())

    def clear(self) -> None:
        for p in self.files():
            p.unlink()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def start_server(tmp: Path, config: str, *extra: str) -> Server:
    """pacsd with extra [dimse] settings (TOML text)."""
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "pacsd.toml"
    conf.write_text(config)
    return Server(str(tmp), "--config", str(conf), "--ae-title", PACS_AET, *extra,
                  dicom_port=None)


# --- DICOM helpers ----------------------------------------------------------------------

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}


def dataset_part(data: bytes) -> tuple[pydicom.Dataset, bytes]:
    """(File Meta Information, the data set bytes after it) of a Part 10 object: walks
    the group 0002 elements (always Explicit VR Little Endian)."""
    assert data[128:132] == b"DICM"
    end = 132
    while data[end:end + 2] == b"\x02\x00":
        if data[end + 4:end + 6] in _LONG_VRS:
            end += 12 + struct.unpack("<L", data[end + 8:end + 12])[0]
        else:
            end += 8 + struct.unpack("<H", data[end + 6:end + 8])[0]
    meta = read_dataset(io.BytesIO(data[132:end]), is_implicit_VR=False,
                        is_little_endian=True)
    return meta, data[end:]


def wado_instance(srv: Server, ds: pydicom.Dataset, ts: str = "*") -> bytes:
    """The stored object through WADO-RS (transfer-syntax=* = as stored)."""
    url = (f"{srv.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
           f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")
    accept = f"application/dicom; transfer-syntax={ts}"
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()


def copy_with_new_uids(name: str, directory: Path, study: str | None = None,
                       series: str | None = None, **attrs) -> Path:
    """A pydicom test file with fresh Study/Series/SOP Instance UIDs (pydicom's corpus
    reuses UIDs across files, and tests share one server), written as stored
    (compressed pixel data untouched)."""
    ds = pydicom.dcmread(TEST_FILES / name)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    out = directory / f"{Path(name).stem}-{ds.SOPInstanceUID[-8:]}.dcm"
    ds.save_as(out)
    return out


@contextlib.contextmanager
def association(port: int, contexts, ae_title: str = "TESTSCU", called: str = PACS_AET,
                **kwargs):
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    assoc = ae.associate("127.0.0.1", port, contexts, ae_title=called, **kwargs)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def storescu(port: int, *files: Path | str, flag: str = "-xe", aet: str = "STORESCU"
             ) -> subprocess.CompletedProcess:
    return run(dcmtk("storescu"), "-aet", aet, "-aec", PACS_AET, flag, "127.0.0.1",
               str(port), *map(str, files))


def stored_file(directory: Path, sop_uid: str) -> Path:
    """storescp names files <modality>.<SOP Instance UID>."""
    matches = [p for p in directory.iterdir() if p.name.endswith(sop_uid)]
    assert len(matches) == 1, [p.name for p in directory.iterdir()]
    return matches[0]
