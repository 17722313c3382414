"""In-process CPU cost of the one ingest path: ``python -m benchmarks.stow_micro``
(issue 6, R-H1).

Stores the benchmark's tiny instances (five per study, as STOW-RS sends them) and CT
slices through :class:`pacsd.services.IngestService` in this process, on a fresh SQLite
archive, ``--threads`` callers at once, and prints the CPU time (user + system of the
process, ``time.process_time``) per instance. The network, aiohttp and the event loop
are left out, so a change to parse, staging, store or catalogue can be measured in
seconds on a loaded machine; ``--profile FILE`` writes cProfile stats of the run.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import statistics
import tempfile
import threading
import time

from pacsd.config import Settings
from pacsd.services import Archive, IngestService
from pacsd.services.security import LOCAL

from .dataset import DataSet


async def _requests(svc: IngestService, calls: list[list[bytes]], concurrency: int,
                    grouped: bool) -> None:
    """STOW-RS requests without HTTP: ``concurrency`` requests at once, each of one
    call's parts, in parallel on the archive's pool; ``grouped``: prepared, then indexed
    together (the handler since issue 6, session 7), else each part ingested whole."""
    nxt = iter(calls)

    async def client() -> None:
        for parts in nxt:
            if grouped:
                prepared = await asyncio.gather(*(svc.prepare_bytes(d) for d in parts))
                for r in await svc.commit(list(prepared), actor=LOCAL):
                    assert not isinstance(r, Exception), r
            else:
                await asyncio.gather(*(svc.ingest_bytes(d, actor=LOCAL) for d in parts))

    await asyncio.gather(*(client() for _ in range(concurrency)))


def _run(items: list[bytes], threads: int, per_call: int, index_url: str | None,
         prof: cProfile.Profile | None = None, mode: str = "thread") -> tuple:
    with tempfile.TemporaryDirectory(prefix="stow-micro-") as tmp:
        s = Settings()
        s.server.data_dir = tmp + "/data"
        s.server.worker_threads = max(4, threads)
        if index_url:
            s.index.url = index_url
        a = Archive.open(s)
        svc = IngestService(a)
        calls = [items[k:k + per_call] for k in range(0, len(items), per_call)]
        nxt = iter(range(len(calls)))
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    k = next(nxt, None)
                if k is None:
                    return
                for data in calls[k]:
                    svc.ingest_bytes_sync(data, actor=LOCAL)

        try:
            c0, t0, s0 = time.process_time(), time.perf_counter(), os.times().system
            if mode != "thread":
                asyncio.run(_requests(svc, calls, threads, mode == "request"))
            elif prof is not None:  # one caller, in this thread, so cProfile sees it
                prof.enable()
                worker()
                prof.disable()
            else:
                ts = [threading.Thread(target=worker) for _ in range(threads)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            sys_s = os.times().system - s0
            counts = a.catalogue.counts()
            groups = dict(a.catalogue.group_stats)
        finally:
            a.close()
    assert counts["instances"] == len(items), counts
    print(f"  group commits: {groups['groups']} for {groups['writes']} writes "
          f"({groups['writes'] / max(1, groups['groups']):.1f} per group)")
    return (1000 * cpu / len(items), 1000 * wall / len(items),
            1000 * sys_s / len(items))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.stow_micro")
    ap.add_argument("--kind", choices=("tiny", "ct"), default="tiny")
    ap.add_argument("--n", type=int, default=500, help="instances per repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--mode", choices=("thread", "part", "request"), default="thread",
                    help="thread: ingest_bytes_sync in --threads threads (C-STORE); part: "
                         "--threads STOW requests of 5 parts, each part ingested whole; "
                         "request: each part prepared, the request's parts indexed together")
    ap.add_argument("--index-url", help="e.g. postgresql+psycopg://127.0.0.1/NAME")
    ap.add_argument("--profile", metavar="FILE", help="cProfile stats of the last repetition (run in one thread)")
    args = ap.parse_args(argv)
    ds = DataSet(1, ct_studies=1, ct_slices=1, tiny=args.n * args.reps,
                 stow_ct_batch=args.n)
    cpu, wall, sys_ms = [], [], []
    for r in range(args.reps):
        if args.kind == "tiny":
            insts = ds.tiny_range((args.n // 5) * r + 50000, args.n // 5)
        else:
            insts = ds.stow_ct(f"micro{r}")
        items = [ds.build(i) for i in insts]
        prof = cProfile.Profile(time.thread_time) if args.profile and r == args.reps - 1 else None
        c, w, sy = _run(items, args.threads, 5, args.index_url, prof, args.mode)
        sys_ms.append(sy)
        if prof:
            prof.dump_stats(args.profile)
        cpu.append(c)
        wall.append(w)
        print(f"rep {r}: {c:.3f} cpu-ms/inst ({sy:.3f} sys), {w:.3f} wall-ms/inst "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"{args.kind}: median {statistics.median(cpu):.3f} cpu-ms/inst "
          f"({statistics.median(sys_ms):.3f} sys), "
          f"{statistics.median(wall):.3f} wall-ms/inst")


if __name__ == "__main__":
    main()
