"""The floor of a durable STOW-RS server in Python: ``python -m benchmarks.floor``.

Issue 6 asks pacsd for 2x Orthanc's instances/s on tiny STOW-RS and 1.3x its MB/s on CT.
This module measures how far *any* server written like pacsd (Python, aiohttp, two worker
processes, SQLite in WAL mode) could get on this machine, by serving STOW-RS with the
least work a durable archive may do, and running it interleaved with Orthanc through the
same driver code as ``benchmarks.stow_only``:

* the body is read whole (``await request.read()``) and split at the boundary (no
  multipart reader, no header checks);
* per part: the SOP Instance UID is found by a byte search for (0008,0018) (no parse, no
  validation, no metadata, no frame index), SHA-256 of the bytes, then the §7 order:
  write to a temp file, ``fsync``, ``rename`` into ``objects/<aa>/<sha256>``, ``fsync`` of
  the directory; the parts of a request in parallel on a thread pool;
* one SQLite transaction per request (WAL, ``synchronous=FULL``, one row per instance:
  SOP UID, sha256, size), committed before the answer;
* the answer names every stored SOP Instance UID (the driver checks it).

Everything pacsd does beyond this (validation of every length, DICOM JSON, level JSON,
QIDO columns, frame CRCs, study / series counters, audit, access control) is missing, so
the floor's numbers are an upper bound for a pacsd with the same runtime: if the floor
is below a target, the target is out of reach without leaving that runtime.

``python -m benchmarks.floor [--reps 3] [--levels 1,4,16]`` prints, per phase and
concurrency, the medians of MB/s, inst/s and server CPU ms per instance for the floor
and Orthanc (both started by the tool), and floor/Orthanc. ``--serve --port P --data DIR``
runs the floor server alone. Loopback only.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

SOP_TAG = b"\x08\x00\x18\x00UI"
REF_SEQ, REF_UID, REF_CLASS = "00081199", "00081155", "00081150"


def _sop_uid(part: bytes) -> str:
    at = part.find(SOP_TAG, 132)
    if at < 0:
        raise web.HTTPBadRequest(reason="no SOP Instance UID")
    (n,) = struct.unpack_from("<H", part, at + 6)
    return part[at + 8:at + 8 + n].rstrip(b"\0 ").decode("ascii")


class Floor:
    def __init__(self, data: Path) -> None:
        self.objects = data / "objects"
        self.tmp = data / "tmp"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        for i in range(256):
            (self.objects / f"{i:02x}").mkdir(exist_ok=True)
        self.pool = ThreadPoolExecutor(8)
        self.db = sqlite3.connect(str(data / "index.db"), check_same_thread=False,
                                  isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.execute("PRAGMA busy_timeout = 10000")
        self.db.execute("CREATE TABLE IF NOT EXISTS instances (sop TEXT PRIMARY KEY, "
                        "sha256 TEXT NOT NULL, size INTEGER NOT NULL)")
        self.lock = threading.Lock()

    def put(self, part: bytes) -> tuple[str, str, int]:
        sop = _sop_uid(part)
        sha = hashlib.sha256(part).hexdigest()
        fd, tmp = tempfile.mkstemp(dir=self.tmp)
        try:
            os.write(fd, part)
            os.fsync(fd)
        finally:
            os.close(fd)
        leaf = self.objects / sha[:2]
        os.replace(tmp, leaf / sha)
        dfd = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return sop, sha, len(part)

    def commit(self, rows: list[tuple[str, str, int]]) -> None:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT OR REPLACE INTO instances VALUES (?, ?, ?)", rows)
            self.db.execute("COMMIT")

    async def stow(self, request: web.Request) -> web.Response:
        ctype = request.headers.get("Content-Type", "")
        boundary = ctype.split("boundary=", 1)[-1].strip('"').encode()
        body = await request.read()
        parts = []
        for chunk in body.split(b"--" + boundary)[1:-1]:
            head_end = chunk.find(b"\r\n\r\n")
            parts.append(chunk[head_end + 4:-2])
        loop = asyncio.get_running_loop()
        rows = await asyncio.gather(*(loop.run_in_executor(self.pool, self.put, p)
                                      for p in parts))
        await loop.run_in_executor(self.pool, self.commit, rows)
        refs = [{REF_UID: {"vr": "UI", "Value": [sop]}} for sop, _, _ in rows]
        return web.json_response({REF_SEQ: {"vr": "SQ", "Value": refs}},
                                 content_type="application/dicom+json")


def serve(port: int, data: Path, workers: int) -> None:
    """``workers`` processes on one port (SO_REUSEPORT), like ``pacsd serve``."""
    pids = []
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:
            pids = []
            break
        pids.append(pid)
    floor = Floor(data)
    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/dicom-web/studies", floor.stow)
    app.router.add_get("/ready", lambda r: web.Response(text="ok"))
    try:
        web.run_app(app, host="127.0.0.1", port=port, reuse_port=True, print=None,
                    access_log=None)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGTERM)


class FloorProcess:
    name = "floor"

    def __init__(self, workers: int = 2) -> None:
        from .servers import REPO, _wait_http, free_port
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-floor-")
        port = free_port()
        log = Path(self.tmp.name) / "floor.log"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.floor", "--serve", "--port", str(port),
             "--data", str(Path(self.tmp.name) / "data"), "--workers", str(workers)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=str(REPO))
        self.pid = self.proc.pid
        self.version = f"floor (Python {sys.version.split()[0]}, {workers} processes)"
        try:
            _wait_http(f"http://127.0.0.1:{port}/ready", self.proc, log)
        except BaseException:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{port}/dicom-web"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()
        self.tmp.cleanup()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.floor")
    ap.add_argument("--serve", action="store_true", help="run the floor server alone")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--data", default="floor-data")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ct-batch", type=int, default=48)
    ap.add_argument("--tiny", type=int, default=3000)
    ap.add_argument("--ct-per-request", type=int, default=1)
    ap.add_argument("--tiny-per-request", type=int, default=5)
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    args.profile = None  # benchmarks.stow_only._run profiles pacsd only
    if args.serve:
        serve(args.port, Path(args.data), args.workers)
        return
    import statistics
    import time

    from .phases import Target
    from .servers import OrthancProcess
    from .stow_only import _run
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load0 = os.getloadavg()
    procs = [FloorProcess(args.workers)]
    try:
        procs.append(OrthancProcess())
        targets = [Target(p.name, p.url, pid=p.pid, version=p.version) for p in procs]
        rows = asyncio.run(_run(args, targets))
    finally:
        for p in procs:
            p.stop()
    print(f"\nstarted {started}, load {load0[0]:.2f} -> {os.getloadavg()[0]:.2f}; "
          + "; ".join(f"{p.name}: {p.version}" for p in procs))
    print("| phase | c | floor MB/s | floor inst/s | floor CPU ms/inst | orthanc MB/s | "
          "orthanc inst/s | orthanc CPU ms/inst | floor/orthanc |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, lv in sorted({(k, lv) for k, lv, _ in rows}):
        med = {n: tuple(statistics.median(r[f] for r in rows[(kind, lv, n)])
                        for f in ("mb_s", "inst_s", "server_cpu_ms_per_inst"))
               for n in ("floor", "orthanc")}
        cells = [f"{med[n][0]:.1f} | {med[n][1]:.0f} | {med[n][2]:.2f}"
                 for n in ("floor", "orthanc")]
        print(f"| {kind} | {lv} | " + " | ".join(cells)
              + f" | {med['floor'][1] / med['orthanc'][1]:.2f} |")


if __name__ == "__main__":
    main()
