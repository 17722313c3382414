"""Store-and-forward in the web application: wiring, monitoring API and page (R-B2, R-A9).

:func:`install` (run by ``app._jobs_ctx`` before the job runner starts) builds the
:class:`ForwardingService` with the two senders (STOW-RS ``stow_client.StowSender``,
C-STORE ``dimse.scu.CStoreSender``), registers its routing hook as a built-in plugin, its
``forward.study`` job kind and the periodic SLA check.

Monitoring (``@requires("read")``; resubmitting needs ``admin`` and is audited):

* ``GET /api/v1/forwarding/status`` — queue depth by state, dead letters, per destination
  the log's item counts, open and overdue studies and the upload time p50 / p95 of the
  studies delivered in the last 24 hours;
* ``GET /api/v1/forwarding/jobs?state=&limit=&after=`` — forwarding jobs, newest first;
* ``GET /api/v1/forwarding/overdue`` — studies over ``sla_minutes``, oldest first;
* ``GET /api/v1/forwarding/studies?destination=&study=`` — upload clocks;
* ``GET /api/v1/forwarding/log?destination=&study=&state=&limit=&after=`` — the send /
  receive log;
* ``POST /api/v1/forwarding/jobs/{id}/resubmit`` — a dead job back to the queue;
* ``POST /api/v1/forwarding/studies/{study}/resend?destination=`` — route a stored study
  again (by the rules, or to one destination) and send it now (admin, audited);
* ``GET /admin/forwarding`` — the same facts as a small HTML page (no JavaScript).
"""
from __future__ import annotations

import html
import math
from typing import Any

import orjson
from aiohttp import web

from .. import errors
from ..dimse.scu import CStoreSender
from ..services.audit import iso_utc
from ..services.forward import JOB_KIND, ForwardingService
from . import auth
from .keys import ARCHIVE, AUDIT
from .stow_client import StowSender

FORWARDING = web.AppKey("forwarding", ForwardingService)
#: Upload times over this window feed the p50 / p95 of the status.
LATENCY_WINDOW_S = 24 * 3600.0


def install(app: web.Application, jobs) -> None:
    archive = app[ARCHIVE]
    senders = {"dicomweb": StowSender(), "dimse": CStoreSender(archive.settings)}
    fwd = ForwardingService(archive, jobs.queue, clock=jobs.clock, senders=senders,
                            audit=app[AUDIT], wake=jobs.wake)
    app[FORWARDING] = fwd
    jobs.register(JOB_KIND, fwd.handle, max_attempts=archive.settings.forward.max_attempts)
    if fwd.enabled:
        archive.plugins.register(fwd, "pacsd-forward")
        jobs.every(archive.settings.forward.sla_check_interval_s, fwd.check_sla)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status,
                        content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100.0 * len(ordered)) - 1)]


def _int(request: web.Request, name: str, default: int | None, lo: int = 1,
         hi: int = 1000) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise errors.BadRequest(f"{name} is an integer") from None
    if not lo <= value <= hi:
        raise errors.BadRequest(f"{name} is {lo} to {hi}")
    return value


async def status_facts(app: web.Application) -> dict:
    fwd = app[FORWARDING]
    archive = app[ARCHIVE]
    now = fwd.clock()
    counts = (await archive.run(fwd.queue.counts, "forward.")).get(JOB_KIND, {})
    items = await archive.run(fwd.log.item_counts)
    times = await archive.run(fwd.log.upload_times, now - LATENCY_WINDOW_S)
    overdue = await archive.run(fwd.log.overdue, now - fwd.sla_s(), 1000)
    open_studies = await archive.run(fwd.log.overdue, now + 1.0, 100000)
    destinations = {}
    for name, dest in sorted(fwd.destinations.items()):
        upload = times.get(name, [])
        destinations[name] = {
            "type": dest.type, "where": dest.where(),
            "instances": items.get(name, {}),
            "open_studies": sum(1 for s in open_studies if s["destination"] == name),
            "overdue_studies": sum(1 for s in overdue if s["destination"] == name),
            "failing_studies": sum(1 for s in open_studies
                                   if s["destination"] == name and s["last_error"]),
            "delivered_24h": len(upload),
            "upload_p50_s": percentile(upload, 50), "upload_p95_s": percentile(upload, 95),
        }
    return {
        "now": iso_utc(now), "sla_minutes": fwd.conf.sla_minutes,
        "rules": len(fwd.rules),
        "queue": {state: counts.get(state, 0)
                  for state in ("queued", "running", "done", "dead")},
        "overdue": len(overdue),
        "destinations": destinations,
    }


