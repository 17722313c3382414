"""pacsd's JSON API for the archive's lifecycle (R-A7 retention and legal hold; R-A8
versions), under ``/api/v1/studies/{study}/...``. Thin: every decision is in
``services/retention.py`` / ``services/versions.py``; every route declares its action
and audit event for the one middleware (``web/auth.py``).

* ``GET  /api/v1/studies/{study}/retention`` (read): the study's retention decision.
* ``PUT  /api/v1/studies/{study}/retention`` (write, audit ``visit-data``): HIS visit
  data ``{"visit_class": "outpatient"|"inpatient", "visit_date": "YYYYMMDD",
  "discharge_date": "YYYYMMDD"}``.
* ``PUT  /api/v1/studies/{study}/legal-hold`` (delete, audit ``legal-hold``):
  ``{"reason": "..."}`` sets the hold; ``DELETE`` with the same body clears it.
* ``POST /api/v1/studies/{study}/corrections`` (delete — the role that corrects and
  deletes data, ``sysadmin`` — audit ``correction``): ``{"changes": {keyword: value|null},
  "reason": "..."}`` makes a new version of every instance (R-A8).
* ``POST /api/v1/patients/merge`` (delete, audit ``correction`` per study):
  ``{"from": {"PatientID", "IssuerOfPatientID"}, "to": {...}, "reason"}``.
* ``GET  /api/v1/studies/{study}/versions`` (read, audit ``study-read``): corrections and
  kept versions; ``GET .../series/{series}/instances/{instance}/versions/{n}`` (read,
  audit ``study-read``): the Part 10 bytes of version n (``application/dicom``).
* ``GET  /api/v1/storage/compression`` (read): space saved by ``[storage] compress``.
* ``GET  /api/v1/storage/scrub`` (read): state and last result of the scheduled scrub,
  which :func:`scrub_ctx` runs in the serve process (``[storage] scrub_every_days``).
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import orjson
from aiohttp import web

from .. import errors
from ..services.compression import compression_report
from ..services.retention import RetentionService
from ..services.scheduled_scrub import POLL_S, ScrubScheduler
from ..services.versions import VersionService, merge_patients
from .auth import current_actor, note_audit, requires
from .keys import ARCHIVE, AUDIT, PRIMARY

log = logging.getLogger(__name__)
SCRUB = web.AppKey("scrub_scheduler", ScrubScheduler)


def _json(body, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status,
                        content_type="application/json",
                        headers={"Cache-Control": "no-store"})


async def _body(request: web.Request) -> dict:
    raw = await request.content.read(64 * 1024 + 1)
    if len(raw) > 64 * 1024:
        raise errors.PayloadTooLarge("the JSON body is limited to 64 KiB")
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise errors.BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise errors.BadRequest("the body is a JSON object")
    return body


def _service(request: web.Request) -> RetentionService:
    return RetentionService(request.app[ARCHIVE])


@requires("read")
async def get_retention(request: web.Request) -> web.Response:
    archive = request.app[ARCHIVE]
    d = await archive.run(_service(request).decide, request.match_info["study"])
    return _json(d.as_dict())


@requires("write", audit="visit-data")
async def put_retention(request: web.Request) -> web.Response:
    body = await _body(request)
    archive = request.app[ARCHIVE]
    d = await archive.run(_service(request).set_visit, request.match_info["study"],
                          body.get("visit_class"), body.get("visit_date"),
                          body.get("discharge_date"))
    note_audit(request, visit_class=d.visit_class, retain_until=d.retain_until)
    return _json(d.as_dict())


@requires("delete", audit="legal-hold")
async def put_hold(request: web.Request) -> web.Response:
    return await _hold(request, True)


@requires("delete", audit="legal-hold")
async def delete_hold(request: web.Request) -> web.Response:
    return await _hold(request, False)


async def _hold(request: web.Request, hold: bool) -> web.Response:
    body = await _body(request)
    archive = request.app[ARCHIVE]
    d = await archive.run(_service(request).set_hold, request.match_info["study"], hold,
                          body.get("reason"))
    note_audit(request, hold=hold, reason=str(body.get("reason"))[:200])
    return _json(d.as_dict())


@requires("delete", audit="correction")
async def post_correction(request: web.Request) -> web.Response:
    body = await _body(request)
    archive = request.app[ARCHIVE]
    result = await archive.run(VersionService(archive).correct, request.match_info["study"],
                               body.get("changes"), body.get("reason"),
                               actor=current_actor(request).id)
    note_audit(request, object_count=result["instances"], correction=result["correction"],
               reason=result["reason"], keywords=result["keywords"])
    return _json(result, status=201)


@requires("delete", audit="correction")
async def post_merge(request: web.Request) -> web.Response:
    body = await _body(request)
    archive = request.app[ARCHIVE]
    result = await archive.run(merge_patients, VersionService(archive), body.get("from"),
                               body.get("to"), body.get("reason"),
                               actor=current_actor(request).id)
    note_audit(request, studies=result["studies"], merge=True, reason=result["reason"])
    return _json(result, status=201)


@requires("read", audit="study-read")
async def get_versions(request: web.Request) -> web.Response:
    archive = request.app[ARCHIVE]
    h = await archive.run(VersionService(archive).history, request.match_info["study"])
    return _json(h)


@requires("read", audit="study-read")
async def get_version(request: web.Request) -> web.Response:
    mi = request.match_info
    try:
        n = int(mi["version"])
    except ValueError:
        raise errors.BadRequest("the version is a number") from None
    archive = request.app[ARCHIVE]
    data = await archive.run(VersionService(archive).version_bytes, mi["study"],
                             mi["series"], mi["instance"], n)
    note_audit(request, object_count=1, version=n)
    return web.Response(body=data, content_type="application/dicom",
                        headers={"Cache-Control": "no-store"})


@requires("read")
async def get_compression(request: web.Request) -> web.Response:
    archive = request.app[ARCHIVE]
    return _json(await archive.run(compression_report, archive))


@requires("read")
async def get_scrub(request: web.Request) -> web.Response:
    archive = request.app[ARCHIVE]
    return _json(await archive.run(request.app[SCRUB].status))


async def _scrub_loop(archive, scheduler: ScrubScheduler) -> None:
    while True:
        try:
            report = await archive.run(scheduler.tick)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - logged; the next poll tries again
            log.exception("scheduled scrub failed; retrying at the next poll")
            report = None
        # More of a run to do: go on after a breath; otherwise look again later.
        await asyncio.sleep(1.0 if report is not None and not report.complete else POLL_S)


async def scrub_ctx(app: web.Application) -> AsyncIterator[None]:
    """The scheduled scrub of ``[storage] scrub_every_days`` (services/scheduled_scrub)."""
    archive = app[ARCHIVE]
    scheduler = ScrubScheduler(archive, app[AUDIT])
    app[SCRUB] = scheduler
    task = None
    if archive.settings.storage.scrub_every_days > 0 and app.get(PRIMARY, True):
        task = asyncio.create_task(_scrub_loop(archive, scheduler), name="pacsd-scrub")
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/storage/compression", get_compression)
    router.add_get("/api/v1/storage/scrub", get_scrub)
    router.add_post("/api/v1/patients/merge", post_merge)
    base = "/api/v1/studies/{study}"
    router.add_post(f"{base}/corrections", post_correction)
    router.add_get(f"{base}/versions", get_versions)
    router.add_get(f"{base}/series/{{series}}/instances/{{instance}}/versions/{{version}}",
                   get_version)
    router.add_get(f"{base}/retention", get_retention)
    router.add_put(f"{base}/retention", put_retention)
    router.add_put(f"{base}/legal-hold", put_hold)
    router.add_delete(f"{base}/legal-hold", delete_hold)
