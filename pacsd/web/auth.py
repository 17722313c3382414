"""Authentication, authorization and audit for every HTTP route (R-E1, R-E3, R-E4, SEC-5
.. SEC-8, SEC-21, MLPS 6, 9).

One mechanism: each handler *declares* what it needs with a decorator from this module,
and :func:`auth_middleware` enforces the declaration for every route, DICOMweb and
plugin alike:

* ``@public`` — no authentication (health, login).
* ``@authenticated`` — any signed-in actor (logout, whoami).
* ``@requires(action, audit=EVENT)`` — an actor whose roles and token scopes give
  ``action`` (``read``, ``write``, ``delete``, ``audit-read``, ``admin``) and whom no
  plugin vetoes (``SecurityService.permission_allowed``); when ``audit`` is given, the
  request is written to the audit trail as that event type, with its outcome.
* no declaration — denied (403) when security is enabled: plugin routes are
  deny-by-default (SEC-21); with security disabled (loopback only) they work as before.

The actor comes from the ``actor_from_request`` plugin hook first (e.g. OIDC), then from
``Authorization: Bearer <session or API token>``; with ``[security] enabled = false`` it
is the implicit local operator (``services.security.LOCAL``). Missing or bad credentials
answer 401 with ``WWW-Authenticate: Bearer`` (SEC-6, SEC-7), too many failures from one
address 429 (SEC-8), a denial 403 that is audited as ``permission-denied`` (SEC-5).
Handlers add what only they know to the audit record (studies stored, instances served,
result counts) with :func:`note_audit`.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from urllib.parse import urlsplit, urlunsplit

import orjson
from aiohttp import web

from .. import errors
from ..dicom import is_valid_uid
from ..services.audit import is_event_type, iso_utc
from ..services.security import ACTIONS, LOCAL, Actor, Resource
from .keys import ARCHIVE, AUDIT, SECURITY

log = logging.getLogger(__name__)

PUBLIC = "public"
AUTHENTICATED = "authenticated"
#: Request keys: the resolved actor, and what the handler adds to its audit record.
ACTOR = "pacsd.actor"
AUDIT_NOTE = "pacsd.audit_note"
CLIENT_IP = "pacsd.client_ip"


# --- declarations -----------------------------------------------------------------------

def requires(action: str, *, audit: str | None = None):
    """Declare the action a handler needs (and, optionally, the audit event it writes)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; one of {sorted(ACTIONS)}")
    if audit is not None and not is_event_type(audit):
        raise ValueError(f"unknown audit event type {audit!r}")

    def mark(handler):
        handler.pacsd_action = action
        handler.pacsd_audit = audit
        return handler
    return mark


def public(handler):
    """Declare a handler that needs no authentication."""
    handler.pacsd_action = PUBLIC
    return handler


def authenticated(handler):
    """Declare a handler any authenticated actor may call."""
    handler.pacsd_action = AUTHENTICATED
    return handler


def route_action(handler) -> str | None:
    return getattr(handler, "pacsd_action", None)


def note_audit(request: web.Request, *, studies: dict[str, int] | None = None,
               object_count: int | None = None, **detail) -> None:
    """Add to this request's audit record: ``studies`` (StudyInstanceUID -> instance
    count: one event per study), ``object_count``, and PHI-free ``detail`` values."""
    note = request.setdefault(AUDIT_NOTE, {})
    if studies is not None:
        note["studies"] = studies
    if object_count is not None:
        note["object_count"] = object_count
    note.setdefault("detail", {}).update(detail)


def audit_denied(request: web.Request, action: str, *, study_uid: str | None,
                 object_count: int | None = None, reason: str) -> None:
    """Record a ``permission-denied`` event for a refusal a handler decided itself (e.g. a
    STOW-RS instance whose study is outside the caller's data scope, R-A12)."""
    mi = request.match_info
    request.app[AUDIT].record(
        "permission-denied", outcome="denied", actor=current_actor(request),
        source_ip=client_ip(request), device=client_device(request), study_uid=study_uid,
        object_count=object_count,
        detail={"action": action, "route": mi.route.resource.canonical
                if mi.route.resource else "", "method": request.method, "reason": reason})


