"""Mixed-load soak for memory growth (issue 6, Deliver item 4: "no growth over the soak").

    python -m benchmarks soak [--minutes 10] [--concurrency 4] [--slices 40]

Starts ``pacsd serve`` on loopback (fresh data directory), stores ``--ct-studies`` CT
studies of ``--slices`` 512 x 512 x 16-bit slices through STOW-RS, then for ``--minutes``
runs a mixed closed-loop load at ``--concurrency``: each request takes the next operation
of a fixed rotation (:data:`ROTATION`) —

* ``stow``: a fresh tiny study (5 instances, 2 series, names in ASCII / GB18030 / UTF-8),
* ``qido_patient`` / ``qido_accession``: studies of an acknowledged patient / accession,
* ``metadata_ct`` / ``metadata_tiny``: series metadata of a CT series / of one of the tiny
  series stored so far (new series keep arriving, so the metadata cache keeps filling),
  ``metadata_study`` (``--rotation metadata`` only): study metadata of a tiny study,
* ``frame``: frame 1 of a CT slice, ``rendered``: a CT slice as JPEG,
* ``wado_study``: a whole CT study as stored, streamed.

Every answer is verified exactly as in the side-by-side phases (exact UID sets, byte-exact
instances and frames, rendered images that show the right slice). A thread samples the
server's ``VmRSS`` (and open file descriptors) every second. Reported: RSS after setup,
peak (largest sample and VmHWM), RSS at the end, and the least-squares RSS slope over the
last two thirds of the run in MiB/min — growth is judged by that slope, knowing the two
bounded caches of ``pacsd/services/retrieve.py`` (64 MiB series/study metadata answers,
32 MiB rendered images) may still be filling: with every RSS sample the sampler reads the
caches' real sizes from the server's ``GET /api/v1/admin/metrics`` (bytes and entries;
loopback, security off, so the local operator may) and reports the slope of RSS minus
those bytes. The driver's own estimate (the bodies of the distinct metadata and rendered
answers it received, each capped like the caches) is still reported beside it.
"""
from __future__ import annotations

import asyncio
import json
import os
import statistics
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from . import verify as V
from .client import MultipartStream, boundary_of, new_session, percentile
from .dataset import DataSet, Inst, Manifest, multipart_body
from .memory import proc_status
from .procstat import server_pids
from .phases import (ACCEPT_FRAME, ACCEPT_STUDY, BOUNDARY, DICOM_JSON, IDENTITY, STOW_TYPE,
                     fetch_multipart)

# One STOW per ten requests; reads dominate as in a reading room.
ROTATION = ("stow", "qido_patient", "metadata_tiny", "frame", "qido_accession",
            "metadata_ct", "frame", "rendered", "qido_patient", "wado_study")
#: ``--rotation``: ``standard`` (above); ``metadata``: two STOWs per 13 requests, each
#: followed by series metadata of its two series and study metadata of the study
#: (``metadata_study``: all of them are new cache entries), so the 64 MiB metadata cache
#: fills up within a 40-minute soak on this loaded 2-core machine and the slope after it
#: is full can be judged.
ROTATIONS = {
    "standard": ROTATION,
    "metadata": ("stow", "metadata_tiny", "metadata_study", "metadata_tiny", "frame",
                 "stow", "metadata_tiny", "metadata_study", "metadata_tiny", "rendered",
                 "qido_patient", "metadata_ct", "wado_study"),
}
SAMPLE_S = 1.0
# The caps of pacsd/services/retrieve.py (values only; keys and entries cost a little more).
METADATA_CACHE_BYTES = 64 * 2**20
RENDER_CACHE_BYTES = 32 * 2**20
# Tiny studies of the soak are numbered from here, away from the standard tiny set.
FIRST_STUDY = 500_000


