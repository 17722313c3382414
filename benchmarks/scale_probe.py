"""Scale curve in process, interleaved (issue 6 item 3): the query layer's latency on
indexes of different sizes, measured round by round so every size sees the same load.

    python -m benchmarks.scale_probe --urls sqlite:////tmp/10k.db,sqlite:////tmp/1m.db \
        [--rounds 5] [--per-round 40]

Each URL is an index filled like ``benchmarks scale`` fills it (e.g. ``RowFill`` of the
tiny instances). Per round and URL, every kind runs ``--per-round`` queries through
``Catalogue.search`` (the SQL and items of a QIDO-RS request, without HTTP: the part
that can grow with the archive); the queries are the scale run's kinds, their values sampled from the index itself. The
table gives the median over all rounds per URL, and the last URL against the first.
``benchmarks scale`` measures through HTTP one size after another; on a loaded machine
its ratios move with the load, these do not (much).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from pacsd.index import Catalogue, parse_qido

from .dataset import NAME_PATTERNS, TINY_MODALITIES

KINDS = ("patient_id", "accession", "patient_name", "study_date", "modality",
         "series_in_study", "instances_in_series")


def _samples(cat: Catalogue, n: int = 64) -> list[tuple]:
    with cat.engine.connect() as conn:
        top = conn.exec_driver_sql("SELECT max(pk) FROM studies").scalar() or 1
        step = max(1, top // n)
        return conn.exec_driver_sql(
            "SELECT s.study_instance_uid, s.study_date, s.accession_number, p.patient_id, "
            "min(se.series_instance_uid) FROM studies s JOIN patients p ON p.pk = "
            "s.patient_fk JOIN series se ON se.study_fk = s.pk "
            f"WHERE s.pk - (s.pk / {step}) * {step} = 1 GROUP BY s.pk, s.study_instance_uid, s.study_date, "
            "s.accession_number, p.patient_id ORDER BY s.pk LIMIT 64").all()


def case(kind: str, k: int, rows: list[tuple]):
    study, day, acc, pid, series = rows[k % len(rows)]
    if kind == "patient_id":
        return "study", [("PatientID", pid)], {}
    if kind == "accession":
        return "study", [("AccessionNumber", acc)], {}
    if kind == "patient_name":
        return "study", [("PatientName", NAME_PATTERNS[k % len(NAME_PATTERNS)]),
                         ("limit", "25")], {}
    if kind == "study_date":
        return "study", [("StudyDate", day), ("limit", "25")], {}
    if kind == "modality":
        return "series", [("Modality", TINY_MODALITIES[k % len(TINY_MODALITIES)]),
                          ("limit", "25"), ("offset", str((k // 6 % 8) * 25))], {}
    if kind == "series_in_study":
        return "series", [], {"study_uid": study}
    return "instance", [], {"study_uid": study, "series_uid": series}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale_probe")
    p.add_argument("--urls", required=True, help="comma-separated index URLs, small first")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=40)
    args = p.parse_args(argv)
    urls = args.urls.split(",")
    cats = [Catalogue(u) for u in urls]
    rows = [_samples(c) for c in cats]
    times: dict = {(u, k): [] for u in urls for k in KINDS}
    for c, r in zip(cats, rows):  # warm: compiled statements, prepared plans, caches
        for kind in KINDS:
            for k in range(10):
                level, params, kw = case(kind, k, r)
                c.search(parse_qido(level, params, **kw), raw=True)
    load0 = os.getloadavg()
    for rnd in range(args.rounds):
        for kind in KINDS:
            for u, c, r in zip(urls, cats, rows):
                ts = times[(u, kind)]
                for k in range(args.per_round):
                    level, params, kw = case(kind, rnd * args.per_round + k, r)
                    q = parse_qido(level, params, **kw)
                    t = time.perf_counter()
                    c.search(q, raw=True)
                    ts.append(time.perf_counter() - t)
    load1 = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load "
          f"{'/'.join(f'{x:.2f}' for x in load0)} at start, "
          f"{'/'.join(f'{x:.2f}' for x in load1)} at end; "
          f"{args.rounds} rounds x {args.per_round} per kind and index\n")
    head = " | ".join(f"p50 ms {u.rsplit('/', 1)[-1]}" for u in urls)
    print(f"| kind | {head} | last / first |")
    print("|---|" + "---|" * (len(urls) + 1))
    for kind in KINDS:
        p50 = [statistics.median(times[(u, kind)]) * 1000 for u in urls]
        print(f"| {kind} | " + " | ".join(f"{x:.2f}" for x in p50)
              + f" | **{p50[-1] / p50[0]:.2f}x** |")
    for c in cats:
        c.close()


if __name__ == "__main__":
    main()