def client_ip(request: web.Request) -> str:
    """The client's address: the TCP peer, or, when the peer is a trusted reverse proxy
    (``[security] trusted_proxies``), the right-most X-Forwarded-For address that is not
    itself a trusted proxy (the part of the header no client can forge)."""
    cached = request.get(CLIENT_IP)
    if cached is not None:
        return cached
    peer = request.remote or ""
    ip = peer
    trusted = request.app[SECURITY].trusted_proxies if SECURITY in request.app else []
    if trusted and _in(peer, trusted):
        hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", [])
                for h in v.split(",")]
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break  # garbage: stop at the last address we could trust
            ip = hop
            if not _in(hop, trusted):
                break
    request[CLIENT_IP] = ip
    return ip


def _in(address: str, networks) -> bool:
    try:
        a = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(a in n for n in networks)


def client_device(request: web.Request) -> str:
    return request.headers.get("User-Agent", "")[:128]


def current_actor(request: web.Request) -> Actor:
    return request.get(ACTOR, LOCAL)


def _study_of(request: web.Request) -> str | None:
    uid = request.match_info.get("study") or request.query.get("studyUID")
    return uid if uid and is_valid_uid(uid) else None


def _redacted(url: str) -> str:
    """A store URL without user info (R-E3 "where stored", never a credential)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        parts = parts._replace(netloc=host)
    return urlunsplit(parts)


def _store_location(store) -> str:
    """Every storage copy an instance is written to, space-separated (R-E3). Read from
    the opened store, which knows its copies; nothing is re-parsed per request."""
    copies = getattr(store, "copies", None) or [store]
    return " ".join(_redacted(c.url) for c in copies)


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, errors.PacsdError):
        return exc.http_status
    if isinstance(exc, web.HTTPException):
        return exc.status
    if isinstance(exc, (asyncio.CancelledError, ConnectionResetError)):
        return 499  # the client went away
    return 500


# --- the middleware ---------------------------------------------------------------------

@web.middleware
async def auth_middleware(request: web.Request, handler):
    mi = request.match_info
    if mi.http_exception is not None:
        return await handler(request)  # 404 / 405: no resource, nothing to protect
    declared = route_action(mi.route.handler)
    if declared == PUBLIC:
        return await handler(request)
    security = request.app[SECURITY]
    ip, device = client_ip(request), client_device(request)
    actor = security.plugins.first("actor_from_request", request=request)
    if actor is None:
        if security.enabled:
            actor = await security.authenticate_bearer(
                request.headers.get("Authorization"), source_ip=ip, device=device)
        else:
            actor = LOCAL
    request[ACTOR] = actor
    if getattr(actor, "must_change_password", False) and \
            not getattr(mi.route.handler, "pacsd_password_change_ok", False):
        # MLPS 1: a forced or expired password is changed before anything else.
        request.app[AUDIT].record(
            "permission-denied", outcome="denied", actor=actor, source_ip=ip,
            device=device, detail={"action": declared or "undeclared",
                                   "route": mi.route.resource.canonical
                                   if mi.route.resource else "", "method": request.method,
                                   "reason": "password change required"})
        raise errors.Forbidden("change your password first: POST /api/v1/auth/password")
    resource = Resource(route=mi.route.resource.canonical if mi.route.resource else "",
                        method=request.method, study_instance_uid=_study_of(request))
    if declared is None:
        allowed = not security.enabled  # SEC-21: undeclared routes are denied
    elif declared == AUTHENTICATED:
        allowed = True
    else:
        allowed = security.permission_allowed(actor, declared, resource)
    audit = request.app[AUDIT]
    if not allowed:
        audit.record("permission-denied", outcome="denied", actor=actor, source_ip=ip,
                     device=device, study_uid=resource.study_instance_uid,
                     detail={"action": declared or "undeclared", "route": resource.route,
                             "method": request.method})
        raise errors.Forbidden("not authorised for this action"
                               if declared else "this route declares no permission")
    event = getattr(mi.route.handler, "pacsd_audit", None)
    if event is None:
        return await handler(request)
    try:
        resp = await handler(request)
    except BaseException as exc:
        _audit_request(request, event, actor, resource, _status_of(exc))
        raise
    _audit_request(request, event, actor, resource, resp.status)
    return resp


def _audit_request(request: web.Request, event: str, actor: Actor, resource: Resource,
                   status: int) -> None:
    note = request.get(AUDIT_NOTE, {})
    detail = {"route": resource.route, "method": request.method, "status": status,
              **note.get("detail", {})}
    outcome = "success" if status < 400 else "failure"
    location = ""
    if event == "instances-stored":
        location = _store_location(request.app[ARCHIVE].store)
    common = dict(outcome=outcome, actor=actor, source_ip=client_ip(request),
                  device=client_device(request), location=location, detail=detail)
    audit = request.app[AUDIT]
    studies = note.get("studies")
    if studies:
        for study, count in studies.items():
            audit.record(event, study_uid=study, object_count=count, **common)
    else:
        audit.record(event, study_uid=resource.study_instance_uid,
                     object_count=note.get("object_count"), **common)


# --- /api/v1/auth -----------------------------------------------------------------------

def _json(body, status: int = 200) -> web.Response:
    # Tokens and audit records must not sit in shared caches (SEC-10).
    return web.Response(body=orjson.dumps(body), status=status,
                        content_type="application/json",
                        headers={"Cache-Control": "no-store"})


async def json_object(request: web.Request, hint: str = "") -> dict:
    """The request body as a JSON object, or 400 "send a JSON object HINT" (admin API,
    plugin routes)."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise errors.BadRequest(f"send a JSON object {hint}".rstrip())
    return body


