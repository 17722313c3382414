"""The DIMSE phases (issue 6, R-H1): C-STORE, C-FIND, C-GET and C-MOVE with DCMTK.

Every phase runs the DCMTK command-line tools (``/usr/bin/storescu``, ``findscu``,
``getscu``, ``movescu``) against the target's DICOM address, so both servers meet the
same, native client; the clock covers the whole tool run (process start, association,
the operations, release). Phases:

* ``dimse_store_ct`` — one ``storescu`` association sending a fresh CT series (files/s
  and MB/s); ``dimse_store_tiny`` — the same with fresh tiny instances (files/s).
  Verified after the clock: exit status 0, then QIDO-RS lists exactly the sent SOP
  Instance UIDs in the series (nothing lost, nothing extra).
* ``dimse_find`` — study-level C-FIND by PatientID (one ``findscu`` run per query,
  latency p50). Verified: the responses (``findscu -X``) name exactly the patient's
  studies the target acknowledged.
* ``dimse_get`` — C-GET of a whole CT study into a temp dir (MB/s of received files);
  ``dimse_move`` — C-MOVE of a whole CT study to the driver's own storage SCP (DCMTK
  ``storescp``, AE ``BENCHSCP``, which both servers know as a C-MOVE destination).
  Verified: exactly the study's SOP Instance UIDs arrived, each with byte-exact pixel
  data (sha256 against the generator's).

A row with any wrong answer is unverified and scores nothing, like the DICOMweb phases.
"""
from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .client import Measurement, Sample
from .servers import stop_process

TOOLS = {name: f"/usr/bin/{name}" for name in
         ("storescu", "findscu", "getscu", "movescu", "storescp", "echoscu")}
CALLING_AET = "BENCHSCU"
MOVE_AET = "BENCHSCP"
TOOL_TIMEOUT_S = 600.0


@dataclass
class DicomAddress:
    host: str
    port: int
    aet: str


def missing_tools() -> list[str]:
    return [p for p in TOOLS.values() if not os.access(p, os.X_OK)]


def _base(addr: DicomAddress) -> list[str]:
    return ["-aet", CALLING_AET, "-aec", addr.aet, "-to", "60", "-ta", "60", "-td", "120"]


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


#: DCMTK leaves Nagle's algorithm on unless TCP_NODELAY is set in its environment; a
#: client with Nagle on waits for the server's delayed ACK (~40 ms) between the command
#: and the data set of every small C-STORE, whatever the server. Set for the tools as
#: for Orthanc (benchmarks/servers.py), so the phases measure the servers.
TOOL_ENV = dict(os.environ, TCP_NODELAY="1")


def run_tool(args: list[str], cwd: str | None = None) -> tuple[float, float, int, str]:
    """(wall s, CPU s of the tool, exit status, output tail)."""
    c0, t0 = _child_cpu(), time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, capture_output=True, timeout=TOOL_TIMEOUT_S,
                          env=TOOL_ENV)
    wall = time.perf_counter() - t0
    out = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    return wall, _child_cpu() - c0, proc.returncode, out[-600:]


def echo(addr: DicomAddress) -> bool:
    try:
        _, _, rc, _ = run_tool([TOOLS["echoscu"], *_base(addr), addr.host, str(addr.port)])
    except (OSError, subprocess.SubprocessError):
        return False
    return rc == 0


