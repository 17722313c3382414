"""WADO-RS whole-study A/B of two pacsd source trees in ONE run (R-H1, issue 6).

    python -m benchmarks.wado_ab --a /work/main --b . [--slices 200] [--reps 5] [--orthanc]

Writes one CT study (512x512x16-bit slices from benchmarks/dataset.py) to a temp dir,
imports it into a fresh data directory per tree (``pacsd import`` with that tree's
code), starts ``pacsd serve`` from each tree and fetches the whole study as stored
(``multipart/related; type="application/dicom"; transfer-syntax=*``) with curl, which
costs the client little CPU (``--workers``: pacsd's worker processes, default 1; the
CPU counted is the server's and its workers'): at c=1 (``--n1`` sequential requests) and c=8 (8 curl
processes, ``--n8`` requests each; ``--conc 1,8,32`` adds c=32 with ``--n32`` each), the two servers alternating per repetition. Prints
per tree the median MB/s and the server's CPU ms per MB (utime + stime of the server
process from /proc, every thread). The byte-exact checks of every answer are the
side-by-side benchmark's (``python -m benchmarks side-by-side``); here only the body
length is checked. ``--client aiohttp``: the side-by-side's own driver instead of curl
(one Python process, a session per concurrency, every part compared byte for byte with
what was stored, as in ``wado_study``); the table then also gives the driver's CPU ms/MB
(it shares the two CPUs with the server, so its cost sets part of the pace).
``--orthanc``: Orthanc (``benchmarks/servers.py``, study uploaded through
its REST API) is measured the same way in the same rounds; its CPU is the Orthanc process's.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .dataset import DataSet
from .phases import Target
from .procstat import cpu_s
from .servers import OrthancProcess, free_port

ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def start(tree: Path, data: Path, log: Path, workers: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacsd.cli", "serve", "--data-dir", str(data),
         "--http", f"127.0.0.1:{port}", "--dicom-port", "0", "--log-level", "WARNING",
         "--workers", workers],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=str(tree), env=env)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if subprocess.run(["curl", "-sf", "-o", "/dev/null", base + "/api/v1/health"]
                          ).returncode == 0:
            return proc, base
        if proc.poll() is not None:
            raise SystemExit(f"server from {tree} exited; see {log}")
        time.sleep(0.1)
    raise SystemExit(f"server from {tree} did not start; see {log}")


def fetch(url: str, conc: int, n: int) -> tuple[float, int]:
    """conc curl processes, n requests each (keep-alive); (seconds, bytes)."""
    args = ["curl", "-sf", "-H", f"Accept: {ACCEPT}", "-o", "/dev/null",
            "-w", "%{size_download}\n"]
    t = time.perf_counter()
    procs = [subprocess.Popen(args + [url] * n + ["-o", "/dev/null"] * (n - 1),
                              stdout=subprocess.PIPE, text=True) for _ in range(conc)]
    total = 0
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"curl failed ({p.returncode}) on {url}")
        total += sum(int(x) for x in out.split())
    return time.perf_counter() - t, total


class AioClient:
    """The side-by-side driver (``phases.wado_study``), every answer verified, run in
    one event loop kept across rounds (a session per concurrency, like the runner)."""

    def __init__(self, insts: list, payload: dict[str, bytes]) -> None:
        self.loop = asyncio.new_event_loop()
        self.insts = insts
        self.payload = payload
        self.sessions: dict[int, object] = {}

    def fetch(self, base: str, conc: int, n: int) -> tuple[float, int, float]:
        """(seconds, bytes, client CPU seconds); raises on a wrong answer."""
        from . import phases as P
        from .client import new_session

        async def go():
            target = Target("t", base + "/dicom-web")
            for inst in self.insts:
                target.manifest.add(inst)
            key = (base, conc)
            if key not in self.sessions:
                self.sessions[key] = new_session(conc)
            target.session = self.sessions[key]
            return await P.wado_study(target, [self.insts[0].study], n, conc, self.payload)
        m = self.loop.run_until_complete(go())
        if m.errors:
            raise SystemExit(f"{base}: {m.errors[0]}")
        return m.wall_s, sum(s.nbytes for s in m.samples), m.cpu_s

    def close(self) -> None:
        for s in self.sessions.values():
            self.loop.run_until_complete(s.close())
        self.loop.close()


def ab_parser(prog: str, workers: str) -> argparse.ArgumentParser:
    """The options every A/B driver of two source trees shares: ``--a``, ``--b``,
    ``--orthanc`` and ``--workers`` (default ``workers``)."""
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--a", required=True, help="source tree A (e.g. /work/main)")
    p.add_argument("--b", required=True, help="source tree B (e.g. this work tree)")
    p.add_argument("--orthanc", action="store_true", help="measure Orthanc too")
    p.add_argument("--workers", default=workers, help="pacsd serve --workers (both trees)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = ab_parser("python -m benchmarks.wado_ab", "1")
    p.add_argument("--slices", type=int, default=200)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--n1", type=int, default=4, help="requests per repetition at c=1")
    p.add_argument("--n8", type=int, default=2, help="requests per curl at c=8")
    p.add_argument("--n32", type=int, default=1, help="requests per curl at c=32")
    p.add_argument("--conc", default="1,8", help="concurrencies to measure, e.g. 1,8,32")
    p.add_argument("--client", choices=("curl", "aiohttp"), default="curl",
                   help="curl processes, or the side-by-side's verifying aiohttp driver")
    args = p.parse_args(argv)
    trees = {"A": Path(args.a).resolve(), "B": Path(args.b).resolve()}
    tmp = Path(tempfile.mkdtemp(prefix="wado-ab-"))
    ds = DataSet(ct_studies=1, ct_slices=args.slices, tiny=0)
    insts = ds.ct_main()
    files = tmp / "files"
    files.mkdir()
    payload = {}
    for inst in insts:
        payload[inst.sop] = ds.build(inst)
        (files / f"{inst.sop}.dcm").write_bytes(payload[inst.sop])
    study = insts[0].study
    size = sum(f.stat().st_size for f in files.iterdir())
    servers = {}
    orthanc = None
    aio = AioClient(insts, payload) if args.client == "aiohttp" else None
    try:
        if args.orthanc:
            orthanc = OrthancProcess()
            rest = orthanc.url.rsplit("/dicom-web", 1)[0]
            for f in sorted(files.iterdir()):
                subprocess.run(["curl", "-sf", "-o", "/dev/null", "--data-binary",
                                f"@{f}", rest + "/instances"], check=True)
            servers["Orthanc"] = (orthanc.proc, rest)
            trees["Orthanc"] = Path(orthanc.version.split(",")[0])
        for name, tree in list(trees.items())[:2]:
            data = tmp / f"data-{name}"
            env = dict(os.environ, PYTHONPATH=str(tree))
            subprocess.run([sys.executable, "-m", "pacsd.cli", "import", "--data-dir",
                            str(data), str(files)], check=True, cwd=str(tree), env=env,
                           stdout=subprocess.DEVNULL)
            servers[name] = start(tree, data, tmp / f"server-{name}.log", args.workers)
        time.sleep(5 if args.workers != "1" else 0)  # every worker listening
        load = os.getloadavg()
        res: dict[tuple[str, int], list[tuple[float, ...]]] = {}
        for rep in range(args.reps):
            for conc in (int(c) for c in args.conc.split(",")):
                n = {1: args.n1, 8: args.n8}.get(conc, args.n32)
                order = list(servers)
                if rep % 2:
                    order.reverse()
                for name in order:
                    proc, base = servers[name]
                    c0, s0 = cpu_s(proc.pid), cpu_s(proc.pid, sys_only=True)
                    if aio is not None:
                        secs, got, ccpu = aio.fetch(base, conc, max(n * conc, conc))
                        want = size * max(n * conc, conc)
                    else:
                        secs, got = fetch(f"{base}/dicom-web/studies/{study}", conc, n)
                        ccpu, want = float("nan"), size * conc * n
                    cpu = cpu_s(proc.pid) - c0
                    sys_cpu = cpu_s(proc.pid, sys_only=True) - s0
                    if got < want:
                        raise SystemExit(f"{name}: short answer ({got} bytes)")
                    mb = got / 1e6
                    res.setdefault((name, conc), []).append(
                        (mb / secs, cpu * 1e3 / mb, sys_cpu * 1e3 / mb, ccpu * 1e3 / mb))
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; study "
              f"{len(insts)} x {size // len(insts)} B = {size / 1e6:.1f} MB; load "
              + "/".join(f"{x:.2f}" for x in load) + " at start, "
              + "/".join(f"{x:.2f}" for x in os.getloadavg()) + " at end")
        print(f"client {args.client}, {args.workers} worker(s), {args.reps} reps")
        print("| tree | c | MB/s (median) | server CPU ms/MB (median) | of which sys | "
              "client CPU ms/MB | MB/s of each rep |")
        print("|---|---|---|---|---|---|---|")
        for (name, conc), vals in sorted(res.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            med = [statistics.median(v[k] for v in vals) for k in range(4)]
            print(f"| {name} {trees[name]} | {conc} | {med[0]:.0f} | {med[1]:.3f} | "
                  f"{med[2]:.3f} | {med[3]:.3f} | "
                  + " ".join(f"{v[0]:.0f}" for v in vals) + " |")
    finally:
        if aio is not None:
            aio.close()
        if orthanc is not None:
            orthanc.stop()
            servers.pop("Orthanc", None)
        for proc, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
