"""aiohttp middlewares: the one place PacsdError becomes an HTTP answer, plus CORS and
security headers.

Errors are answered as ``text/plain`` with ``X-Content-Type-Options: nosniff`` (SEC-24)
and never echo request values or patient data (SEC-23). Anything unexpected becomes a
500 whose body says only "internal error" and whose log line carries no request data.
"""
from __future__ import annotations

import logging

from aiohttp import web

from .. import errors

log = logging.getLogger(__name__)

#: Request key set by streaming handlers once the response head has been sent.
STREAMING = "pacsd.streaming_response"

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "SAMEORIGIN",
}


def error_response(status: int, reason: str, headers: dict[str, str] | None = None
                   ) -> web.Response:
    resp = web.Response(status=status, text=reason + "\n", content_type="text/plain",
                        charset="utf-8")
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except Exception as exc:
        started = request.get(STREAMING)
        if started is None:
            return _map_exception(request, exc)
        # Headers are gone already: abort the connection so the client sees an error
        # rather than a short body that looks complete (FT-8, LD-9).
        if not isinstance(exc, (errors.PacsdError, ConnectionResetError)):
            log.exception("error while streaming %s", request.rel_url.path[:64])
        else:
            log.warning("aborted a streamed response: %s", getattr(exc, "reason", exc))
        if request.transport is not None:
            request.transport.close()
        return started


def _map_exception(request: web.Request, exc: Exception) -> web.Response:
    resp = _error_for(request, exc)
    if request.can_read_body and not request.content.at_eof():
        # The body was not read (413 on Content-Length, 415 ...): the connection cannot
        # carry another request, so say so instead of leaving the client to find out.
        resp.force_close()
    return resp


def _error_for(request: web.Request, exc: Exception) -> web.Response:
    try:
        raise exc
    except errors.PacsdError as exc:
        return error_response(exc.http_status, exc.reason, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, exc.reason, headers)
    except (ConnectionResetError, OSError) as exc:
        if isinstance(exc, ConnectionResetError) or request.transport is None or \
                request.transport.is_closing():
            raise  # the client went away (LD-9): nothing to answer
        log.exception("I/O error in %s %s", request.method, request.rel_url.path[:64])
        return error_response(503, "storage temporarily unavailable", {"Retry-After": "30"})
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.rel_url.path[:64])
        return error_response(500, "internal error")


_CORS_EXPOSE = "Content-Length, Content-Type, ETag, Warning, X-Total-Count, Content-Range"


def make_cors_middleware(allowed_origins: list[str]):
    """CORS for browser viewers (issue 2 item 10): only listed origins, echoed back, never
    ``*``; credentials allowed only together with an explicit origin (SEC-16). This
    middleware answers the preflight; the headers of the actual responses are added by
    :func:`make_cors_prepare` when the response is prepared."""
    allowed = set(allowed_origins)
    allow_headers = "Accept, Authorization, Content-Type, If-None-Match, Range"

    @web.middleware
    async def cors_middleware(request: web.Request, handler):
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and origin and \
                "Access-Control-Request-Method" in request.headers:
            if origin not in allowed:
                return error_response(403, "origin not allowed")
            resp = web.Response(status=204)
            resp.headers.update({
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "GET, HEAD, POST, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": allow_headers,
                "Access-Control-Allow-Credentials": "true",
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            })
            return resp
        return await handler(request)

    return cors_middleware


def make_cors_prepare(allowed_origins: list[str]):
    """The CORS headers of every response to an allowed origin, added as the response is
    prepared: WADO-RS metadata, frames and instances are streamed, prepared inside their
    handlers, where headers set afterwards by a middleware would be lost (OHIF's
    cross-origin metadata requests were blocked; issue 8 item 5)."""
    allowed = set(allowed_origins)

    async def cors_on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if not origin or origin not in allowed:
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE
        vary = response.headers.get("Vary")
        if not vary:
            response.headers["Vary"] = "Origin"
        elif "origin" not in vary.lower():
            response.headers["Vary"] = vary + ", Origin"

    return cors_on_prepare


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Streamed responses are prepared inside handlers; add the headers there too."""
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
