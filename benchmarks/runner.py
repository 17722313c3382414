"""Orchestration: build the data once, then run every phase on every target.

Targets are interleaved per repetition (A, B, then B, A, ...), so a noisy neighbour on a
shared machine hits both servers alike and the ratios of one run stay meaningful. Every
timed repetition that writes (STOW, C-STORE, C-GET and C-MOVE, whose receivers write
files), and the read phases once, start after ``sync(2)`` (:meth:`Runner._settle`,
untimed): no target pays for the page cache another target, or the driver, left to write
back. Order:

1. preflight (the target must be empty), 2. load the CT read set,
3. STOW CT and tiny at each concurrency, 4. untimed completeness checks (every stored
series recounted through QIDO, paging tiles the answer), 5. QIDO, WADO study, metadata,
frames, rendered, thumbnail, 6. DIMSE with DCMTK (:mod:`benchmarks.dimse`: C-STORE of CT
and tiny files, C-FIND, C-GET and C-MOVE of a CT study) on targets with a DICOM address,
7. optional py-spy profile pass on targets we started, 8. optional client ceiling against
:mod:`benchmarks.stub`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__, phases as P, profiling
from . import verify as V
from .client import Measurement, new_session
from .dataset import DataSet, Inst
from .phases import Target, row_from

OUT = Path(__file__).resolve().parent / "out"


@dataclass
class Config:
    seed: int = 1
    ct_studies: int = 2
    ct_slices: int = 100
    tiny: int = 3000
    stow_ct_batch: int = 48          # CT instances per measured STOW repetition
    ct_per_request: int = 1
    tiny_per_request: int = 5
    reps: int = 3
    stow_levels: tuple[int, ...] = (1, 4, 16)
    qido_levels: tuple[int, ...] = (1, 16)
    wado_levels: tuple[int, ...] = (1, 8)
    qido_n: dict[int, int] = field(default_factory=lambda: {1: 30, 16: 160})
    wado_n: dict[int, int] = field(default_factory=lambda: {1: 4, 8: 8})
    metadata_n: int = 20
    frame_n: int = 60
    render_n: int = 15
    thumb_n: int = 15
    load_concurrency: int = 4
    dimse_tiny: int = 200            # tiny files per measured C-STORE repetition
    dimse_find_n: int = 20           # C-FIND queries per repetition
    dimse_move_port: int = 0         # port of the driver's storescp (0: no C-MOVE phase)
    profile: bool = False
    profile_seconds: float = 6.0
    ceiling: bool = True

    @classmethod
    def smoke(cls, **kw: Any) -> "Config":
        """The smallest useful size: a few seconds per target (tests/bench)."""
        base = dict(ct_studies=1, ct_slices=4, tiny=30, stow_ct_batch=2, tiny_per_request=2,
                    reps=1, stow_levels=(1, 2), qido_levels=(1, 2), wado_levels=(1, 2),
                    qido_n={1: 2, 2: 3}, wado_n={1: 1, 2: 2}, metadata_n=2, frame_n=3,
                    render_n=1, thumb_n=1, load_concurrency=2, ceiling=False,
                    dimse_tiny=10, dimse_find_n=2)
        base.update(kw)
        return cls(**base)


def machine_info() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    import aiohttp
    import numpy
    return {"nproc": os.cpu_count(), "ram": ram, "cpu": cpu, "kernel": platform.release(),
            "python": platform.python_version(), "aiohttp": aiohttp.__version__,
            "numpy": numpy.__version__, "driver": __version__,
            "loadavg_start": os.getloadavg()}


class Runner:
    def __init__(self, cfg: Config, targets: list[Target],
                 log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.targets = targets
        self.log = log
        self.ds = DataSet(cfg.seed, ct_studies=cfg.ct_studies, ct_slices=cfg.ct_slices,
                          tiny=cfg.tiny, stow_ct_batch=cfg.stow_ct_batch)
        self.payload: dict[str, bytes] = {}
        self.render_cache: dict[str, Any] = {}
        self.ceiling: dict = {}
        self.profiles: dict[str, dict] = {}
        self._rep_flip = False

    # --- data ----------------------------------------------------------------------------
    def _built(self, insts: list[Inst]) -> list[tuple[Inst, bytes]]:
        out = []
        for inst in insts:
            data = self.payload.get(inst.sop)
            if data is None:
                data = self.payload[inst.sop] = self.ds.build(inst)
            out.append((inst, data))
        return out

    def prepare(self) -> None:
        t0 = time.perf_counter()
        c = self.cfg
        self.ct_main = self._built(self.ds.ct_main())
        self.stow_ct = {(lv, r): self._built(self.ds.stow_ct(f"c{lv}r{r}"))
                        for lv in c.stow_levels for r in range(c.reps)}
        tiny = self._built(self.ds.tiny_all())
        chunks = len(c.stow_levels) * c.reps
        size = -(-len(tiny) // chunks) if tiny else 0
        self.stow_tiny = {}
        k = 0
        for lv in c.stow_levels:
            for r in range(c.reps):
                self.stow_tiny[(lv, r)] = tiny[k * size:(k + 1) * size]
                k += 1
        mb = sum(len(b) for b in self.payload.values()) / 1e6
        self.log(f"data set: {len(self.payload)} instances, {mb:.0f} MB, built in "
                 f"{time.perf_counter() - t0:.1f} s")

    # --- helpers -------------------------------------------------------------------------
    def _order(self) -> list[Target]:
        self._rep_flip = not self._rep_flip
        return self.targets if self._rep_flip else list(reversed(self.targets))

    async def _settle(self) -> None:
        """Untimed: flush every dirty page to disk before a timed repetition. Writeback is
        deferred up to 30 s (vm.dirty_expire_centisecs), so without this the files one
        target (or getscu / storescp, which do not fsync) left in the page cache are
        written while the next target is timed: pacsd's STOW tiny at c=1 measured 219
        inst/s in the repetition right after the STOW CT phase against 521 and 440 in the
        next two (session 11)."""
        await asyncio.to_thread(os.sync)

    def _record(self, t: Target, phase: str, m: Measurement, rep: int, **kw: Any) -> dict:
        row = row_from(phase, m, rep=rep, **kw)
        row["loadavg_1m"] = round(os.getloadavg()[0], 2)  # noise indicator per row
        t.rows.append(row)
        flag = "ok" if row["verified"] else f"WRONG/FAILED ({row['errors']}: {row['error_sample'][:120]})"
        main = (f"{row['mb_s']:.1f} MB/s" if phase.startswith(
            ("stow", "wado", "load", "dimse_store", "dimse_get", "dimse_move"))
                else f"p50 {row['p50_ms']:.2f} ms, {row['qps']:.0f} q/s")
        self.log(f"  {t.name:8s} {phase:28s} c={m.concurrency:<3d} rep {rep}: {main}"
                 f"{', %.0f inst/s' % row['inst_s'] if 'inst_s' in row else ''} [{flag}]")
        return row

    # --- the run -------------------------------------------------------------------------
    async def run(self) -> dict:
        self.prepare()
        started = time.time()
        self.load_start = os.getloadavg()
        for t in self.targets:
            t.session = new_session(32)
        try:
            for t in self.targets:
                await self._preflight(t)
            await self._ingest()
            for t in self.targets:
                await self._completeness(t)
            await self._reads()
            await self._dimse()
            if self.cfg.profile:
                await self._profile()
        finally:
            for t in self.targets:
                if t.session is not None:
                    await t.session.close()
                    t.session = None
        if self.cfg.ceiling:
            from .ceiling import measure_ceiling
            self.ceiling = await measure_ceiling(self.cfg, self.log)
        return self.result(started)

    async def _preflight(self, t: Target) -> None:
        """The target must be empty: expected answers of name, date and modality queries
        count only this run's data."""
        try:
            async with t.session.get(t.url + "/studies", headers={"Accept": P.DICOM_JSON},
                                     params={"limit": "1"}) as resp:
                items = V.qido_items(resp.status, await resp.read())
        except V.VerificationError as exc:
            raise RuntimeError(f"{t.name}: {t.url}/studies does not answer QIDO-RS ({exc})"
                               ) from None
        if items:
            raise RuntimeError(f"{t.name} already holds studies; the expected answers assume "
                               "an empty archive: use a fresh server")

    async def _ingest(self) -> None:
        c = self.cfg
        self.log("load: CT read set")
        for t in self.targets:
            batches = P.batched(self.ct_main, c.ct_per_request)
            await self._settle()
            m = await P.stow(t, batches, c.load_concurrency)
            self._record(t, "load_ct", m, 0, instances=len(self.ct_main))
        for kind, data, per in (("stow_ct", self.stow_ct, c.ct_per_request),
                                ("stow_tiny", self.stow_tiny, c.tiny_per_request)):
            self.log(f"{kind}: {per} instance(s) per request")
            for lv in c.stow_levels:
                for r in range(c.reps):
                    items = data[(lv, r)]
                    if not items:
                        continue
                    for t in self._order():
                        await self._settle()
                        m = await P.stow(t, P.batched(items, per), lv)
                        self._record(t, kind, m, r, instances=len(items))

    async def _completeness(self, t: Target) -> None:
        """Untimed: recount every stored series through QIDO (nothing lost, nothing
        extra), and check that paging tiles the answer."""
        book = P.QueryBook(t.manifest)
        bad = []
        series = sorted({(i.study, i.series) for i in t.manifest.by_sop.values()})
        sem = asyncio.Semaphore(8)

        async def one(study: str, se: str) -> None:
            async with sem:
                try:
                    async with t.session.get(
                            f"{t.url}/studies/{study}/series/{se}/instances",
                            headers={"Accept": P.DICOM_JSON}) as resp:
                        items = V.qido_items(resp.status, await resp.read())
                    V.check_uid_set(items, V.SOP_INSTANCE_UID, book.sops_of[se])
                except Exception as exc:  # noqa: BLE001 - reported, not raised
                    bad.append(f"series {se[-12:]}: {exc}")
        await asyncio.gather(*(one(s, se) for s, se in series))
        t.checks.append({"check": f"recount of {len(series)} series / "
                                  f"{len(t.manifest.by_sop)} acknowledged instances",
                         "ok": not bad, "error": "; ".join(bad[:5])})
        t.checks.append(await P.walk_pages(t, book))
        for chk in t.checks[-2:]:
            self.log(f"  {t.name:8s} check: {chk['check']}: "
                     f"{'ok' if chk['ok'] else 'FAILED ' + chk.get('error', '')}")

    async def _reads(self) -> None:
        c = self.cfg
        books = {t.name: P.QueryBook(t.manifest) for t in self.targets}
        await self._settle()
        self.log("qido")
        for kind in P.QIDO_KINDS:
            for lv in c.qido_levels:
                for r in range(c.reps):
                    for t in self._order():
                        m = await P.qido(t, books[t.name], kind, c.qido_n[lv], lv,
                                         offset=r * c.qido_n[lv])
                        self._record(t, f"qido_{kind}", m, r)
        studies = sorted({i.study for i, _ in self.ct_main})
        self.log("wado-rs whole study (as stored)")
        for lv in c.wado_levels:
            for r in range(c.reps):
                for t in self._order():
                    m = await P.wado_study(t, studies, max(c.wado_n[lv], lv), lv, self.payload)
                    self._record(t, "wado_study", m, r)
        ct_series = sorted({(i.study, i.series) for i, _ in self.ct_main})
        self.log(f"series metadata ({c.ct_slices} instances)")
        for gz in (False, True):
            for r in range(c.reps):
                for t in self._order():
                    m = await P.metadata(t, ct_series, c.metadata_n, gzip=gz)
                    self._record(t, "metadata_series" + ("_gzip" if gz else ""), m, r)
        insts = [i for i, _ in self.ct_main]
        self.log("frames, rendered, thumbnail")
        for r in range(c.reps):
            for t in self._order():
                self._record(t, "frame", await P.frames(t, insts, c.frame_n, self.payload), r)
        few = insts[:: max(1, len(insts) // 8)][:8]
        for r in range(c.reps):
            for t in self._order():
                m = await P.rendered(t, self.ds, few, c.render_n, self.render_cache)
                self._record(t, "rendered", m, r)
        members = [(study, se, [i for i in insts if i.series == se])
                   for study, se in ct_series]
        for r in range(c.reps):
            for t in self._order():
                m = await P.thumbnail(t, self.ds, members, c.thumb_n, self.render_cache)
                self._record(t, "thumbnail", m, r)

    # --- DIMSE ---------------------------------------------------------------------------
    async def _dimse(self) -> None:
        from . import dimse as D
        targets = [t for t in self.targets if t.dicom is not None]
        if not targets:
            return
        missing = D.missing_tools()
        if missing:
            raise RuntimeError(f"DIMSE phases need DCMTK ({', '.join(missing)} missing): "
                               "apt-get install dcmtk")
        c = self.cfg
        scp = None
        if c.dimse_move_port:
            scp = await asyncio.to_thread(D.StoreSCP, c.dimse_move_port)
        try:
            self.log(f"dimse c-store: {c.stow_ct_batch} CT / {c.dimse_tiny} tiny files, "
                     "one storescu association each")
            for r in range(c.reps):
                for t in self._order():
                    k = self.targets.index(t)
                    ct = self._built(self.ds.stow_ct(f"dimse-{t.name}-{r}"))
                    first = (c.tiny + 4) // 5 + 20000 * (k + 1) + 500 * r
                    tiny = self._built(self.ds.tiny_range(first, -(-c.dimse_tiny // 5),
                                                          limit=first * 5 + c.dimse_tiny))
                    for phase, items in (("dimse_store_ct", ct), ("dimse_store_tiny", tiny)):
                        await self._settle()
                        m = await asyncio.to_thread(
                            D.store, t.dicom, [(i.sop, b) for i, b in items])
                        await self._verify_stored(t, m, [i for i, _ in items])
                        self._record(t, phase, m, r, instances=len(items))
            self.log("dimse c-find: study level by PatientID, one findscu run per query")
            pids = sorted({i.patient_id for t in targets for i in t.manifest.by_sop.values()})
            for r in range(c.reps):
                for t in self._order():
                    chosen = [pids[(r * c.dimse_find_n + j) * 7 % len(pids)]
                              for j in range(c.dimse_find_n)]
                    queries = [(pid, t.manifest.studies(lambda i, p=pid: i.patient_id == p))
                               for pid in chosen]
                    m = await asyncio.to_thread(D.find_study_by_patient, t.dicom, queries)
                    self._record(t, "dimse_find", m, r)
            studies = sorted({i.study for i, _ in self.ct_main})
            self.log(f"dimse c-get / c-move: whole CT study ({c.ct_slices} instances)")
            for r in range(c.reps):
                study = studies[r % len(studies)]
                expected = {i.sop: i.pixel_sha256 for i, _ in self.ct_main if i.study == study}
                for t in self._order():
                    await self._settle()
                    m = await asyncio.to_thread(D.get_study, t.dicom, study, expected)
                    self._record(t, "dimse_get", m, r, instances=len(expected))
                    if scp is not None:
                        await self._settle()
                        m = await asyncio.to_thread(D.move_study, t.dicom, scp, study,
                                                    expected)
                        self._record(t, "dimse_move", m, r, instances=len(expected))
        finally:
            if scp is not None:
                await asyncio.to_thread(scp.stop)

    async def _verify_stored(self, t: Target, m: Measurement, insts: list[Inst]) -> None:
        """Untimed: QIDO-RS lists exactly the sent instances in each sent series; only
        then do they enter the manifest (later expected answers count them)."""
        s = m.samples[0]
        if s.ok:
            try:
                for study, series in sorted({(i.study, i.series) for i in insts}):
                    async with t.session.get(
                            f"{t.url}/studies/{study}/series/{series}/instances",
                            headers={"Accept": P.DICOM_JSON}) as resp:
                        items = V.qido_items(resp.status, await resp.read())
                    V.check_uid_set(items, V.SOP_INSTANCE_UID,
                                    {i.sop for i in insts if i.series == series})
            except Exception as exc:  # noqa: BLE001 - reported in the row
                s.ok, s.error = False, f"wrong answer: C-STORE then QIDO-RS: {exc}"
        if s.ok:
            for inst in insts:
                t.manifest.add(inst)

    # --- profiling -----------------------------------------------------------------------
    async def _profile(self) -> None:
        if not profiling.available():
            self.log("profile: py-spy not installed (pip install py-spy); skipped")
            return
        OUT.mkdir(exist_ok=True)
        c = self.cfg
        for t in self.targets:
            if t.pid is None:
                continue
            self.log(f"profile: py-spy on {t.name} (pid {t.pid}); STOW at c=4, QIDO at c=16, "
                     "metadata and frames at c=8")
            prof: dict[str, dict] = {}
            book = P.QueryBook(t.manifest)
            insts = [i for i, _ in self.ct_main]
            ct_series = sorted({(i.study, i.series) for i in insts})
            extra_ct = [self._built(self.ds.stow_ct(f"prof-{t.name}-{k}")) for k in range(3)]
            first = (c.tiny + 4) // 5 + 1000 * (self.targets.index(t) + 1)
            extra_tiny = self._built(self.ds.tiny_range(first, 100))

            async def stow_work() -> None:
                for batch in extra_ct:
                    await P.stow(t, P.batched(batch, c.ct_per_request), 4)
                await P.stow(t, P.batched(extra_tiny, c.tiny_per_request), 4)

            async def qido_work() -> None:
                for kind in P.QIDO_KINDS:
                    await P.qido(t, book, kind, 80, 16)

            # Read phases are profiled at a concurrency that keeps pacsd busy, so the
            # samples show where its CPU goes rather than an idle process.
            async def meta_work() -> None:
                await P.metadata(t, ct_series, 16, gzip=False, concurrency=8)
                await P.metadata(t, ct_series, 16, gzip=True, concurrency=8)

            async def frame_work() -> None:
                await P.frames(t, insts, 200, self.payload, concurrency=8)

            for name, work, repeat in (("stow", stow_work, False), ("qido", qido_work, True),
                                       ("metadata", meta_work, True),
                                       ("frames", frame_work, True)):
                spies = {mode: profiling.PySpy(t.pid, OUT / f"pyspy-{t.name}-{name}-{mode}.txt",
                                               gil=mode == "gil")
                         for mode in ("gil", "all")}
                t0 = time.perf_counter()
                try:
                    for _ in range(50):  # bounded: repeat until enough samples
                        await work()
                        if not repeat or time.perf_counter() - t0 >= c.profile_seconds:
                            break
                finally:
                    paths = {mode: spy.stop() for mode, spy in spies.items()}
                seconds = round(time.perf_counter() - t0, 1)
                for mode, path in paths.items():
                    key = f"{name}/{mode}"
                    if path is None:
                        prof[key] = {"error": f"py-spy wrote nothing; see {spies[mode].out}.log"}
                        continue
                    prof[key] = profiling.summarise(path)
                    prof[key]["seconds"] = seconds
                    top = ", ".join(f"{h['function']} {h['pct']}%"
                                    for h in prof[key]["self"][:3])
                    self.log(f"  {key}: {prof[key]['samples']} samples; top self: {top}")
            self.profiles[t.name] = prof

    # --- result --------------------------------------------------------------------------
    def result(self, started: float) -> dict:
        info = machine_info()
        info["loadavg_start"] = getattr(self, "load_start", info["loadavg_start"])
        info["loadavg_end"] = os.getloadavg()
        return {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": round(time.time() - started, 1),
            "machine": info,
            "config": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in dataclasses.asdict(self.cfg).items()},
            "targets": {t.name: {"url": t.url, "version": t.version, "rows": t.rows,
                                 "checks": t.checks} for t in self.targets},
            "profiles": self.profiles,
            "client_ceiling": self.ceiling,
        }
