"""DIMSE A/B in ONE run: pacsd from two source trees (and optionally Orthanc) (R-H1).

    python -m benchmarks.dimse_ab --before /work/main [--slices 100] [--tiny 200]
        [--reps 3] [--orthanc]

Each server gets the same CT study (storescu, untimed); then, per repetition and in a
rotating order, every server runs the same DCMTK phases as ``benchmarks.dimse``: C-STORE
of a fresh CT series and of fresh tiny files (one storescu association each), C-GET of
the study (getscu) and C-MOVE of it to a DCMTK storescp. Every retrieve is verified
(exactly the study's instances, byte-exact pixel data). Besides files/s and MB/s, the
server process's CPU time (utime + stime from /proc/PID/stat) per file is measured:
less sensitive to a shared machine's load than wall time. Prints a table of medians.
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from . import dimse as D
from . import servers
from .dataset import DataSet
from .procstat import cpu_s

def start_pacsd(tree: str | None, peers: dict[str, int]) -> servers.PacsdProcess:
    old = servers.REPO
    if tree:
        servers.REPO = Path(tree).resolve()
    try:
        # One process: DIMSE runs in the primary worker only, and /proc/PID/stat of a
        # supervisor would not count its workers' CPU.
        return servers.PacsdProcess(dicom=True, peers=peers, workers="1")
    finally:
        servers.REPO = old


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dimse_ab")
    p.add_argument("--before", default="/work/main", help="source tree of 'before'")
    p.add_argument("--slices", type=int, default=100)
    p.add_argument("--tiny", type=int, default=200)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--orthanc", action="store_true")
    p.add_argument("--phases", default="store_ct,store_tiny,get,move")
    args = p.parse_args(argv)
    phases = args.phases.split(",")
    ds = DataSet(ct_studies=1, ct_slices=args.slices, tiny=0, stow_ct_batch=args.slices)
    main_ct = [(i, ds.build(i)) for i in ds.ct_main()]
    study = main_ct[0][0].study
    expected = {i.sop: i.pixel_sha256 for i, _ in main_ct}
    scp = D.StoreSCP(servers.free_port())
    targets: dict[str, object] = {}
    load0 = os.getloadavg()
    try:
        targets["before"] = start_pacsd(args.before, {D.MOVE_AET: scp.port})
        targets["after"] = start_pacsd(None, {D.MOVE_AET: scp.port})
        if args.orthanc:
            targets["orthanc"] = servers.OrthancProcess(peers={D.MOVE_AET: scp.port})
        addrs = {n: D.DicomAddress("127.0.0.1", s.dicom_port, s.aet)
                 for n, s in targets.items()}
        for n, a in addrs.items():
            m = D.store(a, [(i.sop, b) for i, b in main_ct])
            assert m.samples[0].ok, (n, m.samples[0].error)
        names = list(targets)
        rows: dict[tuple[str, str], list[tuple[float, float, int, int]]] = {}
        for r in range(args.reps):
            order = names[r % len(names):] + names[:r % len(names)]
            for k, n in enumerate(order):
                srv, a = targets[n], addrs[n]
                work = {}
                if "store_ct" in phases:
                    batch = [(i.sop, ds.build(i)) for i in ds.stow_ct(f"ab-{n}-{r}")]
                    work["store_ct"] = lambda b=batch: D.store(a, b)
                if "store_tiny" in phases:
                    first = 1000 + 500 * r + 100000 * names.index(n)
                    tiny = [(i.sop, ds.build(i)) for i in ds.tiny_range(
                        first, -(-args.tiny // 5), limit=first * 5 + args.tiny)]
                    work["store_tiny"] = lambda b=tiny: D.store(a, b)
                if "get" in phases:
                    work["get"] = lambda: D.get_study(a, study, expected)
                if "move" in phases:
                    work["move"] = lambda: D.move_study(a, scp, study, expected)
                for phase, fn in work.items():
                    c0 = cpu_s(srv.pid)
                    m = fn()
                    c1 = cpu_s(srv.pid)
                    s = m.samples[0]
                    if not s.ok:
                        print(f"  {n} {phase} r{r}: FAILED {s.error}")
                        continue
                    files = (args.slices if phase in ("store_ct", "get", "move")
                             else args.tiny)
                    rows.setdefault((phase, n), []).append((m.wall_s, c1 - c0, files,
                                                            s.nbytes))
                    print(f"  r{r} {n:8s} {phase:10s} {files / m.wall_s:7.1f} files/s "
                          f"{s.nbytes / m.wall_s / 1e6:7.1f} MB/s "
                          f"{(c1 - c0) / files * 1000:6.2f} ms CPU/file", flush=True)
        load1 = os.getloadavg()
        print(f"\nload average {load0[0]:.2f} at start, {load1[0]:.2f} at end; "
              f"{args.slices} CT slices, {args.tiny} tiny, {args.reps} reps, medians")
        print("| phase | " + " | ".join(f"{n} files/s | {n} MB/s | {n} CPU ms/file"
                                         for n in names) + " | after/before files/s |")
        print("|---|" + "---|---|---|" * len(names) + "---|")
        for phase in phases:
            cells, fps = [], {}
            for n in names:
                got = rows.get((phase, n), [])
                if not got:
                    cells.append("- | - | -")
                    continue
                fps[n] = statistics.median(f / w for w, _, f, _ in got)
                mbs = statistics.median(b / w / 1e6 for w, _, _, b in got)
                cpu = statistics.median(c / f * 1000 for _, c, f, _ in got)
                cells.append(f"{fps[n]:.1f} | {mbs:.1f} | {cpu:.2f}")
            ratio = (f"{fps['after'] / fps['before']:.2f}"
                     if fps.get("after") and fps.get("before") else "-")
            print(f"| {phase} | " + " | ".join(cells) + f" | {ratio} |")
    finally:
        for s in targets.values():
            s.stop()
        scp.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
