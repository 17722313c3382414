"""The auditor's view of the audit trail (R-E3, R-E4, MLPS 6, 9-13): the read API with
filters and paging, the chain check, CSV / Excel exports, and the page at ``/audit``.

* ``GET /api/v1/audit`` — events, filtered (``since``, ``until``, ``type``, ``actor``,
  ``outcome``, ``study``, ``patient``), paged by ``seq`` (``after`` / ``before``,
  ``order=asc|desc``, ``limit``), ``count=true`` adds the number of matches. Audited as
  ``audit-read`` with the filters (a PatientID filter as ``patient: true``, never its
  value: the trail holds no patient data, SEC-23).
* ``GET /api/v1/audit/verify`` — ``pacsd audit verify`` for the page's status line.
* ``GET /api/v1/audit/events.csv`` / ``events.xlsx`` (same filters, no paging) —
  every matching event, CSV streamed, Excel built with openpyxl's write-only mode;
  audited as ``audit-export``.
* ``GET /audit`` — the page (static HTML + JS from ``pacsd/web/static``): it signs in with
  the ordinary session login (auditors give their TOTP code, MLPS 4) and reads the API
  with the session's Bearer token. The page is public like the viewer's files; the data
  is not: every call needs ``audit-read`` (only the ``auditor`` role, MLPS 6), and a
  refused call is answered 403 and audited as ``permission-denied`` by the middleware.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import os
import tempfile
from pathlib import Path
from typing import AsyncIterator

import orjson
from aiohttp import web

from .. import errors
from ..dicom import is_valid_uid
from ..services.audit import (EVENT_TYPES, OUTCOMES, AuditFilter, is_event_type, iso_utc,
                              parse_time)
from ..services.audit_export import FORMATS, TooManyRows, csv_chunks, write_xlsx
from .auth import note_audit, public, requires
from .keys import ARCHIVE, AUDIT, PRIMARY

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
PAGE_FILES = {"audit.html": "text/html", "audit.js": "text/javascript",
              "audit.css": "text/css"}


def _json(body, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status,
                        content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def _int(name: str, value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.BadRequest(f"{name} is an integer") from None


async def parse_filter(request: web.Request, *, paged: bool) -> tuple[AuditFilter, dict]:
    """The filter of a request, and its PHI-free description for the audit record."""
    q = request.query
    since = parse_time(q["since"], "since") if q.get("since") else None
    until = parse_time(q["until"], "until") if q.get("until") else None
    types = tuple(t.strip() for v in q.getall("type", []) for t in v.split(",") if t.strip())
    for t in types:
        if not is_event_type(t):
            raise errors.BadRequest("type is one of " + ", ".join(sorted(EVENT_TYPES))
                                    + " or a plugin's <plugin>.<event>")
    outcome = q.get("outcome") or None
    if outcome is not None and outcome not in OUTCOMES:
        raise errors.BadRequest("outcome is one of " + ", ".join(sorted(OUTCOMES)))
    actor = (q.get("actor") or "").strip()[:128] or None
    study = (q.get("study") or "").strip() or None
    if study is not None and not is_valid_uid(study):
        raise errors.BadRequest("study is a StudyInstanceUID")
    patient = (q.get("patient") or "").strip()
    if len(patient) > 64:
        raise errors.BadRequest("patient is a PatientID (at most 64 characters)")
    uids: tuple[str, ...] | None = (study,) if study else None
    if patient:
        audit = request.app[AUDIT]
        found = await request.app[ARCHIVE].run(audit.studies_of_patient, patient)
        uids = tuple(u for u in found if study is None or u == study)
    described = {"since": since, "until": until, "type": list(types) or None,
                 "actor": actor, "outcome": outcome, "study": study,
                 "patient": True if patient else None}
    limit, after, before, descending = None, None, None, False
    if paged:
        limit = _int("limit", q.get("limit"))
        limit = 100 if limit is None else limit
        if not 1 <= limit <= 1000:
            raise errors.BadRequest("limit is 1 to 1000")
        after, before = _int("after", q.get("after")), _int("before", q.get("before"))
        order = q.get("order", "asc")
        if order not in ("asc", "desc"):
            raise errors.BadRequest("order is asc or desc")
        descending = order == "desc"
    flt = AuditFilter(since=since, until=until, event_types=types, actor=actor,
                      outcome=outcome, study_uids=uids, after_seq=after, before_seq=before,
                      descending=descending, limit=limit)
    return flt, {k: v for k, v in described.items() if v is not None}


@requires("audit-read", audit="audit-read")
async def audit_events(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/audit (auditor only, MLPS 6)."""
    flt, described = await parse_filter(request, paged=True)
    audit, archive = request.app[AUDIT], request.app[ARCHIVE]
    await audit.flush()  # the reader sees everything recorded before its request
    rows = await archive.run(audit.select, flt)
    for row in rows:
        row["detail"] = orjson.loads(row["detail"])
    body: dict = {"events": rows}
    if request.query.get("count") in ("1", "true"):
        body["total"] = await archive.run(audit.count, flt)
    note_audit(request, results=len(rows), **described)
    return _json(body)


