"""The measured phases: STOW-RS, QIDO-RS, WADO-RS study, series metadata, frames,
rendered and thumbnail. Each builds ``request(i)`` coroutines for
:func:`benchmarks.client.run_closed_loop` and turns the measurement into a result row.

A row is ``verified`` only when every request of the repetition returned the right
answer; rows with a wrong answer keep their timings in the JSON for diagnosis but score
nothing in the summary (:mod:`benchmarks.report`).
"""
from __future__ import annotations

import datetime as _dt
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

from . import verify as V
from .client import Measurement, MultipartStream, boundary_of, percentile, run_closed_loop
from .dataset import NAME_PATTERNS, NAME_PATTERNS_INTL, DataSet, Inst, Manifest, multipart_body

ACCEPT_STUDY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_FRAME = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
DICOM_JSON = "application/dicom+json"
BOUNDARY = "pacsd-bench-boundary-7f3a9c"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
IDENTITY = {"Accept-Encoding": "identity"}
QIDO_KINDS = ["patient_id", "patient_name", "patient_name_intl", "study_date", "modality_paged", "accession",
              "series_in_study", "instances_in_series"]
PAGE = 25


@dataclass
class Target:
    """One DICOMweb root under test and what it acknowledged."""

    name: str
    url: str
    pid: int | None = None
    version: str = ""
    manifest: Manifest = field(default_factory=Manifest)
    rows: list[dict] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    session: aiohttp.ClientSession | None = None
    dicom: Any = None  # benchmarks.dimse.DicomAddress: the DIMSE phases run when set


def row_from(phase: str, m: Measurement, *, rep: int, instances: int = 0,
             extra: dict | None = None) -> dict:
    lat = [s.latency_s * 1000 for s in m.samples]
    nbytes = sum(s.nbytes for s in m.samples)
    errors = m.errors
    row = {
        "phase": phase, "concurrency": m.concurrency, "rep": rep,
        "requests": len(m.samples), "errors": len(errors),
        "error_sample": errors[0][:300] if errors else "",
        "verified": not errors and bool(m.samples),
        "wall_s": round(m.wall_s, 4), "client_cpu_s": round(m.cpu_s, 4),
        "client_cpu_pct": round(100 * m.cpu_s / m.wall_s, 1) if m.wall_s else 0.0,
        "bytes": nbytes,
        "mb_s": round(nbytes / m.wall_s / 1e6, 2) if m.wall_s else 0.0,
        "qps": round(len(m.samples) / m.wall_s, 1) if m.wall_s else 0.0,
        "p50_ms": round(percentile(lat, 50), 2), "p95_ms": round(percentile(lat, 95), 2),
        "p99_ms": round(percentile(lat, 99), 2),
        "mean_ms": round(statistics.fmean(lat), 2) if lat else float("nan"),
    }
    if instances:
        row["instances"] = instances
        row["inst_s"] = round(instances / m.wall_s, 1) if m.wall_s else 0.0
    row.update(extra or {})
    return row


# --- STOW-RS -----------------------------------------------------------------------------

async def stow(target: Target, batches: list[list[tuple[Inst, bytes]]], concurrency: int
               ) -> Measurement:
    """POST each batch as one multipart request; acknowledged instances enter the
    target's manifest only when the whole answer checks out."""
    bodies = [multipart_body([b for _, b in batch], BOUNDARY) for batch in batches]
    url = target.url + "/studies"
    headers = {"Content-Type": STOW_TYPE, "Accept": DICOM_JSON, **IDENTITY}

    async def request(i: int):
        batch = batches[i]
        async with target.session.post(url, data=bodies[i], headers=headers) as resp:
            body = await resp.read()
            status = resp.status

        def check() -> None:
            V.check_stow(status, body, {inst.sop for inst, _ in batch})
            for inst, _ in batch:
                target.manifest.add(inst)
        return sum(len(b) for _, b in batch), check

    return await run_closed_loop(len(batches), concurrency, request)


def batched(items: list, size: int) -> list[list]:
    return [items[k:k + size] for k in range(0, len(items), size)]