def wait_echo(addr: DicomAddress, alive: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not echo(addr):
        if not alive() or time.monotonic() > deadline:
            raise RuntimeError(f"no C-ECHO answer from {addr.aet}@{addr.host}:{addr.port}")
        time.sleep(0.2)


class StoreSCP:
    """DCMTK ``storescp`` on ``port`` as AE ``BENCHSCP``: the C-MOVE destination. Files
    go to ``self.dir`` (emptied by :meth:`clear`); started and stopped by its pid."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-storescp-")
        self.dir = Path(self.tmp.name) / "in"
        self.dir.mkdir()
        self.log = open(Path(self.tmp.name) / "storescp.log", "wb")
        self.proc = subprocess.Popen(
            env=TOOL_ENV, args=[TOOLS["storescp"], "-aet", MOVE_AET, "-od", str(self.dir), "-pm", "-dhl",
             "--accept-all", str(port)],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_echo(DicomAddress("127.0.0.1", port, MOVE_AET),
                  lambda: self.proc.poll() is None)

    def clear(self) -> None:
        for p in self.dir.iterdir():
            p.unlink()

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()
        self.tmp.cleanup()


# --- verification -------------------------------------------------------------------------

class VerificationError(Exception):
    pass


def check_received(folder: Path, expected: dict[str, str]) -> int:
    """Files in ``folder`` are exactly the instances ``expected`` (SOP Instance UID ->
    sha256 of the pixel data), each with byte-exact pixel data; returns their bytes."""
    import pydicom
    seen: dict[str, int] = {}
    total = 0
    for path in sorted(folder.iterdir()):
        total += path.stat().st_size
        try:
            ds = pydicom.dcmread(str(path))
            sop = str(ds.SOPInstanceUID)
            pixels = ds.PixelData
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a wrong answer
            raise VerificationError(f"received file unreadable ({type(exc).__name__})") \
                from None
        if sop not in expected:
            raise VerificationError(f"received an instance not asked for ({sop[-12:]})")
        if hashlib.sha256(pixels).hexdigest() != expected[sop]:
            raise VerificationError(f"pixel data of {sop[-12:]} differs from what was stored")
        seen[sop] = seen.get(sop, 0) + 1
    dup = [s for s, n in seen.items() if n > 1]
    if dup or set(seen) != set(expected):
        raise VerificationError(f"{len(seen)} distinct instances received, expected "
                                f"{len(expected)}{' (duplicates)' if dup else ''}")
    return total


def check_find(folder: Path, expected: set[str]) -> None:
    import pydicom
    got = []
    for path in sorted(folder.glob("rsp*.dcm")):
        got.append(str(pydicom.dcmread(str(path), force=True).get("StudyInstanceUID", "")))
    if len(got) != len(set(got)) or set(got) != expected:
        raise VerificationError(f"{len(got)} C-FIND matches, expected {len(expected)}")


# --- the phases (blocking; the runner calls them in a thread) -----------------------------

def store(addr: DicomAddress, files: list[tuple[str, bytes]]) -> Measurement:
    """One storescu association sending ``files`` ((SOP Instance UID, Part 10 bytes)).
    The caller verifies afterwards (through QIDO-RS) that the target holds exactly them."""
    with tempfile.TemporaryDirectory(prefix="bench-storescu-") as tmp:
        paths = []
        for k, (_, data) in enumerate(files):
            p = os.path.join(tmp, f"{k:06d}.dcm")
            with open(p, "wb") as fh:
                fh.write(data)
            paths.append(p)
        nbytes = sum(len(d) for _, d in files)
        wall, cpu, rc, out = run_tool([TOOLS["storescu"], *_base(addr), "--required",
                                       addr.host, str(addr.port), *paths])
    error = f"storescu exit status {rc}: {out.strip().splitlines()[-1:]}" if rc else ""
    return Measurement(1, wall, cpu, [Sample(wall, nbytes, not error, error)])


def find_study_by_patient(addr: DicomAddress, queries: list[tuple[str, set[str]]]
                          ) -> Measurement:
    """One findscu run per (PatientID, expected Study Instance UIDs)."""
    samples = []
    wall_all = cpu_all = 0.0
    for pid, expected in queries:
        with tempfile.TemporaryDirectory(prefix="bench-findscu-") as tmp:
            wall, cpu, rc, out = run_tool(
                [TOOLS["findscu"], *_base(addr), "-S", "-X",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={pid}",
                 "-k", "StudyInstanceUID", "-k", "StudyDate", "-k", "PatientName",
                 addr.host, str(addr.port)], cwd=tmp)
            wall_all += wall
            cpu_all += cpu
            error = f"findscu exit status {rc}" if rc else ""
            nbytes = 0
            if not error:
                try:
                    check_find(Path(tmp), expected)
                    nbytes = sum(p.stat().st_size for p in Path(tmp).glob("rsp*.dcm"))
                except Exception as exc:  # noqa: BLE001
                    error = f"wrong answer: {exc}"
            samples.append(Sample(wall, nbytes, not error, error))
    return Measurement(1, wall_all, cpu_all, samples)


def _retrieve(args: list[str], folder: Path, expected: dict[str, str],
              clear: Callable[[], None]) -> Measurement:
    clear()
    wall, cpu, rc, out = run_tool(args)
    error, nbytes = "", 0
    if rc != 0:
        error = f"{Path(args[0]).name} exit status {rc}: {out.strip().splitlines()[-1:]}"
    else:
        try:
            nbytes = check_received(folder, expected)
        except Exception as exc:  # noqa: BLE001
            error = f"wrong answer: {exc}"
    clear()
    return Measurement(1, wall, cpu, [Sample(wall, nbytes, not error, error)])


def _study_keys(study: str) -> list[str]:
    return ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]


def get_study(addr: DicomAddress, study: str, expected: dict[str, str]) -> Measurement:
    """C-GET of a whole study (getscu stores the C-STORE sub-operations into a temp dir)."""
    with tempfile.TemporaryDirectory(prefix="bench-getscu-") as tmp:
        folder = Path(tmp)

        def clear() -> None:
            for p in folder.iterdir():
                p.unlink()
        return _retrieve([TOOLS["getscu"], *_base(addr), *_study_keys(study), "-od", tmp,
                          addr.host, str(addr.port)], folder, expected, clear)


def move_study(addr: DicomAddress, scp: StoreSCP, study: str, expected: dict[str, str]
               ) -> Measurement:
    """C-MOVE of a whole study to the driver's storescp (AE BENCHSCP)."""
    return _retrieve([TOOLS["movescu"], *_base(addr), *_study_keys(study), "-aem", MOVE_AET,
                      addr.host, str(addr.port)], scp.dir, expected, scp.clear)
