"""pacsd-notify: notifications to patients (R-B5, R-3.3.3), built on ``pacsd.plugin_api``.

Listens for the plugin event ``share.link-created`` (pacsd-share makes a link when
pacsd-reports announces a final report with a phone number) and sends the link with the
configured channel (``channels.py``: log, http-sms, wechat) in the background, retrying
retryable failures with exponential backoff. Every attempt lands in the delivery log
table ``notify_deliveries`` (recipient masked, message stored with the link's token
redacted) and the audit trail (``notify.sent`` / ``notify.failed``).
"""
from __future__ import annotations

import asyncio
import time

import orjson
import sqlalchemy as sa
from aiohttp import web

from pacsd.plugin_api import (Migration, PluginSchema, api_of, hookimpl, note_audit,
                              requires)

from .channels import ChannelError, make_channel, mask

__version__ = "0.1.0"
NAME = "notify"
DEFAULTS = {
    "channel": "log",          # log (development only), http-sms, wechat
    "retries": 3,              # further attempts after a retryable failure
    "backoff_s": 0.5,          # first wait; doubles each attempt
    "template": "【{hospital}】您的检查报告已出，请点击查看 Your report is ready: {url}",
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
    sa.Column("status", sa.String(16), nullable=False),        # queued, sent, failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.String(200)),
    sa.Column("provider_id", sa.String(64)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


def conf(api) -> dict:
    return {**DEFAULTS, **api.plugin_settings(NAME)}


@hookimpl
def register_tables():
    return PluginSchema(NAME, md, (
        Migration(1, "notify_deliveries", lambda conn: md.create_all(conn)),))


def _redact(text: str, url: str) -> str:
    token = url.rstrip("/").rsplit("/", 1)[-1]
    return text.replace(token, "<token>") if len(token) >= 20 else text


async def deliver(api, to: str, url: str, purpose: str) -> dict:
    """Send ``url`` to ``to`` with the configured channel; returns the delivery row."""
    c = conf(api)
    name = str(c["channel"])
    channel = make_channel(name, dict(c.get(name) or {}))
    text = str(c["template"]).format(hospital=c["hospital"], url=url)
    now = time.time()
    pk = await api.run(api.write, lambda cn: cn.execute(sa.insert(deliveries).values(
        channel=name, recipient=mask(to), message=_redact(text, url), purpose=purpose,
        status="queued", attempts=0, created_at=now, updated_at=now)).inserted_primary_key[0])
    attempts, status, error, provider_id = 0, "failed", "", ""
    wait = float(c["backoff_s"])
    for attempt in range(int(c["retries"]) + 1):
        attempts = attempt + 1
        try:
            provider_id = await channel.send(to, text, url)
            status, error = "sent", ""
            break
        except ChannelError as e:
            error = e.reason
            if not e.retryable:
                break
        if attempt < int(c["retries"]):
            await asyncio.sleep(wait)
            wait *= 2
    values = dict(status=status, attempts=attempts, last_error=error[:200] or None,
                  provider_id=provider_id[:64] or None, updated_at=time.time())
    await api.run(api.write, lambda cn: cn.execute(
        sa.update(deliveries).where(deliveries.c.id == pk).values(**values)))
    api.audit("notify.sent" if status == "sent" else "notify.failed",
              outcome="success" if status == "sent" else "failure",
              detail={"delivery": pk, "channel": name, "purpose": purpose,
                      "attempts": attempts})
    return {"id": pk, **values}


@hookimpl
def plugin_event(api, event, payload):
    if event == "share.link-created" and payload.get("notify_to"):
        api.spawn(deliver(api, payload["notify_to"], payload["url"],
                          payload.get("purpose", "share")), name="pacsd-notify")


@requires("read", audit="query")
async def listing(request: web.Request) -> web.Response:
    """GET /api/v1/plugins/notify/deliveries: the delivery log (recipients masked)."""
    api = api_of(request)
    rows = await api.run(api.read, lambda c: c.execute(
        sa.select(deliveries).order_by(deliveries.c.id.desc()).limit(500)).all())
    out = [{str(c.name): getattr(r, c.name) for c in deliveries.c} for r in rows]
    note_audit(request, results=len(out))
    return web.Response(body=orjson.dumps({"deliveries": out}),
                        content_type="application/json", headers={"Cache-Control": "no-store"})


@hookimpl
def register_routes(router, settings):
    router.add_get("/api/v1/plugins/notify/deliveries", listing)
