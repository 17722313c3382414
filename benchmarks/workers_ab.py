"""pacsd with 1 and with N worker processes, and Orthanc, in ONE run (R-H1, issue 6).

    python -m benchmarks.workers_ab [--workers 2] [--slices 40] [--tiny 1000] [--reps 3]

The three servers get the same data set and every phase in turn (the runner alternates
their order per repetition), so on a shared machine the load drifts over all three alike
and the ratios are within one run. Prints the medians per server and the ratios of STOW
(c=1/4), QIDO (p50 at c=1, queries/s at c=16), WADO-RS whole study (c=1/8), series
metadata, frames, /rendered and /thumbnail; the full result is saved as JSON in
benchmarks/out/. Writes nothing else (RESULTS.md is the side-by-side's).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import time

from . import report
from .phases import Target
from .runner import Config, Runner, machine_info
from .servers import OrthancProcess, PacsdProcess


def _metric_of(key: str) -> str:
    if key.startswith("stow_"):
        return "inst_s"
    if key.startswith("wado_study"):
        return "mb_s"
    return "qps" if key.startswith("qido_") and not key.endswith("@1") else "p50_ms"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.workers_ab")
    p.add_argument("--workers", default="2")
    p.add_argument("--slices", type=int, default=40)
    p.add_argument("--tiny", type=int, default=1000)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    cfg = Config(ct_studies=2, ct_slices=args.slices, tiny=args.tiny, reps=args.reps,
                 stow_levels=(1, 4), qido_levels=(1, 16), wado_levels=(1, 8),
                 qido_n={1: 30, 16: 160}, wado_n={1: 4, 8: 8}, metadata_n=10, frame_n=30,
                 render_n=16, thumb_n=8, ceiling=False)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    mi = machine_info()
    servers = []
    try:
        servers.append(OrthancProcess())
        servers.append(PacsdProcess(workers="1"))
        servers.append(PacsdProcess(workers=args.workers))
        names = ["orthanc", "pacsd-w1", f"pacsd-w{args.workers}"]
        targets = [Target(n, s.url, version=s.version) for n, s in zip(names, servers)]
        result = asyncio.run(Runner(cfg, targets, print).run())
    finally:
        for s in reversed(servers):
            s.stop()
    path = report.save_json(result, "workers-ab")
    sums = {n: report.summarise(result["targets"][n]["rows"]) for n in names}
    print(f"\n{started}; {mi['nproc']} CPUs {mi['cpu']}, load at start "
          + "/".join(f"{x:.2f}" for x in mi["loadavg_start"]) + ", at end "
          + "/".join(f"{x:.2f}" for x in os.getloadavg()) + f"; result {path}")
    print("(ratios are of the values: above 1 is better for inst_s, mb_s and qps, worse "
          "for p50_ms)")
    rows = [(k, _metric_of(k)) for k in sums[names[1]] if not k.startswith("load_")]
    print("\n| phase | " + " | ".join(names) + f" | w{args.workers}/w1 | w1/orthanc | "
          f"w{args.workers}/orthanc |")
    print("|---|" + "---|" * (len(names) + 3))
    for key, metric in rows:
        vals = [sums[n].get(key, {}).get(metric) for n in names]
        bad = [n for n in names if not sums[n].get(key, {}).get("verified")]
        o, a, b = vals

        def r(x, y):
            return f"{x / y:.2f}" if x and y else "-"
        print(f"| {key} ({metric}) | " + " | ".join(
            (f"{v:.2f}" if metric == "p50_ms" else f"{v:.1f}") if v else "-" for v in vals)
              + f" | {r(b, a)} | {r(a, o)} | {r(b, o)} |"
              + (f" not verified: {', '.join(bad)}" if bad else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