#: A chain check younger than this is shown again instead of walking the whole trail
#: once more (a long trail takes a while; several auditors' pages share one walk).
VERIFY_CACHE_S = 60.0


class _VerifyCache:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.body: dict | None = None
        self.at = 0.0


VERIFY_CACHE = web.AppKey("audit_verify_cache", _VerifyCache)


@requires("audit-read", audit="audit-read")
async def audit_verify(request: web.Request) -> web.Response:
    """GET /api/v1/audit/verify: the hash chain's state (the page's status line); a
    check at most :data:`VERIFY_CACHE_S` old is reused (``checked_at`` says when)."""
    audit, archive = request.app[AUDIT], request.app[ARCHIVE]
    cache = request.app[VERIFY_CACHE]
    async with cache.lock:  # one walk at a time
        now = asyncio.get_running_loop().time()
        if cache.body is None or now - cache.at > VERIFY_CACHE_S or \
                request.query.get("fresh") in ("1", "true"):
            await audit.flush()
            result = await archive.run(audit.verify)
            anchor = await archive.run(audit.anchor)
            cache.body = {
                "ok": result.ok, "rows": result.rows, "head_seq": result.head_seq,
                "head_hash": result.head_hash, "bad_seq": result.bad_seq,
                "problem": result.problem, "anchor_seq": anchor.seq,
                "pruned_before": anchor.pruned_before or None,
                "pruned_rows": anchor.pruned_rows, "checked_at": iso_utc(audit.clock())}
            cache.at = now
        body = cache.body
    note_audit(request, verify=True, ok=body["ok"])
    return _json(body)


@requires("audit-read")
async def audit_event_types(request: web.Request) -> web.Response:
    """GET /api/v1/audit/event-types: the core event types (the page's type filter)."""
    return _json(sorted(EVENT_TYPES))


def _filename(fmt: str, clock) -> str:
    return "pacsd-audit-" + _dt.datetime.fromtimestamp(clock(), _dt.timezone.utc) \
        .strftime("%Y%m%dT%H%M%SZ") + "." + fmt


def _export_handler(fmt: str):
    @requires("audit-read", audit="audit-export")
    async def export(request: web.Request) -> web.StreamResponse:
        flt, described = await parse_filter(request, paged=False)
        audit, archive = request.app[AUDIT], request.app[ARCHIVE]
        await audit.flush()
        headers = {"Cache-Control": "no-store", "Content-Disposition":
                   f'attachment; filename="{_filename(fmt, audit.clock)}"'}
        count = [0]

        def counted(n: int) -> None:
            count[0] += n

        if fmt == "csv":
            resp = web.StreamResponse(headers={**headers, "Content-Type": FORMATS["csv"]})
            await resp.prepare(request)
            chunks = csv_chunks(audit.iter_filtered(flt), counted)
            while True:  # each batch is read in a worker thread, then sent
                chunk = await archive.run(next, chunks, None)
                if chunk is None:
                    break
                await resp.write(chunk)
            await resp.write_eof()
            note_audit(request, results=count[0], format="csv", **described)
            return resp
        fd, tmp = tempfile.mkstemp(prefix="pacsd-audit-", suffix=".xlsx")
        os.close(fd)
        try:
            try:
                n = await archive.run(write_xlsx, tmp, audit.iter_filtered(flt), counted)
            except TooManyRows as exc:
                note_audit(request, results=count[0], format="xlsx", **described)
                raise errors.PayloadTooLarge(str(exc)) from None
            note_audit(request, results=n, format="xlsx", **described)
            resp = web.StreamResponse(headers={**headers, "Content-Type": FORMATS["xlsx"],
                                               "Content-Length": str(os.path.getsize(tmp))})
            await resp.prepare(request)
            with open(tmp, "rb") as fh:
                while chunk := await asyncio.to_thread(fh.read, 1 << 20):
                    await resp.write(chunk)
            await resp.write_eof()
            return resp
        finally:
            os.unlink(tmp)

    export.__name__ = f"audit_export_{fmt}"
    return export


