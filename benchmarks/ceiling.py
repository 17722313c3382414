"""The driver's own ceiling: the same client code against :mod:`benchmarks.stub`.

If a server's number comes close to these, the measurement says more about the driver
than about the server. Measured once per run: WADO-RS study parse+verify (MB/s at
concurrency 1 and 8), QIDO instances-in-series (100 items) and a one-study QIDO answer with verification
(queries/s at 16) and
STOW upload (MB/s at 4; the stub's answer is not verified).
"""
from __future__ import annotations

from typing import Any, Callable

from . import phases as P
from .client import new_session, run_closed_loop
from .dataset import DataSet
from .servers import StubProcess


async def measure_ceiling(cfg: Any, log: Callable[[str], None] = print) -> dict:
    log("client ceiling (driver against a canned-answer stub)")
    stub = StubProcess(cfg.seed, cfg.ct_slices)
    out: dict = {}
    try:
        ds = DataSet(cfg.seed, ct_studies=1, ct_slices=cfg.ct_slices, tiny=0,
                     stow_ct_batch=cfg.stow_ct_batch)
        t = P.Target("stub", stub.url, session=new_session(32))
        try:
            insts = ds.ct_main()
            payload = {}
            for inst in insts:
                payload[inst.sop] = ds.build(inst)
                t.manifest.add(inst)
            study = insts[0].study
            for lv in (1, 8):
                m = await P.wado_study(t, [study], max(4, lv), lv, payload)
                row = P.row_from("wado_study", m, rep=0)
                out[f"wado_study@{lv}"] = {"mb_s": row["mb_s"], "verified": row["verified"],
                                           "client_cpu_pct": row["client_cpu_pct"]}
            book = P.QueryBook(t.manifest)
            m = await P.qido(t, book, "instances_in_series", 400, 16)
            row = P.row_from("qido", m, rep=0)
            out["qido_instances_in_series@16"] = {"qps": row["qps"], "p50_ms": row["p50_ms"],
                                                  "verified": row["verified"],
                                                  "client_cpu_pct": row["client_cpu_pct"]}
            m = await P.qido(t, book, "accession", 600, 16)
            row = P.row_from("qido", m, rep=0)
            out["qido_accession@16"] = {"qps": row["qps"], "p50_ms": row["p50_ms"],
                                        "verified": row["verified"],
                                        "client_cpu_pct": row["client_cpu_pct"]}
            batch = [(i, ds.build(i)) for i in ds.stow_ct("ceiling")]
            bodies = [P.multipart_body([b], P.BOUNDARY) for _, b in batch]
            headers = {"Content-Type": P.STOW_TYPE, "Accept": P.DICOM_JSON}

            async def post(i: int):
                async with t.session.post(stub.url + "/studies", data=bodies[i],
                                          headers=headers) as resp:
                    await resp.read()
                return len(bodies[i]), None
            m = await run_closed_loop(len(bodies), 4, post)
            row = P.row_from("stow", m, rep=0, instances=len(bodies))
            out["stow_ct@4"] = {"mb_s": row["mb_s"], "inst_s": row["inst_s"],
                                "client_cpu_pct": row["client_cpu_pct"]}
        finally:
            await t.session.close()
    finally:
        stub.stop()
    for k, v in out.items():
        log(f"  ceiling {k}: {v}")
    return out
