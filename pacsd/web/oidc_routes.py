"""OIDC login routes (R-E1; the flow is ``services/oidc.py``, docs/security.md "OIDC login").

* ``GET /api/v1/auth/oidc/login`` — sets the browser-binding cookie and redirects to the
  provider.
* ``GET /api/v1/auth/oidc/callback`` — the provider sends the browser back here. With
  ``Accept: application/json`` the answer is the login JSON (as ``POST /api/v1/auth/login``);
  otherwise a page that keeps the token in the tab's sessionStorage (where the web viewer
  reads it) and opens ``post_login_redirect``. Refusals are 401 (audited).
* ``POST /api/v1/auth/oidc/otp`` ``{"ticket", "otp"}`` — pacsd's TOTP code for a user who
  needs one when the provider did not assert multi-factor login.

* ``POST /api/v1/auth/oidc/logout`` — revokes the pacsd session (as ``POST
  /api/v1/auth/logout``) and answers ``{"end_session_url": ...}``: where the browser goes
  to end its session at the provider too (RP-initiated logout), or null when the provider
  offers none or cannot be reached (the pacsd session is revoked either way).
"""
from __future__ import annotations

import secrets

import orjson
from aiohttp import web

from .. import errors
from ..services.oidc import COOKIE, OidcLogin
from ..services.audit import iso_utc
from .auth import (_password_change_ok, authenticated, client_device, client_ip, end_session,
                   public)

OIDC = web.AppKey("oidc", OidcLogin)


def _oidc(request: web.Request) -> OidcLogin:
    oidc = request.app.get(OIDC)
    if oidc is None:
        raise errors.NotFound("OIDC login is not configured ([security.oidc] issuer)")
    return oidc


def _no_store(resp: web.StreamResponse) -> web.StreamResponse:
    resp.headers["Cache-Control"] = "no-store"
    return resp


@public
async def oidc_login(request: web.Request) -> web.Response:
    oidc = _oidc(request)
    browser = secrets.token_urlsafe(32)
    url = await oidc.begin(browser)
    resp = web.HTTPFound(url)
    resp.set_cookie(COOKIE, browser, max_age=int(oidc.conf.login_timeout_s),
                    path="/api/v1/auth/oidc", httponly=True, samesite="Lax",
                    secure=request.secure)
    raise _no_store(resp)


def _login_body(result: dict) -> dict:
    if "expires_at" in result:
        result = {**result, "expires_at": iso_utc(result["expires_at"]),
                  "password_change_required": False}
    return result


@public
async def oidc_callback(request: web.Request) -> web.Response:
    oidc = _oidc(request)
    q = request.query
    if q.get("error"):
        oidc._refused(f"provider error {q.get('error', '')[:64]}", client_ip(request),
                      client_device(request))
        raise errors.Unauthorized("the identity provider refused the login")
    result = _login_body(await oidc.finish(
        code=q.get("code", ""), state=q.get("state", ""),
        browser=request.cookies.get(COOKIE, ""), source_ip=client_ip(request),
        device=client_device(request)))
    wants_json = "application/json" in request.headers.get("Accept", "")
    if wants_json or "token" not in result:
        resp = web.Response(body=orjson.dumps(result), content_type="application/json")
    else:
        token = orjson.dumps(result["token"]).decode().replace("<", "\\u003c")
        target = orjson.dumps(oidc.conf.post_login_redirect).decode().replace("<", "\\u003c")
        resp = web.Response(content_type="text/html", text=(
            "<!doctype html><meta charset=utf-8><title>pacsd</title><script>"
            f"sessionStorage.setItem('pacsd.token',{token});"
            "sessionStorage.setItem('pacsd.via','oidc');"
            f"location.replace({target});"
            "</script>"))
        resp.headers["Content-Security-Policy"] = "default-src 'none'; script-src 'unsafe-inline'"
    resp.del_cookie(COOKIE, path="/api/v1/auth/oidc")
    return _no_store(resp)


@public
async def oidc_otp(request: web.Request) -> web.Response:
    oidc = _oidc(request)
    try:
        body = orjson.loads(await request.read())
        ticket, otp = body["ticket"], body["otp"]
        if not isinstance(ticket, str) or not isinstance(otp, str):
            raise TypeError
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise errors.BadRequest('send JSON {"ticket": ..., "otp": "123456"}') from None
    result = _login_body(await oidc.finish_otp(
        ticket=ticket, otp=otp, source_ip=client_ip(request), device=client_device(request)))
    return _no_store(web.Response(body=orjson.dumps(result), content_type="application/json"))


@_password_change_ok
@authenticated
async def oidc_logout(request: web.Request) -> web.Response:
    oidc = _oidc(request)
    await end_session(request)
    try:
        url = await oidc.end_session_url()
    except errors.PacsdError:
        url = None  # provider down: pacsd's own session is over all the same
    return _no_store(web.Response(body=orjson.dumps({"end_session_url": url}),
                                  content_type="application/json"))


def add_oidc_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/auth/oidc/login", oidc_login)
    router.add_get("/api/v1/auth/oidc/callback", oidc_callback)
    router.add_post("/api/v1/auth/oidc/otp", oidc_otp)
    router.add_post("/api/v1/auth/oidc/logout", oidc_logout)
