"""Peak memory of a server while it streams a large study (issue 6, Deliver item 4).

    python -m benchmarks memory [--size-mb 2048] [--concurrency 8] [--requests 8]
                                [--with-orthanc]

Starts pacsd (and Orthanc with ``--with-orthanc``) on loopback, stores one study of
``--size-mb`` of 512 x 512 x 16-bit CT slices through STOW-RS, resets the process's peak
RSS (``/proc/PID/clear_refs`` = 5), then retrieves the whole study with WADO-RS
(``transfer-syntax=*``) ``--requests`` times at ``--concurrency`` while a sampler reads
``/proc/PID/status`` (VmRSS every 50 ms; VmHWM at the end). Every answer is verified: each
part's sha256 must be one of the stored objects and each study answer must hold every
instance exactly once. The slices share one pixel array (memory, not pixels, is measured
here), their bytes differ by UIDs.
"""
from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import verify as V
from .client import new_session, run_closed_loop
from .dataset import CT_SIZE, DataSet, Inst, multipart_body
from .phases import ACCEPT_STUDY, BOUNDARY, DICOM_JSON, IDENTITY, STOW_TYPE, Target, \
    fetch_multipart, row_from
from .procstat import server_pids

SAMPLE_S = 0.05


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (and VmPeak) in bytes (Linux) of a server process, summed over its
    worker processes if it has any (each worker's pages shared with the supervisor by
    fork are counted in each: an upper bound)."""
    out: dict[str, int] = {}
    for p in server_pids(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:  # a worker exiting as we read
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmPeak"):
                out[key] = out.get(key, 0) + int(value.split()[0]) * 1024
    return out


def per_process(pid: int) -> list[tuple[int, float, float, float]]:
    """(pid, VmRSS, VmHWM, Pss MiB) of the server process and each of its workers (Pss:
    ``/proc/PID/smaps_rollup``, pages shared after fork divided among their sharers)."""
    out = []
    for p in server_pids(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text().splitlines()
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        kv = {k: int(v.split()[0]) / 1024 for k, _, v in
              (line.partition(":") for line in status + rollup)
              if k in ("VmRSS", "VmHWM", "Pss")}
        out.append((p, kv.get("VmRSS", 0.0), kv.get("VmHWM", 0.0), kv.get("Pss", 0.0)))
    return out


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0; needs to own the process), of the
    server process and its workers."""
    try:
        for p in server_pids(pid):
            Path(f"/proc/{p}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Samples VmRSS of ``pid`` every :data:`SAMPLE_S` seconds until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.max_rss = 0
        self.samples = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            self.max_rss = max(self.max_rss, proc_status(self.pid).get("VmRSS", 0))
            self.samples += 1
            await asyncio.sleep(SAMPLE_S)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self.max_rss = max(self.max_rss, proc_status(self.pid).get("VmRSS", 0))


class BigStudy(DataSet):
    """One CT study of ``slices`` instances sharing one pixel array."""

    def __init__(self, seed: int, slices: int) -> None:
        super().__init__(seed, ct_studies=1, ct_slices=slices, tiny=0)
        self._pixels: np.ndarray | None = None

    def instances(self) -> list[Inst]:
        study, series = self.uid("mem-study"), self.uid("mem-series")
        return [Inst("mem_ct", i, study, series, self.uid("mem-sop", i), f"{self.prefix}-MEM",
                     "Bench^Memory", "ISO_IR 100", "20260102", "100000", f"{self.prefix}MEM",
                     "CT", 1, i + 1, CT_SIZE, CT_SIZE) for i in range(self.ct_slices)]

    def stored_pixels(self, inst: Inst) -> np.ndarray:
        if self._pixels is None:
            self._pixels = super().stored_pixels(inst)
        return self._pixels


async def _store(target: Target, ds: BigStudy, insts: list[Inst], per_request: int,
                 concurrency: int, log: Callable[[str], None]) -> tuple[dict[str, str], dict]:
    """STOW the study, building each request's bytes just before it is sent."""
    by_sha: dict[str, str] = {}
    batches = [insts[k:k + per_request] for k in range(0, len(insts), per_request)]
    headers = {"Content-Type": STOW_TYPE, "Accept": DICOM_JSON, **IDENTITY}

    async def request(i: int):
        batch = batches[i]
        parts = [ds.build(x) for x in batch]
        body = multipart_body(parts, BOUNDARY)
        async with target.session.post(target.url + "/studies", data=body,
                                       headers=headers) as resp:
            answer, status = await resp.read(), resp.status

        def check() -> None:
            V.check_stow(status, answer, {x.sop for x in batch})
            for x in batch:
                by_sha[x.sha256] = x.sop
        return len(body), check

    m = await run_closed_loop(len(batches), concurrency, request)
    row = row_from("memory_load", m, rep=1, instances=len(insts))
    # A batch lost to a transport error (a server closing a kept-alive connection) is
    # sent once more, alone: the phase measures memory, not STOW.
    stored = set(by_sha.values())
    batches = [b for b in batches if not {x.sop for x in b} <= stored]
    if batches:
        log(f"  {target.name}: {len(batches)} STOW request(s) failed "
            f"({row['error_sample'][:80]}); sent again")
        retry = await run_closed_loop(len(batches), 1, request)
        row["retried"] = len(batches)
        row["retry_errors"] = len(retry.errors)
    log(f"  {target.name}: stored {len(by_sha)} / {len(insts)} instances "
        f"({row['bytes'] / 1e9:.2f} GB, {row['mb_s']} MB/s)")
    return by_sha, row


async def measure(target: Target, *, size_mb: int, concurrency: int, requests: int,
                  seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Store the study on ``target`` and measure its process while it is retrieved."""
    assert target.pid is not None, "memory needs the server's process id"
    slice_bytes = len(BigStudy(seed, 1).build(BigStudy(seed, 1).instances()[0]))
    slices = max(1, math.ceil(size_mb * 1e6 / slice_bytes))
    ds = BigStudy(seed, slices)
    insts = ds.instances()
    target.session = new_session(max(concurrency, 4))
    try:
        by_sha, load = await _store(target, ds, insts, 8, 4, log)
        if len(by_sha) != len(insts):
            raise RuntimeError(f"{target.name}: STOW failed ({load['error_sample']})")
        study = insts[0].study
        expected = set(by_sha.values())
        await asyncio.sleep(1.0)
        before = proc_status(target.pid)
        peak_reset = reset_peak(target.pid)
        sampler = RssSampler(target.pid)
        sampler.start()

        async def request(i: int):
            status, parts, total = await fetch_multipart(
                target.session, f"{target.url}/studies/{study}", ACCEPT_STUDY, None)

            def check() -> None:
                V.check_status(status)
                V.check_instances(parts, expected, by_sha)
            return total, check

        t0 = time.monotonic()
        m = await run_closed_loop(requests, concurrency, request)
        await sampler.stop()
        after = proc_status(target.pid)
        processes = per_process(target.pid)
    finally:
        await target.session.close()
    row = row_from("memory_wado_study", m, rep=1)
    hwm = after.get("VmHWM", 0)
    row.update({
        "study_bytes": sum(x.size for x in insts), "instances": len(insts),
        "rss_before_mb": round(before.get("VmRSS", 0) / 2**20, 1),
        "rss_max_sampled_mb": round(sampler.max_rss / 2**20, 1),
        "hwm_mb": round(hwm / 2**20, 1), "hwm_reset": peak_reset,
        "hwm_before_reset_mb": round(before.get("VmHWM", 0) / 2**20, 1),
        "rss_after_mb": round(after.get("VmRSS", 0) / 2**20, 1),
        "samples": sampler.samples, "seconds": round(time.monotonic() - t0, 1),
        "processes": [{"pid": p, "rss_mb": round(r, 1), "hwm_mb": round(h, 1),
                       "pss_mb": round(x, 1)} for p, r, h, x in processes],
    })
    log(f"  {target.name}: {requests} x {row['study_bytes'] / 1e9:.2f} GB at c={concurrency}: "
        f"{row['mb_s']} MB/s, verified={row['verified']}, RSS before {row['rss_before_mb']} "
        f"MiB, peak {max(row['hwm_mb'] if peak_reset else 0, row['rss_max_sampled_mb'])} MiB")
    return {"load": load, "retrieve": row}


def markdown(results: dict[str, dict], command: str, machine: str) -> str:
    lines = ["## Memory: peak RSS during a whole-study retrieval (issue 6 item 4)", "",
             f"- **Command:** `{command}`", f"- **Machine:** {machine}", "",
             "Peak = VmHWM after resetting it (`/proc/PID/clear_refs` = 5) just before the "
             "retrieval, and the largest VmRSS sampled every 50 ms; RSS before = after "
             "storing the study. Every answer verified (all instances, sha256 of each).", "",
             "| server | study | requests x c | MB/s | verified | RSS before MiB | "
             "peak RSS MiB (HWM / sampled) | RSS after MiB | target |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "retrieve" not in r:
            lines.append(f"| {name} | n/a: {r.get('error', '?')[:100]} |" + " |" * 7)
            continue
        w = r["retrieve"]
        peak = max(w["hwm_mb"] if w["hwm_reset"] else 0, w["rss_max_sampled_mb"])
        status = ("met" if peak < 400 else "NOT met") if name == "pacsd" else "-"
        lines.append(
            f"| {name} | {w['study_bytes'] / 1e9:.2f} GB, {w['instances']} inst. | "
            f"{w['requests']} x {w['concurrency']} | {w['mb_s']} | "
            f"{'yes' if w['verified'] else 'NO: ' + w['error_sample'][:80]} | "
            f"{w['rss_before_mb']} | {w['hwm_mb'] if w['hwm_reset'] else 'n/a'} / "
            f"{w['rss_max_sampled_mb']} | {w['rss_after_mb']} | "
            f"{'< 400 MB: ' + status if name == 'pacsd' else '-'} |")
    for name, r in results.items():
        procs = r.get("retrieve", {}).get("processes") or []
        if len(procs) > 1:
            lines += ["", f"{name} per process at the end (the supervisor first; the table "
                      "sums them, counting pages shared after fork in each): " + "; ".join(
                          f"RSS {p['rss_mb']} / peak {p['hwm_mb']} / PSS {p['pss_mb']} MiB"
                          for p in procs) + f"; PSS total {sum(p['pss_mb'] for p in procs):.1f}"
                      " MiB."]
    return "\n".join(lines) + "\n"