@public
async def audit_page(request: web.Request) -> web.StreamResponse:
    """/audit and its static files (no data: that comes from the API)."""
    name = request.match_info.get("name") or "audit.html"
    if name not in PAGE_FILES:
        raise errors.NotFound("no such file")
    resp = web.FileResponse(STATIC / name)
    resp.content_type = PAGE_FILES[name]
    resp.headers["Cache-Control"] = "no-cache"
    # The page runs only its own script and talks only to this server.
    resp.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
    return resp


#: Seconds between retention prunes of the trail in ``pacsd serve``.
PRUNE_EVERY_S = 86400.0
SYSLOG = web.AppKey("audit_syslog", object)


async def _prune_loop(app: web.Application) -> None:
    archive, audit = app[ARCHIVE], app[AUDIT]
    conf = archive.settings.audit
    while True:
        try:
            keep = None
            if conf.syslog.enabled:  # never prune what the SOC has not received yet
                keep = await archive.run(audit.cursor, "syslog") or 0
            await archive.run(audit.prune, conf.retention_days, keep_after_seq=keep)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.error("audit trail retention prune failed; retried in %.0f s",
                      PRUNE_EVERY_S, exc_info=True)
        await asyncio.sleep(PRUNE_EVERY_S)


async def audit_ctx(app: web.Application) -> AsyncIterator[None]:
    """Background work on the trail in ``pacsd serve``: the syslog export (when
    ``[audit.syslog] enabled``) and the daily retention prune (``[audit]
    retention_days`` > 0). Started after the audit trail, stopped before it."""
    from ..services.audit_syslog import SyslogForwarder

    archive, audit = app[ARCHIVE], app[AUDIT]
    app[VERIFY_CACHE] = _VerifyCache()
    conf = archive.settings.audit
    forwarder = None
    primary = app.get(PRIMARY, True)  # one exporter and pruner per server (server.py)
    if conf.syslog.enabled and primary:
        forwarder = SyslogForwarder(conf.syslog, audit, run=archive.run,
                                    ae_title=archive.settings.server.ae_title)
        app[SYSLOG] = forwarder
        await forwarder.start()
    pruner = asyncio.create_task(_prune_loop(app), name="pacsd-audit-prune") \
        if conf.retention_days > 0 and primary else None
    try:
        yield
    finally:
        if pruner is not None:
            pruner.cancel()
            try:
                await pruner
            except asyncio.CancelledError:
                pass
        if forwarder is not None:
            await audit.flush()
            await forwarder.stop()


def add_routes(router: web.UrlDispatcher) -> None:
    """The routes; their state (the chain-check cache) is set up by :func:`audit_ctx`."""
    router.add_get("/api/v1/audit", audit_events)
    router.add_get("/api/v1/audit/verify", audit_verify)
    router.add_get("/api/v1/audit/event-types", audit_event_types)
    router.add_get("/api/v1/audit/events.csv", _export_handler("csv"))
    router.add_get("/api/v1/audit/events.xlsx", _export_handler("xlsx"))
    router.add_get("/audit", audit_page)
    router.add_get("/audit/{name}", audit_page)