# --- QIDO-RS -----------------------------------------------------------------------------

class QueryBook:
    """Expected answers for every QIDO kind, computed once from a manifest."""

    def __init__(self, m: Manifest) -> None:
        insts = list(m.by_sop.values())
        tiny = [i for i in insts if i.kind == "tiny"]
        self.study_counts: dict[str, int] = {}
        self.series_counts: dict[str, int] = {}
        for i in insts:
            self.study_counts[i.study] = self.study_counts.get(i.study, 0) + 1
            self.series_counts[i.series] = self.series_counts.get(i.series, 0) + 1
        self.by_pid: dict[str, set[str]] = {}
        self.by_acc: dict[str, set[str]] = {}
        self.study_of: dict[str, Inst] = {}
        for i in insts:
            self.by_pid.setdefault(i.patient_id, set()).add(i.study)
            self.by_acc.setdefault(i.accession, set()).add(i.study)
            self.study_of.setdefault(i.study, i)
        self.patients = sorted({i.patient_id for i in tiny}) or sorted(self.by_pid)
        self.accessions = sorted({i.accession for i in tiny}) or sorted(self.by_acc)
        self.names = {p: {s.study for s in self.study_of.values()
                          if s.patient_name.startswith(p[:-1])}
                      for p in NAME_PATTERNS + NAME_PATTERNS_INTL}
        self.months = []
        for k in range(36):
            y, mo = 2023 + k // 12, k % 12 + 1
            last = (_dt.date(y + mo // 12, mo % 12 + 1, 1) - _dt.timedelta(days=1)).day
            lo, hi = f"{y}{mo:02d}01", f"{y}{mo:02d}{last:02d}"
            self.months.append((f"{lo}-{hi}", {s.study for s in self.study_of.values()
                                               if lo <= s.study_date <= hi}))
        self.mr_series = {i.series for i in insts if i.modality == "MR"}
        self.tiny_studies = sorted({i.study for i in tiny}) or sorted(self.study_of)
        self.series_of: dict[str, set[str]] = {}
        for i in insts:
            self.series_of.setdefault(i.study, set()).add(i.series)
        self.ct_series = sorted({(i.study, i.series) for i in insts if i.kind == "ct"})
        self.sops_of: dict[str, set[str]] = {}
        for i in insts:
            self.sops_of.setdefault(i.series, set()).add(i.sop)

    def case(self, kind: str, i: int) -> tuple[str, dict[str, str], Callable[[list], None]]:
        """(path, query params, check(items)) of the i-th query of ``kind``."""
        if kind == "patient_id":
            pid = self.patients[(i * 7919) % len(self.patients)]
            return "/studies", {"PatientID": pid}, self._studies(self.by_pid[pid])
        if kind in ("patient_name", "patient_name_intl"):
            pats = NAME_PATTERNS if kind == "patient_name" else NAME_PATTERNS_INTL
            pat = pats[i % len(pats)]
            return "/studies", {"PatientName": pat}, self._studies(self.names[pat])
        if kind == "study_date":
            rng, want = self.months[(i * 5) % len(self.months)]
            return "/studies", {"StudyDate": rng}, self._studies(want)
        if kind == "modality_paged":
            pages = max(1, -(-len(self.mr_series) // PAGE))
            offset = (i % pages) * PAGE
            want = self.mr_series

            def check(items: list) -> None:
                V.check_page(items, V.SERIES_UID, want, PAGE, offset)
                V.check_counts(items, V.SERIES_UID, V.N_SERIES_INSTANCES, self.series_counts)
            return "/series", {"Modality": "MR", "limit": str(PAGE),
                               "offset": str(offset)}, check
        if kind == "accession":
            acc = self.accessions[(i * 104729) % len(self.accessions)]
            return "/studies", {"AccessionNumber": acc}, self._studies(self.by_acc[acc])
        if kind == "series_in_study":
            study = self.tiny_studies[(i * 7919) % len(self.tiny_studies)]
            want = self.series_of[study]

            def check(items: list) -> None:
                V.check_uid_set(items, V.SERIES_UID, want)
                V.check_counts(items, V.SERIES_UID, V.N_SERIES_INSTANCES, self.series_counts)
            return f"/studies/{study}/series", {}, check
        if kind == "instances_in_series":
            study, series = self.ct_series[i % len(self.ct_series)]
            want = self.sops_of[series]
            return (f"/studies/{study}/series/{series}/instances", {},
                    lambda items: V.check_uid_set(items, V.SOP_INSTANCE_UID, want))
        raise ValueError(kind)

    def _studies(self, want: set[str]) -> Callable[[list], None]:
        def check(items: list) -> None:
            V.check_uid_set(items, V.STUDY_UID, want)
            V.check_counts(items, V.STUDY_UID, V.N_STUDY_INSTANCES, self.study_counts)
        return check


async def qido(target: Target, book: QueryBook, kind: str, n: int, concurrency: int,
               offset: int = 0) -> Measurement:
    headers = {"Accept": DICOM_JSON, **IDENTITY}

    async def request(i: int):
        path, params, check_items = book.case(kind, offset + i)
        async with target.session.get(target.url + path, params=params,
                                      headers=headers) as resp:
            body = await resp.read()
            status = resp.status
        return len(body), lambda: check_items(V.qido_items(status, body))

    return await run_closed_loop(n, concurrency, request)


async def walk_pages(target: Target, book: QueryBook) -> dict:
    """Untimed: page through Modality=MR series; the pages must tile the answer."""
    seen: set[str] = set()
    pages = max(1, -(-len(book.mr_series) // PAGE))
    try:
        for k in range(pages + 1):
            async with target.session.get(
                    target.url + "/series", headers={"Accept": DICOM_JSON},
                    params={"Modality": "MR", "limit": str(PAGE),
                            "offset": str(k * PAGE)}) as resp:
                items = V.qido_items(resp.status, await resp.read())
            got = V.check_page(items, V.SERIES_UID, book.mr_series, PAGE, k * PAGE)
            if got & seen:
                raise V.VerificationError("pages overlap")
            seen |= got
        if seen != book.mr_series:
            raise V.VerificationError(f"pages cover {len(seen)} of {len(book.mr_series)}")
        return {"check": "qido paging tiles the answer", "ok": True}
    except (V.VerificationError, aiohttp.ClientError) as exc:
        return {"check": "qido paging tiles the answer", "ok": False, "error": str(exc)}


# --- WADO-RS -----------------------------------------------------------------------------

async def fetch_multipart(session: aiohttp.ClientSession, url: str, accept: str,
                          lookup=None) -> tuple[int, list, int]:
    """(status, parts, body bytes) with the body parsed and checked as it streams."""
    async with session.get(url, headers={"Accept": accept, **IDENTITY}) as resp:
        if resp.status != 200:
            body = await resp.read()
            return resp.status, [], len(body)
        stream = MultipartStream(boundary_of(resp.headers.get("Content-Type", "")),
                                 lookup=lookup)
        total = 0
        async for chunk in resp.content.iter_any():
            total += len(chunk)
            stream.feed(chunk)
        return 200, stream.close(), total


async def wado_study(target: Target, studies: list[str], n: int, concurrency: int,
                     payload: dict[str, bytes]) -> Measurement:
    """Whole study as stored, streamed; each part is identified by its SOP Instance UID
    and compared with the bytes that were sent."""
    m = target.manifest
    expected = {s: m.instances_of(s) for s in studies}
    lookup = V.instance_lookup(payload)

    async def request(i: int):
        study = studies[i % len(studies)]
        status, parts, total = await fetch_multipart(
            target.session, f"{target.url}/studies/{study}", ACCEPT_STUDY, lookup)

        def check() -> None:
            V.check_status(status)
            V.check_instances(parts, expected[study], m.by_sha)
        return total, check

    return await run_closed_loop(n, concurrency, request)


async def metadata(target: Target, series: list[tuple[str, str]], n: int, *, gzip: bool,
                   concurrency: int = 1) -> Measurement:
    m = target.manifest
    expected = {se: {i.sop: i for i in m.by_sop.values() if i.series == se}
                for _, se in series}
    headers = {"Accept": DICOM_JSON,
               "Accept-Encoding": "gzip, deflate" if gzip else "identity"}

    async def request(i: int):
        study, se = series[i % len(series)]
        async with target.session.get(f"{target.url}/studies/{study}/series/{se}/metadata",
                                      headers=headers) as resp:
            body = await resp.read()   # decompressed by aiohttp when encoded
            status = resp.status

        def check() -> None:
            V.check_status(status)
            V.check_metadata(V.parse_json(body), expected[se])
        return len(body), check

    return await run_closed_loop(n, concurrency, request)


async def frames(target: Target, insts: list[Inst], n: int, payload: dict[str, bytes],
                 concurrency: int = 1) -> Measurement:
    """Frame 1 of single-frame instances; the body is read whole (the clock stops), then
    parsed and compared with the pixel data that was sent (the last element)."""
    async def request(i: int):
        inst = insts[(i * 37) % len(insts)]
        url = (f"{target.url}/studies/{inst.study}/series/{inst.series}/instances/"
               f"{inst.sop}/frames/1")
        async with target.session.get(url, headers={"Accept": ACCEPT_FRAME,
                                                    **IDENTITY}) as resp:
            body = await resp.read()
            status, ctype = resp.status, resp.headers.get("Content-Type", "")

        def check() -> None:
            V.check_status(status)
            nbytes = inst.rows * inst.columns * 2
            pixels = payload[inst.sop][-nbytes:]
            stream = MultipartStream(boundary_of(ctype), lookup=lambda head: ("frame", pixels))
            stream.feed(body)
            V.check_frame(stream.close(), inst.pixel_sha256, nbytes)
        return len(body), check

    return await run_closed_loop(n, concurrency, request)


async def rendered(target: Target, ds: DataSet, insts: list[Inst], n: int,
                   cache: dict[Any, Any]) -> Measurement:
    """Instance /rendered as JPEG: the right slice (marker squares), right size, and
    the stored pixels windowed (correlation)."""
    async def request(i: int):
        inst = insts[i % len(insts)]
        url = (f"{target.url}/studies/{inst.study}/series/{inst.series}/instances/"
               f"{inst.sop}/rendered")
        async with target.session.get(url, headers={"Accept": "image/jpeg",
                                                    **IDENTITY}) as resp:
            body = await resp.read()
            status = resp.status

        def check() -> None:
            V.check_status(status)
            V.check_image(body, _expected_for(ds, [inst], cache), inst.instance_number)
        return len(body), check

    return await run_closed_loop(n, 1, request)


def _expected_for(ds: DataSet, members: list[Inst], cache: dict[Any, Any]):
    """InstanceNumber -> expected windowed image, computed once per slice."""
    by_number = {i.instance_number: i for i in members}

    def get(number: int):
        inst = by_number[number]
        if inst.sop not in cache:
            cache[inst.sop] = ds.expected_render(inst)
        return cache[inst.sop]
    return get


async def thumbnail(target: Target, ds: DataSet, series: list[tuple[str, str, list[Inst]]],
                    n: int, cache: dict[Any, Any]) -> Measurement:
    """Series thumbnail: a JPEG of at most 256 px (aspect kept) showing one of the
    series' slices the right way up."""
    async def request(i: int):
        study, se, members = series[i % len(series)]
        async with target.session.get(f"{target.url}/studies/{study}/series/{se}/thumbnail",
                                      headers={"Accept": "image/jpeg", **IDENTITY}) as resp:
            body = await resp.read()
            status = resp.status

        def check() -> None:
            V.check_status(status)
            V.check_image(body, _expected_for(ds, members, cache),
                          {m.instance_number for m in members}, max_side=256, min_corr=0.8)
        return len(body), check

    return await run_closed_loop(n, 1, request)