@auth.requires("read")
async def status(request: web.Request) -> web.Response:
    return _json(await status_facts(request.app))


@auth.requires("read")
async def list_jobs(request: web.Request) -> web.Response:
    fwd = request.app[FORWARDING]
    state = request.query.get("state") or None
    limit = _int(request, "limit", 100)
    after = _int(request, "after", None, 1, 2**62)
    jobs = await request.app[ARCHIVE].run(fwd.queue.list, state=state, kind=JOB_KIND,
                                          limit=limit, after=after)
    return _json({"jobs": [j.as_json() for j in jobs]})


@auth.requires("read")
async def overdue(request: web.Request) -> web.Response:
    fwd = request.app[FORWARDING]
    limit = _int(request, "limit", 100)
    rows = await request.app[ARCHIVE].run(fwd.log.overdue, fwd.clock() - fwd.sla_s(), limit)
    return _json({"sla_minutes": fwd.conf.sla_minutes, "studies": rows})


@auth.requires("read")
async def studies(request: web.Request) -> web.Response:
    fwd = request.app[FORWARDING]
    q = request.query
    rows = await request.app[ARCHIVE].run(
        fwd.log.studies, destination=q.get("destination") or None,
        study_uid=q.get("study") or None, limit=_int(request, "limit", 100))
    return _json({"studies": rows})


@auth.requires("read")
async def send_log(request: web.Request) -> web.Response:
    fwd = request.app[FORWARDING]
    q = request.query
    rows = await request.app[ARCHIVE].run(
        fwd.log.items, destination=q.get("destination") or None,
        study_uid=q.get("study") or None, state=q.get("state") or None,
        limit=_int(request, "limit", 100), after=_int(request, "after", None, 1, 2**62))
    return _json({"items": rows})


@auth.requires("admin", audit="job-resubmitted")
async def resubmit(request: web.Request) -> web.Response:
    fwd = request.app[FORWARDING]
    try:
        pk = int(request.match_info["id"])
    except ValueError:
        raise errors.NotFound("no such job") from None
    archive = request.app[ARCHIVE]
    job = await archive.run(fwd.queue.get, pk)
    if job is None or job.kind != JOB_KIND:
        raise errors.NotFound("no such forwarding job")
    job = await archive.run(fwd.queue.resubmit, pk)
    fwd.wake()
    auth.note_audit(request, job=pk, kind=job.kind)
    return _json({"job": job.as_json()})


@auth.requires("admin", audit="forward-resend")
async def resend(request: web.Request) -> web.Response:
    """Route a stored study again (by the rules, or ``?destination=``) and send it now."""
    fwd = request.app[FORWARDING]
    study = request.match_info["study"]
    destination = request.query.get("destination") or None
    counts = await request.app[ARCHIVE].run(fwd.resend, study, destination)
    auth.note_audit(request, destinations=sorted(counts),
                    object_count=sum(counts.values()))
    return _json({"study": study, "queued": counts})


# --- the HTML page ------------------------------------------------------------------------

