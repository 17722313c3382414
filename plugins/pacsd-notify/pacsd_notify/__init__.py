"""pacsd-notify: notifications to patients (R-B5, R-3.3.3), built on ``pacsd.plugin_api``.

Listens for the plugin event ``share.link-created`` (pacsd-share makes a link when a
report of a study becomes final and the patient's phone is known) and sends the link
with the configured channel (``channels.py``: log, http-sms, wechat) through pacsd's
**persistent job queue** (``api.jobs``, job kind ``notify.send``): a message queued
before a restart, or while the gateway is down, is sent later; retryable failures are
retried with the ``[jobs]`` backoff, and after ``retries`` further attempts the job is
dead and the delivery ``failed``. Every message is a row of the delivery log
``notify_deliveries`` (recipient masked, message stored with the link's token
redacted; the clear recipient and text needed to send are kept only until the message
is sent or given up) and every outcome is audited (``notify.sent`` / ``notify.failed``).
The job payload holds the delivery's row id only (no phone number, no token).
"""
from __future__ import annotations

import time

import orjson
import sqlalchemy as sa
from aiohttp import web

from pacsd.plugin_api import (JobFailed, Migration, PluginSchema, api_of, hookimpl,
                              note_audit, requires)

from .channels import ChannelError, make_channel, mask

__version__ = "0.2.0"
NAME = "notify"
JOB = "notify.send"
DEFAULTS = {
    "channel": "log",          # log (development only), http-sms, wechat
    "retries": 3,              # further attempts after a retryable failure
    "template": "【{hospital}】您的检查报告已出，请点击查看 Your report is ready: {url}",
    "code_template": "【{hospital}】验证码 {code}，{minutes} 分钟内有效，请勿告诉他人。"
                     "Your code: {code}",
    "hospital": "pacsd",
}

md = sa.MetaData()
deliveries = sa.Table(
    "notify_deliveries", md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("recipient", sa.String(32), nullable=False),     # masked
    sa.Column("message", sa.Text, nullable=False),             # token redacted
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),        # queued, retrying, sent, failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.String(200)),
    sa.Column("provider_id", sa.String(64)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # version 2: what the job needs to send, cleared once sent or given up
    sa.Column("pending_to", sa.String(128)),
    sa.Column("pending_text", sa.Text),
    sa.Column("job_id", sa.Integer),
)
PUBLIC = ("id", "channel", "recipient", "message", "purpose", "status", "attempts",
          "last_error", "provider_id", "created_at", "updated_at", "job_id")


def _v2(conn) -> None:
    for col, typ in (("pending_to", "VARCHAR(128)"), ("pending_text", "TEXT"),
                     ("job_id", "INTEGER")):
        conn.execute(sa.text(f"ALTER TABLE notify_deliveries ADD COLUMN {col} {typ}"))


def conf(api) -> dict:
    return {**DEFAULTS, **api.plugin_settings(NAME)}


@hookimpl
def register_tables():
    # Version 1 had no pending_* / job_id columns; a fresh database gets the current table.
    return PluginSchema(NAME, md, (
        Migration(1, "notify_deliveries", lambda conn: md.create_all(conn)),
        Migration(2, "notify_deliveries: pending message, job id (durable queue, R-B5)",
                  _v2)))


def _redact(text: str, url: str) -> str:
    token = url.rstrip("/").rsplit("/", 1)[-1]
    return text.replace(token, "<token>") if len(token) >= 20 else text


async def deliver(api, to: str, url: str, purpose: str, *, text: str | None = None,
                  secret: str = "") -> dict:
    """Log a message to ``to`` carrying ``url`` (or ``text``, whose ``secret`` part is
    redacted in the log) and queue its sending (job ``notify.send``); returns the
    delivery row as queued."""
    c = conf(api)
    name = str(c["channel"])
    make_channel(name, dict(c.get(name) or {}))       # a wrong configuration fails here
    if text is None:
        text = str(c["template"]).format(hospital=c["hospital"], url=url)
    logged = _redact(text, url) if url else text
    if secret:
        logged = logged.replace(secret, "<code>")
    now = time.time()
    row = dict(channel=name, recipient=mask(to), message=logged,
               purpose=purpose, status="queued", attempts=0, created_at=now,
               updated_at=now)
    pk = await api.run(api.write, lambda cn: cn.execute(sa.insert(deliveries).values(
        **row, pending_to=to, pending_text=text)).inserted_primary_key[0])
    job = await api.jobs.submit(JOB, {"delivery": pk}, dedupe_key=f"notify:{pk}")
    await api.run(api.write, lambda cn: cn.execute(
        sa.update(deliveries).where(deliveries.c.id == pk).values(job_id=job)))
    return {"id": pk, "job_id": job, **row}