@public
async def login(request: web.Request) -> web.Response:
    """POST {"username", "password"[, "otp"]} -> {"token", "expires_at", ...} (a
    session). ``otp``: the TOTP code administrators must give (MLPS 4)."""
    try:
        body = orjson.loads(await request.read())
        username, password = body["username"], body["password"]
        otp = body.get("otp")
        if not isinstance(username, str) or not isinstance(password, str) or \
                not isinstance(otp, (str, type(None))):
            raise TypeError
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise errors.BadRequest('send JSON {"username": ..., "password": ...'
                                '[, "otp": "123456"]}') from None
    security = request.app[SECURITY]
    token, expires, actor = await security.login(
        username, password, source_ip=client_ip(request), device=client_device(request),
        otp=otp)
    return _json({"token": token, "token_type": "Bearer", "expires_at": iso_utc(expires),
                  "idle_timeout_s": security.conf.session_idle_timeout_s,
                  "user": actor.name, "roles": sorted(actor.roles),
                  "password_change_required": actor.must_change_password})


def _password_change_ok(handler):
    """Allowed to a session that must change its password first."""
    handler.pacsd_password_change_ok = True
    return handler


@_password_change_ok
@authenticated
async def change_password(request: web.Request) -> web.Response:
    """POST {"password": current, "new_password": new} (a session; MLPS 1)."""
    try:
        body = orjson.loads(await request.read())
        old, new = body["password"], body["new_password"]
        if not isinstance(old, str) or not isinstance(new, str):
            raise TypeError
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise errors.BadRequest('send JSON {"password": ..., "new_password": ...}') from None
    await request.app[SECURITY].change_own_password(current_actor(request), old, new,
                                                    source_ip=client_ip(request))
    return web.Response(status=204)


@_password_change_ok
@authenticated
async def logout(request: web.Request) -> web.Response:
    await end_session(request)
    return web.Response(status=204)


async def end_session(request: web.Request) -> None:
    """Revoke the caller's session at once (logout; also the OIDC logout's first step)."""
    await request.app[SECURITY].logout(current_actor(request), source_ip=client_ip(request),
                                       device=client_device(request))


@_password_change_ok
@authenticated
async def whoami(request: web.Request) -> web.Response:
    actor = current_actor(request)
    return _json({"actor": actor.id, "user": actor.name, "roles": sorted(actor.roles),
                  "actions": sorted(actor.actions()),
                  "password_change_required": actor.must_change_password})


def add_auth_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/v1/auth/login", login)
    router.add_post("/api/v1/auth/logout", logout)
    router.add_post("/api/v1/auth/password", change_password)
    router.add_get("/api/v1/auth/me", whoami)
    # /api/v1/audit (the auditor's API and page) lives in web/audit.py.


def undeclared_routes(app: web.Application) -> list[str]:
    """Routes whose handler declares nothing: 403 while security is enabled (SEC-21)."""
    out = []
    for route in app.router.routes():
        if route_action(route.handler) is None and route.method != "HEAD":
            out.append(f"{route.method} {route.resource.canonical if route.resource else '?'}")
    return out
