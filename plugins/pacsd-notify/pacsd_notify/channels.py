"""Notification channels (R-B5): one small interface, three implementations.

A channel sends one text (which carries a link only: no diagnosis, no ID numbers,
SEC-11) to one recipient and returns the provider's message id, or raises
:class:`ChannelError` (``retryable`` says whether trying again may help). Retries with
exponential backoff are done by the caller (``deliver``), the same for every channel.

* ``log`` — development / test only: writes the message (link included) to the server
  log so a person can open it. Never use it in production.
* ``http-sms`` — any HTTP SMS gateway: URL, JSON or form body built from a field map
  with ``{to}`` / ``{text}`` placeholders and ``$env:`` secrets, success judged by the
  HTTP status and optionally a response field.
* ``wechat`` — WeChat official-account template message (``message/template/send``):
  recipient is an OpenID, the link goes in ``url``, success when ``errcode`` is 0.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Protocol

import aiohttp

log = logging.getLogger("pacsd.notify")


class ChannelError(Exception):
    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason, self.retryable = reason, retryable


class Channel(Protocol):
    name: str

    async def send(self, to: str, text: str, url: str) -> str: ...


def secret(value: Any) -> str:
    """``$env:NAME`` / ``$file:/path`` indirection, as in pacsd's own settings."""
    value = str(value)
    if value.startswith("$env:"):
        return os.environ.get(value[5:], "")
    if value.startswith("$file:"):
        with open(value[6:]) as fh:
            return fh.readline().strip()
    return value


def mask(to: str) -> str:
    """A recipient for logs and the delivery log: phone 138****4321, others shortened."""
    digits = "".join(c for c in to if c.isdigit())
    if len(digits) >= 7:
        return digits[:3] + "****" + digits[-4:]
    return (to[:4] + "…") if to else ""


class LogChannel:
    name = "log"

    async def send(self, to: str, text: str, url: str) -> str:
        log.warning("TEST SMS to %s: %s", mask(to), text)
        return "log"


async def _post(url: str, *, json_body=None, form=None, timeout_s: float) -> tuple[int, Any]:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
            async with s.post(url, json=json_body, data=form) as r:
                try:
                    body = await r.json(content_type=None)
                except Exception:  # noqa: BLE001 - a gateway answering text
                    body = None
                return r.status, body
    except (aiohttp.ClientError, TimeoutError) as e:
        raise ChannelError(f"gateway unreachable: {type(e).__name__}", retryable=True) from None


class HttpSmsChannel:
    name = "http-sms"

    def __init__(self, conf: dict) -> None:
        self.url = str(conf.get("url", ""))
        if not self.url:
            raise ValueError("[plugins.notify.http-sms] needs url")
        self.format = conf.get("format", "json")
        self.fields = dict(conf.get("fields") or {"to": "{to}", "text": "{text}"})
        self.success_field = conf.get("success_field", "")
        self.success_value = conf.get("success_value", "")
        self.id_field = conf.get("id_field", "")
        self.timeout_s = float(conf.get("timeout_s", 10.0))

    async def send(self, to: str, text: str, url: str) -> str:
        body = {k: secret(v).replace("{to}", to).replace("{text}", text)
                for k, v in self.fields.items()}
        status, answer = await _post(self.url, json_body=body if self.format == "json" else None,
                                     form=body if self.format == "form" else None,
                                     timeout_s=self.timeout_s)
        if status >= 500 or status == 429:
            raise ChannelError(f"gateway answered {status}", retryable=True)
        if status >= 400:
            raise ChannelError(f"gateway refused the message ({status})", retryable=False)
        if self.success_field:
            got = (answer or {}).get(self.success_field) if isinstance(answer, dict) else None
            if str(got) != str(self.success_value):
                raise ChannelError(f"gateway said {self.success_field}={got}", retryable=False)
        if self.id_field and isinstance(answer, dict):
            return str(answer.get(self.id_field, ""))
        return ""


class WeChatChannel:
    name = "wechat"

    def __init__(self, conf: dict) -> None:
        self.api_base = str(conf.get("api_base", "https://api.weixin.qq.com")).rstrip("/")
        self.access_token = conf.get("access_token", "")
        self.template_id = str(conf.get("template_id", ""))
        self.timeout_s = float(conf.get("timeout_s", 10.0))

    async def send(self, to: str, text: str, url: str) -> str:
        endpoint = (f"{self.api_base}/cgi-bin/message/template/send?access_token="
                    f"{secret(self.access_token)}")
        body = {"touser": to, "template_id": self.template_id, "url": url,
                "data": {"first": {"value": text}}}
        status, answer = await _post(endpoint, json_body=body, timeout_s=self.timeout_s)
        if status >= 500:
            raise ChannelError(f"WeChat answered {status}", retryable=True)
        if not isinstance(answer, dict) or answer.get("errcode") != 0:
            code = answer.get("errcode") if isinstance(answer, dict) else status
            # -1: system busy; 40001/42001: token invalid or expired (refresh, then retry)
            raise ChannelError(f"WeChat errcode {code}", retryable=code in (-1, 40001, 42001))
        return str(answer.get("msgid", ""))


def make_channel(name: str, conf: dict) -> Channel:
    if name == "log":
        return LogChannel()
    if name == "http-sms":
        return HttpSmsChannel(conf)
    if name == "wechat":
        return WeChatChannel(conf)
    raise ValueError(f"unknown notification channel {name!r}: log, http-sms, wechat")