async def send_job(api, job) -> None:
    """The ``notify.send`` handler: one attempt at one delivery (idempotent: a delivery
    already sent or given up is not sent again)."""
    pk = int(job.payload.get("delivery", 0))
    row = await api.run(api.read, lambda c: c.execute(
        sa.select(deliveries).where(deliveries.c.id == pk)).first())
    if row is None or row.status in ("sent", "failed") or not row.pending_to:
        return
    c = conf(api)
    name = row.channel
    channel = make_channel(name, dict(c.get(name) or {}))
    url = row.pending_text[row.pending_text.find("http"):] \
        if "http" in row.pending_text else ""
    last = job.attempts >= job.max_attempts
    try:
        provider_id = await channel.send(row.pending_to, row.pending_text, url)
    except ChannelError as e:
        final = last or not e.retryable
        await _record(api, pk, status="failed" if final else "retrying",
                      attempts=job.attempts, last_error=e.reason[:200])
        if final:
            _audit(api, pk, name, row.purpose, job.attempts, ok=False)
        raise JobFailed(e.reason, retry=e.retryable) from None
    await _record(api, pk, status="sent", attempts=job.attempts, last_error=None,
                  provider_id=provider_id[:64] or None)
    _audit(api, pk, name, row.purpose, job.attempts, ok=True)


async def _record(api, pk: int, **values) -> None:
    if values["status"] in ("sent", "failed"):
        values.update(pending_to=None, pending_text=None)     # no clear text kept
    values["updated_at"] = time.time()
    await api.run(api.write, lambda cn: cn.execute(
        sa.update(deliveries).where(deliveries.c.id == pk).values(**values)))


def _audit(api, pk, channel, purpose, attempts, *, ok: bool) -> None:
    api.audit("notify.sent" if ok else "notify.failed",
              outcome="success" if ok else "failure",
              detail={"delivery": pk, "channel": channel, "purpose": purpose,
                      "attempts": attempts})


@hookimpl
def register_jobs(api):
    async def handler(job):
        await send_job(api, job)
    return {JOB: (handler, int(conf(api)["retries"]) + 1)}


@hookimpl
def plugin_event(api, event, payload):
    if event == "share.link-created" and payload.get("notify_to"):
        return deliver(api, payload["notify_to"], payload["url"],
                       payload.get("purpose", "share"))
    if event == "share.code-created" and payload.get("notify_to"):
        # A self-enrolment verification code (R-C3): the code only, no link, no name.
        c = conf(api)
        code = str(payload["code"])
        text = str(c["code_template"]).format(hospital=c["hospital"], code=code,
                                              minutes=payload.get("minutes", 5))
        return deliver(api, payload["notify_to"], "", payload.get("purpose", "code"),
                       text=text, secret=code)
    return None


@requires("read", audit="query")
async def listing(request: web.Request) -> web.Response:
    """GET /api/v1/plugins/notify/deliveries: the delivery log (recipients masked)."""
    api = api_of(request)
    cols = [deliveries.c[n] for n in PUBLIC]
    rows = await api.run(api.read, lambda c: c.execute(
        sa.select(*cols).order_by(deliveries.c.id.desc()).limit(500)).all())
    out = [dict(zip(PUBLIC, r)) for r in rows]
    note_audit(request, results=len(out))
    return web.Response(body=orjson.dumps({"deliveries": out}),
                        content_type="application/json", headers={"Cache-Control": "no-store"})


@hookimpl
def register_routes(router, settings):
    router.add_get("/api/v1/plugins/notify/deliveries", listing)
