"""STOW-RS only, side by side: ``python -m benchmarks.stow_only`` (issue 6, R-H1).

The STOW phases of the side-by-side run (same data set, same driver code, same
interleaving of targets per repetition) without the read phases, so a change to the
ingest path can be measured in a minute or two. ``--profile DIR`` records pacsd with
py-spy (``--gil`` and all threads, raw collapsed stacks) during one extra pass at c=4,
after the measured ones.

``--http-only`` measures the HTTP side of STOW alone: the web app of this tree (and of
``--baseline``) with a stub ingest that keeps the executor hops and does no work
(``benchmarks/stow_stub_server.py``); the server's CPU per request is then the aiohttp,
middleware and handler cost, without the disk and the index.

Prints, per phase and concurrency, the median over the repetitions of MB/s and inst/s
for each target, the pacsd/Orthanc ratio, and each server's CPU time (user + system,
all threads, from /proc) per instance: on a shared, loaded machine the throughput moves
with the neighbours' load, the CPU cost per instance much less.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

from . import phases as P, profiling
from .client import new_session
from .dataset import DataSet
from .phases import Target, row_from
from .procstat import CLK, children, cpu_s
from .servers import OrthancProcess, PacsdProcess


def loop_cpu_s(pid: int) -> float:
    """User + system CPU seconds of the event-loop threads of ``pid``'s worker processes
    (each worker's main thread, tid == pid): the HTTP side of a request, as against the
    worker threads' ingest (0 for a server that is not pacsd)."""
    ticks = 0
    for w in children(pid):
        try:
            fields = Path(f"/proc/{w}/task/{w}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK


async def _run(args, targets: list[Target]) -> dict:
    ds = DataSet(args.seed, ct_studies=1, ct_slices=1, tiny=args.tiny,
                 stow_ct_batch=args.ct_batch)
    levels = [int(x) for x in args.levels.split(",")]
    stow_ct = {(lv, r): [(i, ds.build(i)) for i in ds.stow_ct(f"c{lv}r{r}")]
               for lv in levels for r in range(args.reps)}
    tiny = [(i, ds.build(i)) for i in ds.tiny_all()]
    size = -(-len(tiny) // (len(levels) * max(1, args.reps)))  # --reps 0: profile only
    stow_tiny = {}
    k = 0
    for lv in levels:
        for r in range(args.reps):
            stow_tiny[(lv, r)] = tiny[k * size:(k + 1) * size]
            k += 1
    rows: dict[tuple, list[dict]] = {}
    for t in targets:
        t.session = new_session(32)
    flip = False
    try:
        for kind, data, per in (("stow_ct", stow_ct, args.ct_per_request),
                                ("stow_tiny", stow_tiny, args.tiny_per_request)):
            for lv in levels:
                for r in range(args.reps):
                    items = data[(lv, r)]
                    flip = not flip
                    for t in (targets if flip else list(reversed(targets))):
                        cpu0, sys0 = cpu_s(t.pid), cpu_s(t.pid, sys_only=True)
                        loop0 = loop_cpu_s(t.pid) if t.name != "orthanc" else 0.0
                        m = await P.stow(t, P.batched(items, per), lv)
                        row = row_from(kind, m, rep=r, instances=len(items))
                        row["server_cpu_ms_per_inst"] = round(
                            1000 * (cpu_s(t.pid) - cpu0) / len(items), 2)
                        row["server_sys_ms_per_inst"] = round(
                            1000 * (cpu_s(t.pid, sys_only=True) - sys0) / len(items), 2)
                        row["loop_cpu_ms_per_inst"] = round(1000 * (
                            loop_cpu_s(t.pid) - loop0) / len(items), 2) \
                            if t.name != "orthanc" else 0.0
                        if not row["verified"]:
                            raise SystemExit(f"{t.name} {kind} c={lv}: {row['error_sample']}")
                        rows.setdefault((kind, lv, t.name), []).append(row)
                        print(f"  {t.name:8s} {kind:9s} c={lv:<3d} rep {r}: "
                              f"{row['mb_s']:7.1f} MB/s {row['inst_s']:7.1f} inst/s "
                              f"{row['server_cpu_ms_per_inst']:6.2f} cpu-ms/inst "
                              f"({row['server_sys_ms_per_inst']:.2f} sys, "
                              f"{row['loop_cpu_ms_per_inst']:.2f} loop) "
                              f"(load {os.getloadavg()[0]:.1f})", flush=True)
        if args.profile:
            await _profile(args, ds, targets[0])
    finally:
        for t in targets:
            await t.session.close()
    return rows


async def _profile(args, ds: DataSet, t: Target) -> None:
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    workers = children(t.pid)  # the supervisor only forks: profile each worker
    for kind in ("ct", "tiny"):
        spies = {(w, mode): profiling.PySpy(w, out / f"stow-{kind}-{w}-{mode}.txt",
                                            rate=args.rate, gil=mode == "gil")
                 for w in workers for mode in ("gil", "all")}
        try:
            for k in range(args.profile_rounds):
                if kind == "ct":
                    items = [(i, ds.build(i)) for i in ds.stow_ct(f"prof{k}")]
                    await P.stow(t, P.batched(items, args.ct_per_request), 4)
                else:
                    first = 100000 + 200 * k
                    items = [(i, ds.build(i)) for i in ds.tiny_range(first, 100)]
                    await P.stow(t, P.batched(items, args.tiny_per_request), 4)
        finally:
            for (w, mode), spy in spies.items():
                path = spy.stop()
                if path is None:
                    print(f"profile {kind} worker {w} {mode}: nothing recorded")
                    continue
                s = profiling.summarise(path, top=25)
                print(f"\nprofile {kind} worker {w} {mode}: {s['samples']} samples ({path})")
                for h in s["self"][:25]:
                    print(f"  self {h['pct']:5.1f}%  {h['function']}")
                for h in s["inclusive_pacsd"][:25]:
                    print(f"  incl {h['pct']:5.1f}%  {h['function']}")
                print("  by package: " + ", ".join(f"{h['package']} {h['pct']}%"
                                                   for h in s["by_package"]))


async def _http_only(args, servers: list[tuple[str, int, int]]) -> dict:
    """The HTTP side alone (``--http-only``): server CPU per request of each stub server."""
    import aiohttp
    from .dataset import multipart_body
    rows: dict[tuple, list[float]] = {}
    kinds = (("tiny", args.tiny_per_request, 1400, args.http_requests),
             ("ct", args.ct_per_request, 524_800, max(1, args.http_requests // 4)))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        flip = False
        for kind, per, size, n in kinds:
            body = multipart_body([os.urandom(size)] * per, "stowhttpbench")
            headers = {"Content-Type": 'multipart/related; type="application/dicom"; '
                                       "boundary=stowhttpbench",
                       "Accept": "application/dicom+json"}
            for lv in [int(x) for x in args.levels.split(",")]:
                for r in range(max(1, args.reps)):
                    flip = not flip
                    for name, port, pid in (servers if flip else servers[::-1]):
                        url = f"http://127.0.0.1:{port}/dicom-web/studies"
                        todo = iter(range(n))

                        async def worker() -> None:
                            for _ in todo:
                                async with session.post(url, data=body,
                                                        headers=headers) as resp:
                                    await resp.read()
                                    if resp.status != 200:
                                        raise SystemExit(f"{name}: HTTP {resp.status}")
                        c0 = cpu_s(pid)
                        await asyncio.gather(*(worker() for _ in range(lv)))
                        us = 1e6 * (cpu_s(pid) - c0) / n
                        rows.setdefault((kind, lv, name), []).append(us)
                        print(f"  {name:6s} {kind:4s} c={lv:<3d} rep {r}: {us:7.0f} us CPU "
                              f"per request of {per} (load {os.getloadavg()[0]:.1f})",
                              flush=True)
    return rows


def _main_http_only(args) -> None:
    import subprocess
    import sys
    import urllib.request
    from . import servers as S
    trees = [("pacsd", S.REPO)] + ([("base", Path(args.baseline).resolve())]
                                   if args.baseline else [])
    script = Path(__file__).with_name("stow_stub_server.py")
    procs, running = [], []
    try:
        for name, tree in trees:
            port = S.free_port()
            env = dict(os.environ, PYTHONPATH=str(tree))
            p = subprocess.Popen([sys.executable, str(script), str(port)], cwd=str(tree),
                                 env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            procs.append(p)
            for _ in range(150):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health",
                                           timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.2)
            else:
                raise SystemExit(f"stub server of {tree} did not start")
            running.append((name, port, p.pid))
        started, load0 = time.strftime("%H:%M:%S UTC", time.gmtime()), os.getloadavg()[0]
        rows = asyncio.run(_http_only(args, running))
    finally:
        for p in procs:
            S.stop_process(p)
    names = [n for n, _, _ in running]
    print(f"\nHTTP side only (stub ingest), started {started}, load {load0:.2f} -> "
          f"{os.getloadavg()[0]:.2f}; server CPU us per request, median of {args.reps}")
    print("| kind | c | " + " | ".join(names) + (" | pacsd/base |" if len(names) > 1 else " |"))
    print("|---|---|" + "---|" * (len(names) + (len(names) > 1)))
    for kind, lv in sorted({(k, lv) for k, lv, _ in rows}):
        med = [statistics.median(rows[(kind, lv, n)]) for n in names]
        print(f"| {kind} | {lv} | " + " | ".join(f"{m:.0f}" for m in med)
              + (f" | {med[0] / med[1]:.2f} |" if len(med) > 1 else " |"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.stow_only")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ct-batch", type=int, default=48, help="CT instances per repetition")
    ap.add_argument("--tiny", type=int, default=3000, help="tiny instances, split over reps")
    ap.add_argument("--ct-per-request", type=int, default=1)
    ap.add_argument("--tiny-per-request", type=int, default=5)
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-orthanc", action="store_true")
    ap.add_argument("--baseline", metavar="TREE",
                    help="also run pacsd from another source tree (e.g. an export of main) "
                         "as target 'base', interleaved like the others")
    ap.add_argument("--profile", metavar="DIR", help="py-spy pacsd in an extra pass at c=4")
    ap.add_argument("--profile-rounds", type=int, default=4)
    ap.add_argument("--rate", type=int, default=250)
    ap.add_argument("--http-only", action="store_true",
                    help="measure the HTTP side alone: this tree's (and --baseline's) web app "
                         "with a stub ingest (benchmarks/stow_stub_server.py), server CPU per "
                         "request; no Orthanc, no disk work")
    ap.add_argument("--http-requests", type=int, default=2000,
                    help="tiny requests per measurement with --http-only (CT: a quarter)")
    args = ap.parse_args(argv)
    if args.http_only:
        _main_http_only(args)
        return
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load0 = os.getloadavg()
    procs = [PacsdProcess()]
    try:
        if args.baseline:
            from . import servers
            repo, servers.REPO = servers.REPO, Path(args.baseline).resolve()
            try:
                base = PacsdProcess()
            finally:
                servers.REPO = repo
            base.name = "base"
            procs.append(base)
        if not args.no_orthanc:
            procs.append(OrthancProcess())
        targets = [Target(p.name, p.url, pid=p.pid, version=p.version) for p in procs]
        rows = asyncio.run(_run(args, targets))
    finally:
        for p in procs:
            p.stop()
    names = [p.name for p in procs]
    print(f"\nstarted {started}, load {load0[0]:.2f} -> {os.getloadavg()[0]:.2f}; "
          + "; ".join(f"{p.name}: {p.version}" for p in procs))
    others = names[1:]
    print("| phase | c | " + " | ".join(f"{n} MB/s | {n} inst/s | {n} CPU ms/inst (event loop)"
                                        for n in names)
          + "".join(f" | pacsd/{n}" for n in others) + " |")
    print("|---|---|" + "---|" * (3 * len(names) + len(others)))
    keys = sorted({(k, lv) for k, lv, _ in rows}, key=lambda x: (x[0], x[1]))
    for kind, lv in keys:
        med = {}
        for name in names:
            rs = rows.get((kind, lv, name))
            if rs:
                med[name] = (statistics.median(r["mb_s"] for r in rs),
                             statistics.median(r["inst_s"] for r in rs),
                             statistics.median(r["server_cpu_ms_per_inst"] for r in rs),
                             statistics.median(r.get("loop_cpu_ms_per_inst", 0) for r in rs))
        cells = [f"{med[n][0]:.1f} | {med[n][1]:.0f} | {med[n][2]:.2f}"
                 + (f" ({med[n][3]:.2f} loop)" if med[n][3] else "") for n in names]
        ratios = [f"{med['pacsd'][1] / med[n][1]:.2f}" for n in others]
        print(f"| {kind} | {lv} | " + " | ".join(cells + ratios) + " |")


if __name__ == "__main__":
    main()