class Sampler(threading.Thread):
    """VmRSS (bytes) and open fds of ``pid`` every :data:`SAMPLE_S` seconds, on a thread
    of its own so a busy event loop in the driver does not skew the time axis; with
    ``metrics_url`` also the server's cache sizes (``GET /api/v1/admin/metrics``), read
    right after the RSS so the two belong together."""

    def __init__(self, pid: int, cache_estimate: Callable[[], int] = lambda: 0,
                 metrics_url: str | None = None) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.cache_estimate = cache_estimate
        self.metrics_url = metrics_url
        self.t0 = time.monotonic()
        self.rss: list[tuple[float, int]] = []
        self.cache: list[tuple[float, int]] = []        # the driver's estimate
        self.cached: list[tuple[float, int | None]] = []  # the server's (None: unread)
        self.entries: list[tuple[float, int, int]] = []  # metadata, render entries
        self.meta_cached: list[tuple[float, int]] = []   # the metadata cache's bytes
        self.metrics_errors = 0
        self.fds: list[tuple[float, int]] = []
        self._halt = threading.Event()
        self._last: dict[int, dict] = {}   # worker pid -> its latest cache sizes

    def read_metrics(self) -> dict | None:
        """The server's cache sizes, summed over its worker processes: each metrics
        request is answered by one worker (its own caches, and its ``pid``), so up to
        four requests per worker are made, on new connections, until every current
        worker answered; a worker that did not answer this time counts with its last
        answer. None when no request succeeded."""
        if not self.metrics_url:
            return None
        workers = set(server_pids(self.pid)[1:]) or {self.pid}
        seen: set[int] = set()
        for _ in range(4 * len(workers)):
            try:
                with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
                    m = json.loads(r.read())
            except (OSError, ValueError):
                self.metrics_errors += 1
                continue
            self._last[m.get("pid", self.pid)] = m["caches"]
            seen.add(m.get("pid", self.pid))
            if workers <= seen:
                break
        if not seen:
            return None
        live = [c for pid, c in self._last.items() if pid in workers or pid == self.pid]
        return {"caches": {k: {f: sum(c[k][f] for c in live) for f in ("bytes", "entries")}
                           for k in ("metadata", "render")}}

    def sample(self) -> None:
        t = time.monotonic() - self.t0
        self.rss.append((t, proc_status(self.pid).get("VmRSS", 0)))
        self.cache.append((t, self.cache_estimate()))
        m = self.read_metrics()
        if m is not None:
            caches = m["caches"]
            self.cached.append((t, caches["metadata"]["bytes"] + caches["render"]["bytes"]))
            self.entries.append((t, caches["metadata"]["entries"],
                                 caches["render"]["entries"]))
            self.meta_cached.append((t, caches["metadata"]["bytes"]))
        elif self.metrics_url:
            self.cached.append((t, None))
        try:
            self.fds.append((t, len(os.listdir(f"/proc/{self.pid}/fd"))))
        except OSError:
            pass

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_S):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.sample()


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, in value per minute."""
    if len(points) < 2:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if not sxx:
        return 0.0
    return 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


class Soak:
    """The mixed load against one pacsd: what was acknowledged and what each read expects."""

    def __init__(self, url: str, seed: int, ct_studies: int, slices: int,
                 log: Callable[[str], None], rotation: tuple[str, ...] = ROTATION) -> None:
        self.url = url
        self.rotation = rotation
        self.ds = DataSet(seed, ct_studies=ct_studies, ct_slices=slices, tiny=0)
        self.log = log
        self.manifest = Manifest()
        self.payload: dict[str, bytes] = {}
        self.ct: list[Inst] = []
        self.render_cache: dict[str, Any] = {}
        self.next_study = FIRST_STUDY
        self.tiny_studies: dict[int, list[Inst]] = {}    # study number -> its instances
        self.tiny_series: list[tuple[str, str, dict[str, Inst]]] = []
        self.tiny_study_list: list[tuple[str, dict[str, Inst]]] = []
        self.patients_done: list[int] = []               # both studies acknowledged
        self.accessions: list[tuple[str, str]] = []      # (accession, study UID)
        self.stats: dict[str, dict[str, Any]] = {}
        self.session = None
        # Body sizes of the distinct answers the server may keep in its two bounded caches
        # (series metadata by series, rendered by slice): the driver's estimate of what
        # those caches hold, capped at their sizes.
        self.meta_bytes: dict[str, int] = {}
        self.render_bytes: dict[str, int] = {}
        self._meta_total = 0
        self._render_total = 0

    def note_cached(self, table: dict[str, int], key: str, size: int, meta: bool) -> None:
        delta = size - table.get(key, 0)
        table[key] = size
        if meta:
            self._meta_total += delta
        else:
            self._render_total += delta

    def cache_estimate(self) -> int:
        return (min(self._meta_total, METADATA_CACHE_BYTES)
                + min(self._render_total, RENDER_CACHE_BYTES))

    # --- setup -------------------------------------------------------------------------------
    async def setup(self) -> None:
        self.ct = self.ds.ct_main()
        for k in range(0, len(self.ct), 8):
            batch = self.ct[k:k + 8]
            parts = [self.ds.build(i) for i in batch]
            body = multipart_body(parts, BOUNDARY)
            async with self.session.post(self.url + "/studies", data=body, headers={
                    "Content-Type": STOW_TYPE, "Accept": DICOM_JSON, **IDENTITY}) as r:
                answer, status = await r.read(), r.status
            V.check_stow(status, answer, {i.sop for i in batch})
            for i, p in zip(batch, parts):
                self.manifest.add(i)
                self.payload[i.sop] = p
        self.ct_series = sorted({(i.study, i.series) for i in self.ct})
        self.ct_studies = sorted({i.study for i in self.ct})
        self.expect_study = {s: self.manifest.instances_of(s) for s in self.ct_studies}
        self.expect_series = {se: {i.sop: i for i in self.ct if i.series == se}
                              for _, se in self.ct_series}
        # A first tiny study pair so every read has something to read.
        for _ in range(2):
            (await self.op_stow(0))()

    # --- operations --------------------------------------------------------------------------
    async def op_stow(self, i: int) -> Callable[[], None]:
        j = self.next_study
        self.next_study += 1
        insts = self.ds.tiny_range(j, 1)
        body = multipart_body([self.ds.build(x) for x in insts], BOUNDARY)
        async with self.session.post(self.url + "/studies", data=body, headers={
                "Content-Type": STOW_TYPE, "Accept": DICOM_JSON, **IDENTITY}) as r:
            answer, status = await r.read(), r.status

        def check() -> None:
            V.check_stow(status, answer, {x.sop for x in insts})
            self.tiny_studies[j] = insts
            for se in sorted({x.series for x in insts}):
                self.tiny_series.append((insts[0].study, se,
                                         {x.sop: x for x in insts if x.series == se}))
            self.accessions.append((insts[0].accession, insts[0].study))
            self.tiny_study_list.append((insts[0].study, {x.sop: x for x in insts}))
            pair = (j // 2) * 2
            if pair in self.tiny_studies and pair + 1 in self.tiny_studies:
                self.patients_done.append(j // 2)
        return check

    async def _json(self, path: str, params: dict | None = None) -> tuple[int, bytes]:
        async with self.session.get(self.url + path, params=params, headers={
                "Accept": DICOM_JSON, **IDENTITY}) as r:
            return r.status, await r.read()

    async def op_qido_patient(self, i: int) -> Callable[[], None]:
        p = self.patients_done[(i * 7919) % len(self.patients_done)]
        studies = self.tiny_studies[2 * p] + self.tiny_studies[2 * p + 1]
        status, body = await self._json("/studies", {"PatientID": studies[0].patient_id})
        want = {x.study for x in studies}
        return lambda: V.check_uid_set(V.qido_items(status, body), V.STUDY_UID, want)

    async def op_qido_accession(self, i: int) -> Callable[[], None]:
        acc, study = self.accessions[(i * 104729) % len(self.accessions)]
        status, body = await self._json("/studies", {"AccessionNumber": acc})
        return lambda: V.check_uid_set(V.qido_items(status, body), V.STUDY_UID, {study})

    async def op_metadata_ct(self, i: int) -> Callable[[], None]:
        study, se = self.ct_series[i % len(self.ct_series)]
        status, body = await self._json(f"/studies/{study}/series/{se}/metadata")

        def check() -> None:
            V.check_status(status)
            V.check_metadata(V.parse_json(body), self.expect_series[se])
            self.note_cached(self.meta_bytes, se, len(body), True)
        return check

    async def _metadata(self, path: str, expected: dict[str, Inst], key: str
                        ) -> Callable[[], None]:
        status, body = await self._json(path + "/metadata")

        def check() -> None:
            V.check_status(status)
            V.check_metadata(V.parse_json(body), expected)
            self.note_cached(self.meta_bytes, key, len(body), True)
        return check

    async def op_metadata_tiny(self, i: int) -> Callable[[], None]:
        # Mostly the newest series (a cache miss each time, as after ingest), sometimes old.
        n = len(self.tiny_series)
        k = n - 1 - (i % 4) if i % 3 else (i * 7919) % n
        study, se, expected = self.tiny_series[max(0, k)]
        return await self._metadata(f"/studies/{study}/series/{se}", expected, se)

    async def op_metadata_study(self, i: int) -> Callable[[], None]:
        # Mostly one of the two newest studies, sometimes an old one.
        n = len(self.tiny_study_list)
        k = n - 1 - (i % 2) if i % 3 else (i * 7919) % n
        study, expected = self.tiny_study_list[max(0, k)]
        return await self._metadata(f"/studies/{study}", expected, study)

    async def op_frame(self, i: int) -> Callable[[], None]:
        inst = self.ct[(i * 37) % len(self.ct)]
        url = (f"{self.url}/studies/{inst.study}/series/{inst.series}/instances/"
               f"{inst.sop}/frames/1")
        async with self.session.get(url, headers={"Accept": ACCEPT_FRAME, **IDENTITY}) as r:
            body, status, ctype = await r.read(), r.status, r.headers.get("Content-Type", "")

        def check() -> None:
            V.check_status(status)
            nbytes = inst.rows * inst.columns * 2
            pixels = self.payload[inst.sop][-nbytes:]
            stream = MultipartStream(boundary_of(ctype), lookup=lambda head: ("frame", pixels))
            stream.feed(body)
            V.check_frame(stream.close(), inst.pixel_sha256, nbytes)
        return check

    async def op_rendered(self, i: int) -> Callable[[], None]:
        inst = self.ct[(i * 13) % len(self.ct)]
        url = (f"{self.url}/studies/{inst.study}/series/{inst.series}/instances/"
               f"{inst.sop}/rendered")
        async with self.session.get(url, headers={"Accept": "image/jpeg", **IDENTITY}) as r:
            body, status = await r.read(), r.status

        def expected(_number: int):
            if inst.sop not in self.render_cache:
                self.render_cache[inst.sop] = self.ds.expected_render(inst)
            return self.render_cache[inst.sop]

        def check() -> None:
            V.check_status(status)
            V.check_image(body, expected, inst.instance_number)
            self.note_cached(self.render_bytes, inst.sop, len(body), False)
        return check

    async def op_wado_study(self, i: int) -> Callable[[], None]:
        study = self.ct_studies[i % len(self.ct_studies)]
        status, parts, _ = await fetch_multipart(
            self.session, f"{self.url}/studies/{study}", ACCEPT_STUDY,
            V.instance_lookup(self.payload))

        def check() -> None:
            V.check_status(status)
            V.check_instances(parts, self.expect_study[study], self.manifest.by_sha)
        return check

    # --- the loop ----------------------------------------------------------------------------
    async def run(self, seconds: float, concurrency: int) -> float:
        import aiohttp

        counter = iter(range(10**12))
        deadline = time.monotonic() + seconds
        rotation = self.rotation
        seq: dict[str, int] = {}   # the k-th request of each operation gets k

        async def worker() -> None:
            for i in counter:
                if time.monotonic() >= deadline:
                    return
                op = rotation[i % len(rotation)]
                k = seq[op] = seq.get(op, -1) + 1
                st = self.stats.setdefault(op, {"n": 0, "errors": 0, "error_sample": "",
                                                "lat_ms": []})
                t0 = time.perf_counter()
                try:
                    check = await getattr(self, "op_" + op)(k)
                    st["lat_ms"].append((time.perf_counter() - t0) * 1000)
                    check()
                except (V.VerificationError, aiohttp.ClientError, asyncio.TimeoutError,
                        OSError) as exc:
                    st["errors"] += 1
                    st["error_sample"] = st["error_sample"] or f"{type(exc).__name__}: {exc}"
                st["n"] += 1

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - t0


async def soak(url: str, pid: int, *, minutes: float, concurrency: int, seed: int,
               ct_studies: int, slices: int, log: Callable[[str], None],
               rotation: str = "standard") -> dict[str, Any]:
    s = Soak(url, seed, ct_studies, slices, log, ROTATIONS[rotation])
    s.session = new_session(max(concurrency, 4))
    try:
        await s.setup()
        log(f"  stored {len(s.ct)} CT slices; soak of {minutes} min at c={concurrency}")
        await asyncio.sleep(1.0)
        setup_rss = proc_status(pid)
        base = url.rsplit("/dicom-web", 1)[0]
        sampler = Sampler(pid, s.cache_estimate, metrics_url=base + "/api/v1/admin/metrics")
        sampler.sample()
        sampler.start()
        progress = asyncio.get_running_loop().create_task(_progress(s, sampler, log))
        try:
            wall = await s.run(minutes * 60, concurrency)
        finally:
            progress.cancel()
            sampler.stop()
    finally:
        await s.session.close()
    end = proc_status(pid)
    rss = [(t, b / 2**20) for t, b in sampler.rss]
    tail = [(t, v) for t, v in rss if t >= wall / 3]
    # RSS less what the bounded caches hold (the server's own figure; the driver's
    # estimate beside it): growth the caps do not explain.
    rest_all = [(t, v - c / 2**20) for (t, v), (_, c) in zip(rss, sampler.cached)
                if c is not None]
    rest = [(t, v) for t, v in rest_all if t >= wall / 3]
    rest_est = [(t, v - c / 2**20) for (t, v), (_, c) in zip(rss, sampler.cache)
                if t >= wall / 3]
    cached_mb = [(t, c / 2**20) for t, c in sampler.cached if c is not None]
    third = [c for t, c in cached_mb if wall / 3 <= t < wall / 3 + 30]
    last = sampler.entries[-1] if sampler.entries else (0, None, None)
    full_at = next((t for t, c in sampler.meta_cached if c >= 0.98 * METADATA_CACHE_BYTES),
                   None)
    mid = [(t, v) for t, v in rss if wall / 3 <= t < wall / 3 + 30]
    ops = {}
    for op, st in sorted(s.stats.items()):
        lat = st.pop("lat_ms")
        ops[op] = {**st, "p50_ms": round(percentile(lat, 50), 2) if lat else None,
                   "p95_ms": round(percentile(lat, 95), 2) if lat else None}
    return {
        "minutes": minutes, "concurrency": concurrency, "wall_s": round(wall, 1),
        "rotation": rotation, "rotation_ops": list(ROTATIONS[rotation]),
        "ct_slices": len(s.ct), "tiny_studies_stored": len(s.tiny_studies),
        "requests": sum(o["n"] for o in ops.values()),
        "errors": sum(o["errors"] for o in ops.values()),
        "verified": all(o["errors"] == 0 for o in ops.values()) and bool(ops),
        "ops": ops,
        "rss_setup_mb": round(setup_rss.get("VmRSS", 0) / 2**20, 1),
        "rss_at_third_mb": round(statistics.median(v for _, v in mid), 1) if mid else None,
        "rss_end_mb": round(end.get("VmRSS", 0) / 2**20, 1),
        "rss_peak_sampled_mb": round(max(v for _, v in rss), 1),
        "hwm_mb": round(end.get("VmHWM", 0) / 2**20, 1),
        "slope_mb_per_min": round(slope_per_min(tail), 2),
        "slope_less_caches_mb_per_min": round(slope_per_min(rest), 2) if rest else None,
        "slope_less_cache_estimate_mb_per_min": round(slope_per_min(rest_est), 2),
        "cached_at_third_mb": round(statistics.median(third), 1) if third else None,
        "cached_end_mb": round(cached_mb[-1][1], 1) if cached_mb else None,
        "cached_peak_mb": round(max(c for _, c in cached_mb), 1) if cached_mb else None,
        "caches_full_at_s": round(full_at, 1) if full_at is not None else None,
        # Once the metadata cache is at its cap its size is constant: from then on RSS
        # should be flat if nothing else grows.
        "slope_after_full_mb_per_min": round(slope_per_min(
            [(t, v) for t, v in rss if t >= full_at]), 2) if full_at is not None else None,
        "slope_after_full_less_caches_mb_per_min": round(slope_per_min(
            [(t, v) for t, v in rest_all if t >= full_at]), 2) if full_at is not None else None,
        "minutes_after_full": round((rss[-1][0] - full_at) / 60, 1)
        if full_at is not None and rss else None,
        "metadata_entries_end": last[1], "render_entries_end": last[2],
        "metrics_errors": sampler.metrics_errors,
        "cache_estimate_end_mb": round(s.cache_estimate() / 2**20, 1),
        "metadata_answers_distinct": len(s.meta_bytes),
        "metadata_answer_bytes_mb": round(s._meta_total / 2**20, 1),
        "rendered_distinct": len(s.render_bytes),
        "slope_first_third_mb_per_min": round(slope_per_min(
            [(t, v) for t, v in rss if t < wall / 3]), 2),
        "fds_start": sampler.fds[0][1] if sampler.fds else None,
        "fds_end": sampler.fds[-1][1] if sampler.fds else None,
        "fds_max": max(f for _, f in sampler.fds) if sampler.fds else None,
        "samples": len(rss),
        "rss_series_mb": [(round(t, 1), round(v, 1)) for t, v in rss],
        "cached_series_mb": [(round(t, 1), round(c, 1)) for t, c in cached_mb],
    }


async def _progress(s: Soak, sampler: Sampler, log: Callable[[str], None]) -> None:
    while True:
        await asyncio.sleep(60)
        rss = sampler.rss[-1][1] / 2**20 if sampler.rss else 0
        n = sum(st["n"] for st in s.stats.values())
        e = sum(st["errors"] for st in s.stats.values())
        cached = sampler.cached[-1][1] if sampler.cached else None
        log(f"  {sampler.rss[-1][0] if sampler.rss else 0:.0f} s: {n} requests, {e} errors, "
            f"{len(s.tiny_studies)} tiny studies, RSS {rss:.1f} MiB, cached "
            f"{'?' if cached is None else f'{cached / 2**20:.1f}'} MiB")


def markdown(r: dict, command: str, machine: str) -> str:
    lines = ["## Memory: mixed-load soak (issue 6 item 4)", "",
             f"- **Command:** `{command}`", f"- **Machine:** {machine}", "",
             f"{r['minutes']} minutes at concurrency {r['concurrency']} against one `pacsd "
             f"serve` (SQLite, local blobs) holding {r['ct_slices']} CT slices of 512x512: "
             f"{r['requests']:,} requests in the rotation "
             f"{', '.join(r.get('rotation_ops', ROTATION))}; "
             f"{r['tiny_studies_stored']:,} tiny studies stored during the run. Every answer "
             "verified. VmRSS sampled every second on a thread of the driver; slope = "
             "least-squares fit over the last two thirds of the run.", "",
             "| RSS after setup MiB | RSS at 1/3 MiB | RSS at end MiB | peak RSS MiB "
             "(sampled / VmHWM) | slope last 2/3 MiB/min | same, less cached bytes | "
             "same, less driver's estimate | slope first 1/3 MiB/min | "
             "open fds start / max / end | errors |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| {r['rss_setup_mb']} | {r['rss_at_third_mb']} | {r['rss_end_mb']} | "
             f"{r['rss_peak_sampled_mb']} / {r['hwm_mb']} | **{r['slope_mb_per_min']}** | "
             f"**{r.get('slope_less_caches_mb_per_min')}** | "
             f"{r.get('slope_less_cache_estimate_mb_per_min')} | "
             f"{r['slope_first_third_mb_per_min']} | {r['fds_start']} / {r['fds_max']} / "
             f"{r['fds_end']} | {r['errors']} |", "",
             f"Cached bytes = the server's own figure (`GET /api/v1/admin/metrics`, read "
             f"with every RSS sample; {r.get('metrics_errors')} failed reads): "
             f"{r.get('cached_at_third_mb')} MiB at 1/3, {r.get('cached_end_mb')} MiB at the "
             f"end (peak {r.get('cached_peak_mb')}; caps 64 MiB metadata + 32 MiB rendered; "
             f"metadata cap reached at "
             f"{r.get('caches_full_at_s') if r.get('caches_full_at_s') is not None else 'never'}"
             f"{' s' if r.get('caches_full_at_s') is not None else ''}), "
             f"{r.get('metadata_entries_end')} metadata and {r.get('render_entries_end')} "
             f"rendered entries at the end. After the metadata cap was reached "
             f"({r.get('minutes_after_full')} min): RSS slope "
             f"**{r.get('slope_after_full_mb_per_min')}** MiB/min, less cached bytes "
             f"**{r.get('slope_after_full_less_caches_mb_per_min')}** MiB/min. "
             f"Driver's estimate = the bodies of the distinct "
             f"answers it received, each capped like the caches: "
             f"{r['metadata_answers_distinct']:,} distinct series metadata answers "
             f"({r['metadata_answer_bytes_mb']} MiB of bodies), {r['rendered_distinct']} "
             f"rendered slices; {r['cache_estimate_end_mb']} MiB at the end.", "",
             "| operation | requests | errors | p50 ms | p95 ms |", "|---|---|---|---|---|"]
    for op, o in r["ops"].items():
        lines.append(f"| {op} | {o['n']:,} | {o['errors']}"
                     f"{' (' + o['error_sample'][:80] + ')' if o['errors'] else ''} | "
                     f"{o['p50_ms']} | {o['p95_ms']} |")
    return "\n".join(lines) + "\n"


def write_series(r: dict, path: Path) -> None:
    """The RSS samples as CSV (seconds, MiB) next to the JSON, for plotting."""
    cached = dict(r.get("cached_series_mb", []))
    path.write_text("seconds,rss_mib,cached_mib\n" + "".join(
        f"{t},{v},{cached.get(t, '')}\n" for t, v in r["rss_series_mb"]))
