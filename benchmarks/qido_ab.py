"""QIDO-RS A/B of two pacsd source trees (and Orthanc) in ONE run (R-H1, issue 6).

    python -m benchmarks.qido_ab --a /work/main --b . [--ct-studies 2] [--slices 300]
        [--tiny 3000] [--reps 3] [--n1 30] [--n16 160] [--orthanc] [--workers auto]
        [--kinds patient_id,instances_in_series] [--profile B] [--profile-seconds 8]

The side-by-side's QIDO data (``benchmarks/dataset.py``: ``--ct-studies`` CT series of
``--slices`` instances plus ``--tiny`` tiny instances, GB18030 / UTF-8 / ASCII names) is
stored through STOW-RS into a fresh pacsd started from each tree (``pacsd serve`` with that
tree's code, ``--workers`` worker processes, default pacsd's own default) and, with
``--orthanc``, into Orthanc (``benchmarks/servers.py``). Then every QIDO kind of the
side-by-side (:data:`benchmarks.phases.QIDO_KINDS`, same queries, same verification of
every answer) runs at c=1 (``--n1`` queries) and c=16 (``--n16`` queries), the servers in
turn and their order reversed every repetition, so load drift hits all alike. Prints per
kind the median p50 at c=1, the median queries/s at c=16 and the server CPU per query at
c=16 (utime + stime of the server and its worker processes, from /proc), with ratios
B/A and to Orthanc. A repetition with a wrong answer is reported, not scored.

``--profile A|B``: afterwards, py-spy (``benchmarks/profiling.py``) samples every worker
process of that tree (``--gil`` and all threads) while the kinds run at c=16 for about
``--profile-seconds``; the summaries are printed and the raw files kept in benchmarks/out/.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from . import phases as P, profiling
from .client import new_session
from .dataset import DataSet
from .procstat import children, cpu_s
from .servers import OrthancProcess, git_state, stop_process
from .wado_ab import ab_parser, start

OUT = Path(__file__).resolve().parent / "out"


async def _load(targets: list[P.Target], ds: DataSet) -> None:
    ct = [(i, ds.build(i)) for i in ds.ct_main()]
    tiny = [(i, ds.build(i)) for i in ds.tiny_all()]
    for t in targets:
        t0 = time.perf_counter()
        for items, per in ((ct, 1), (tiny, 5)):
            m = await P.stow(t, P.batched(items, per), 4)
            if m.errors:
                raise SystemExit(f"{t.name}: STOW failed: {m.errors[0]}")
        print(f"  loaded {t.name}: {len(t.manifest.by_sop)} instances in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)


async def _measure(targets: list[P.Target], pids: dict[str, int], kinds: list[str],
                   args: argparse.Namespace) -> dict:
    books = {t.name: P.QueryBook(t.manifest) for t in targets}
    for t in targets:  # warm-up: statement caches, page cache, every worker
        for kind in kinds:
            await P.qido(t, books[t.name], kind, 32, 16)
    res: dict[tuple[str, str, int], list[dict]] = {}
    for rep in range(args.reps):
        for kind in kinds:
            for conc, n in ((1, args.n1), (16, args.n16)):
                order = targets if rep % 2 == 0 else targets[::-1]
                for t in order:
                    c0 = cpu_s(pids[t.name])
                    m = await P.qido(t, books[t.name], kind, n, conc, offset=rep * n)
                    cpu = cpu_s(pids[t.name]) - c0
                    row = P.row_from(kind, m, rep=rep)
                    row["cpu_ms_q"] = cpu * 1e3 / max(1, len(m.samples))
                    res.setdefault((t.name, kind, conc), []).append(row)
    return res


async def _profile(t: P.Target, pid: int, kinds: list[str], seconds: float) -> None:
    OUT.mkdir(exist_ok=True)
    book = P.QueryBook(t.manifest)
    workers = children(pid)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    spies = {(w, mode): profiling.PySpy(w, OUT / f"qido-ab-{stamp}-{t.name}-{w}-{mode}.txt",
                                        gil=mode == "gil")
             for w in workers for mode in ("gil", "all")}
    t0 = time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            for kind in kinds:
                await P.qido(t, book, kind, 80, 16)
    finally:
        paths = {k: spy.stop() for k, spy in spies.items()}
    for (w, mode), path in sorted(paths.items()):
        if path is None:
            print(f"profile {t.name} worker {w} {mode}: nothing recorded")
            continue
        s = profiling.summarise(path, top=25)
        print(f"\nprofile {t.name} worker {w} {mode}: {s['samples']} samples ({path})")
        print("  self: " + ", ".join(f"{h['function']} {h['pct']}%" for h in s["self"]))
        print("  pacsd inclusive: " + ", ".join(f"{h['function']} {h['pct']}%"
                                                for h in s["inclusive_pacsd"]))
        print("  packages: " + ", ".join(f"{h['package']} {h['pct']}%"
                                         for h in s["by_package"]))


def _git(tree: Path) -> str:
    head, dirty = git_state(tree)
    return (head or "?") + ("+dirty" if dirty and head else "")


async def _run(args: argparse.Namespace) -> int:
    trees = {"A": Path(args.a).resolve(), "B": Path(args.b).resolve()}
    kinds = args.kinds.split(",") if args.kinds else list(P.QIDO_KINDS)
    tmp = Path(tempfile.mkdtemp(prefix="qido-ab-"))
    ds = DataSet(ct_studies=args.ct_studies, ct_slices=args.slices, tiny=args.tiny)
    procs = {}
    orthanc = None
    targets: list[P.Target] = []
    versions = {}
    try:
        if args.orthanc:
            orthanc = OrthancProcess()
            procs["Orthanc"] = orthanc.proc
            versions["Orthanc"] = orthanc.version
            targets.append(P.Target("Orthanc", orthanc.url))
        for name, tree in trees.items():
            proc, base = start(tree, tmp / f"data-{name}", tmp / f"server-{name}.log",
                               args.workers)
            procs[name] = proc
            versions[name] = f"{tree} (git {_git(tree)})"
            targets.append(P.Target(name, base + "/dicom-web", pid=proc.pid))
        time.sleep(3)  # every worker listening
        for t in targets:
            t.session = new_session(16)
        await _load(targets, ds)
        load = os.getloadavg()
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        pids = {name: p.pid for name, p in procs.items()}
        res = await _measure(targets, pids, kinds, args)
        end_load = os.getloadavg()
        names = [t.name for t in targets]
        print(f"\n{started}; {os.cpu_count()} CPUs; data {args.ct_studies} x {args.slices} CT "
              f"+ {args.tiny} tiny; pacsd --workers {args.workers}; reps {args.reps}, "
              f"n1 {args.n1}, n16 {args.n16}; load " + "/".join(f"{x:.2f}" for x in load)
              + " at start, " + "/".join(f"{x:.2f}" for x in end_load) + " at end")
        for n in names:
            print(f"  {n}: {versions[n]}")

        def med(name, kind, conc, key):
            rows = [r for r in res[(name, kind, conc)] if r["verified"]]
            return statistics.median(r[key] for r in rows) if rows else None

        def ratio(x, y):
            return f"{x / y:.2f}" if x and y else "-"

        head = ["kind", "A p50 ms", "B p50 ms", "B/A"]
        if orthanc:
            head += ["Orthanc p50", "B/Orthanc"]
        head += ["A q/s c16", "B q/s c16", "B/A"]
        if orthanc:
            head += ["Orthanc q/s", "A/Orthanc", "B/Orthanc"]
        head += ["A CPU ms/q", "B CPU ms/q"]
        print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for kind in kinds:
            a1, b1 = med("A", kind, 1, "p50_ms"), med("B", kind, 1, "p50_ms")
            aq, bq = med("A", kind, 16, "qps"), med("B", kind, 16, "qps")
            cells = [kind, f"{a1:.2f}" if a1 else "-", f"{b1:.2f}" if b1 else "-",
                     ratio(b1, a1)]
            if orthanc:
                o1 = med("Orthanc", kind, 1, "p50_ms")
                cells += [f"{o1:.2f}" if o1 else "-", ratio(b1, o1)]
            cells += [f"{aq:.0f}" if aq else "-", f"{bq:.0f}" if bq else "-", ratio(bq, aq)]
            if orthanc:
                oq = med("Orthanc", kind, 16, "qps")
                cells += [f"{oq:.1f}" if oq else "-", ratio(aq, oq), ratio(bq, oq)]
            ac, bc = med("A", kind, 16, "cpu_ms_q"), med("B", kind, 16, "cpu_ms_q")
            cells += [f"{ac:.3f}" if ac else "-", f"{bc:.3f}" if bc else "-"]
            print("| " + " | ".join(cells) + " |")
        bad = [(k, r["error_sample"]) for k, rows in res.items() for r in rows
               if not r["verified"]]
        for k, err in bad:
            print(f"NOT VERIFIED {k}: {err}")
        print("\nq/s of each repetition at c=16:")
        for kind in kinds:
            print(f"  {kind}: " + "; ".join(
                f"{n} " + " ".join(f"{r['qps']:.0f}" for r in res[(n, kind, 16)])
                for n in names))
        if args.profile:
            t = next(t for t in targets if t.name == args.profile)
            await _profile(t, pids[t.name], kinds, args.profile_seconds)
    finally:
        for t in targets:
            if t.session is not None:
                await t.session.close()
        if orthanc is not None:
            orthanc.stop()
            procs.pop("Orthanc", None)
        for proc in procs.values():
            stop_process(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = ab_parser("python -m benchmarks.qido_ab", "auto")
    p.add_argument("--ct-studies", type=int, default=2)
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--tiny", type=int, default=3000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--n1", type=int, default=30, help="queries per repetition at c=1")
    p.add_argument("--n16", type=int, default=160, help="queries per repetition at c=16")
    p.add_argument("--kinds", default="", help="comma-separated (default: all)")
    p.add_argument("--profile", choices=("A", "B"), help="py-spy a tree's workers after")
    p.add_argument("--profile-seconds", type=float, default=8.0)
    return asyncio.run(_run(p.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