def _fmt_s(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _ts(value: float | None) -> str:
    return "–" if value is None else iso_utc(value)[:19].replace("T", " ")


@auth.requires("read")
async def page(request: web.Request) -> web.Response:
    app = request.app
    fwd = app[FORWARDING]
    archive = app[ARCHIVE]
    facts = await status_facts(app)
    late = await archive.run(fwd.log.overdue, fwd.clock() - fwd.sla_s(), 50)
    dead = await archive.run(fwd.queue.list, state="dead", kind=JOB_KIND, limit=50)
    recent = await archive.run(fwd.log.recent_deliveries, 20)
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(n)}</td><td>{e(d['type'])}</td><td>{e(d['where'])}</td>"
        f"<td>{d['instances'].get('pending', 0)}</td><td>{d['instances'].get('sent', 0)}</td>"
        f"<td>{d['open_studies']}</td><td class='{'bad' if d['overdue_studies'] else ''}'>"
        f"{d['overdue_studies']}</td><td>{d['delivered_24h']}</td>"
        f"<td>{_fmt_s(d['upload_p50_s'])}</td><td>{_fmt_s(d['upload_p95_s'])}</td></tr>"
        for n, d in facts["destinations"].items())
    late_rows = "".join(
        f"<tr><td>{s['id']}</td><td>{e(s['destination'])}</td><td>{e(s['study_uid'])}</td>"
        f"<td>{_ts(s['first_received_at'])}</td>"
        f"<td>{_fmt_s(fwd.clock() - s['first_received_at'])}</td>"
        f"<td>{e(s['last_error'])}</td></tr>" for s in late)
    dead_rows = "".join(
        f"<tr><td>{j.pk}</td><td>{e(str(j.payload.get('destination', '')))}</td>"
        f"<td>{e(str(j.payload.get('study', '')))}</td><td>{j.attempts}</td>"
        f"<td>{_ts(j.finished_at)}</td><td>{e(j.last_error)}</td></tr>" for j in dead)
    recent_rows = "".join(
        f"<tr><td>{s['id']}</td><td>{e(s['destination'])}</td><td>{e(s['study_uid'])}</td>"
        f"<td>{_ts(s['first_received_at'])}</td><td>{_ts(s['delivered_at'])}</td>"
        f"<td class='{'bad' if s['alerted_at'] else ''}'>"
        f"{_fmt_s(s['delivered_at'] - s['first_received_at'])}</td></tr>" for s in recent)
    q = facts["queue"]
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pacsd forwarding</title>
<meta http-equiv="refresh" content="30">
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}.bad{{color:#b00;font-weight:bold}}</style>
</head><body>
<h1>Store-and-forward</h1>
<p>{e(facts['now'])} · SLA {facts['sla_minutes']:g} min · {facts['rules']} rules ·
queue: <b id="queued">{q['queued']}</b> queued, <b id="running">{q['running']}</b> running,
<b id="dead" class="{'bad' if q['dead'] else ''}">{q['dead']}</b> dead ·
<b id="overdue" class="{'bad' if facts['overdue'] else ''}">{facts['overdue']}</b> overdue</p>
<h2>Destinations</h2>
<table id="destinations"><tr><th>name</th><th>type</th><th>where</th><th>pending</th>
<th>sent</th><th>open studies</th><th>overdue</th><th>delivered (24 h)</th>
<th>upload p50</th><th>upload p95</th></tr>{rows}</table>
<h2>Overdue studies</h2>
<table id="overdue-studies"><tr><th>#</th><th>destination</th><th>study</th>
<th>first arrival (UTC)</th><th>open for</th><th>last error</th></tr>{late_rows}</table>
<h2>Recently delivered</h2>
<table id="delivered"><tr><th>#</th><th>destination</th><th>study</th>
<th>first arrival (UTC)</th><th>delivered (UTC)</th><th>upload time</th></tr>{recent_rows}</table>
<h2>Dead letters</h2>
<p>Resubmit with <code>POST /api/v1/forwarding/jobs/&lt;id&gt;/resubmit</code> (admin).</p>
<table id="dead-jobs"><tr><th>job</th><th>destination</th><th>study</th><th>attempts</th>
<th>given up (UTC)</th><th>last error</th></tr>{dead_rows}</table>
</body></html>"""
    return web.Response(text=body, content_type="text/html",
                        headers={"Cache-Control": "no-store"})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/forwarding/status", status)
    router.add_get("/api/v1/forwarding/jobs", list_jobs)
    router.add_get("/api/v1/forwarding/overdue", overdue)
    router.add_get("/api/v1/forwarding/studies", studies)
    router.add_get("/api/v1/forwarding/log", send_log)
    router.add_post("/api/v1/forwarding/jobs/{id}/resubmit", resubmit)
    router.add_post("/api/v1/forwarding/studies/{study}/resend", resend)
    router.add_get("/admin/forwarding", page)
