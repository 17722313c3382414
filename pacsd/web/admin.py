"""Security administration over HTTP, under /api/v1/admin (secadmin only: action ``admin``,
MLPS 6, 7). Every change is audited by the service (MLPS 9). Users, tokens, departments
and roles (R-E1; docs/security.md "Administration API"), plus:

* ``GET /api/v1/admin/studies/{study}/labels`` — ``{"study": UID, "labels": [...]}``
* ``PUT /api/v1/admin/studies/{study}/labels`` — body ``{"labels": ["VIP", ...]}``
  replaces the study's sensitivity labels (MLPS 8; audited as ``labels-changed``). A
  study may be labelled before it arrives, so an unknown UID is not an error (and the
  answer does not tell whether the study exists).
* ``PUT /api/v1/admin/users/{user}/scope`` — body ``{"institutions": [...] | null,
  "clearances": [...]}`` sets a user's data scope (R-A12; audited as
  ``user-scope-changed``). ``null`` institutions = ``[security] default_institutions``.
* ``GET /api/v1/admin/metrics`` — this server process's in-process state, for memory
  soaks and operators (issue 6, R-H1): ``pid``, ``rss_bytes`` and ``rss_peak_bytes``
  (VmRSS / VmHWM), the bounded retrieve caches (``caches.metadata`` /
  ``caches.render``: ``bytes``, ``entries``, ``max_bytes``, ``hits``, ``misses``) and the
  requests in flight. Sizes and counters only: no keys, UIDs or patient data. Each
  worker process of ``[server] workers`` has its own caches; the answer is the one
  process's that served the request.
"""
from __future__ import annotations

import orjson
from aiohttp import web

from .. import errors
from ..services.audit import iso_utc
from ..services.security import ADMIN_ROLES, ROLE_ACTIONS, ROLES
from .auth import client_device, client_ip, current_actor, json_object, requires
from .dicomweb.common import path_uid
from .keys import ARCHIVE, RETRIEVE, SECURITY


def _json(body, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status,
                        content_type="application/json",
                        headers={"Cache-Control": "no-store"})


_body = json_object


def _strings(value, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value) \
            or len(value) > 100:
        raise errors.BadRequest(f"{name} is a list of at most 100 strings")
    return value


@requires("admin")
async def get_labels(request: web.Request) -> web.Response:
    study = path_uid(request, "study")
    security = request.app[SECURITY]
    labels = await request.app[ARCHIVE].run(security.study_labels, study)
    return _json({"study": study, "labels": labels})


@requires("admin")
async def put_labels(request: web.Request) -> web.Response:
    study = path_uid(request, "study")
    labels = _strings((await _body(request)).get("labels"), "labels")
    security = request.app[SECURITY]
    actor = current_actor(request)
    result = await request.app[ARCHIVE].run(lambda: security.set_study_labels(
        study, labels, actor=actor, source_ip=client_ip(request),
        device=client_device(request)))
    return _json({"study": study, "labels": result})


@requires("admin")
async def put_user_scope(request: web.Request) -> web.Response:
    body = await _body(request)
    insts = body.get("institutions")
    insts = None if insts is None else _strings(insts, "institutions")
    clear = _strings(body.get("clearances", []), "clearances")
    security = request.app[SECURITY]
    actor = current_actor(request)
    name = request.match_info["user"]
    await request.app[ARCHIVE].run(lambda: security.set_user_scope(
        name, insts, clear, actor=actor, source_ip=client_ip(request)))
    return _json({"user": name, "institutions": insts, "clearances": sorted(set(clear))})


# --- users, tokens, departments, roles (R-E1, MLPS 5-7) -----------------------------------

def _iso(ts: float | None) -> str | None:
    return None if ts is None else iso_utc(ts)


def _user_json(security, u) -> dict:
    """A user as the admin API shows it: never a password hash or a TOTP secret."""
    return {"id": f"user:{u.pk}", "username": u.username, "roles": list(u.roles),
            "department": u.department, "institutions": None if u.institutions is None
            else list(u.institutions), "clearances": list(u.clearances),
            "disabled": u.disabled, "locked": security.is_locked(u),
            "inactive": not u.disabled and security.is_inactive(u),
            "totp_enrolled": bool(u.totp_secret), "created_at": _iso(u.created_at),
            "last_login_at": _iso(u.last_login_at),
            "password_changed_at": _iso(u.password_changed_at)}


def _token_json(security, t) -> dict:
    now = security.clock()
    state = "revoked" if t.revoked_at else ("expired" if t.expires_at <= now else "valid")
    return {"id": t.pk, "user": f"user:{t.user_pk}", "name": t.name,
            "scopes": list(t.scopes), "institutions": None if t.institutions is None
            else list(t.institutions), "state": state, "created_at": _iso(t.created_at),
            "expires_at": _iso(t.expires_at), "last_used_at": _iso(t.last_used_at)}


def _ctx(request: web.Request) -> dict:
    return {"actor": current_actor(request), "source_ip": client_ip(request)}


async def _run(request: web.Request, fn):
    return await request.app[ARCHIVE].run(fn)


@requires("admin")
async def list_users(request: web.Request) -> web.Response:
    sec = request.app[SECURITY]
    users = await _run(request, sec.list_users)
    return _json({"users": [_user_json(sec, u) for u in users]})


@requires("admin")
async def get_user(request: web.Request) -> web.Response:
    sec = request.app[SECURITY]
    u = await _run(request, lambda: sec._user(request.match_info["user"]))
    return _json(_user_json(sec, u))


@requires("admin")
async def create_user(request: web.Request) -> web.Response:
    """POST {"username", "password", "roles", ["department", "institutions",
    "clearances"]} -> 201 (audited: user-created, user-changed, user-scope-changed)."""
    body = await _body(request)
    name, password = body.get("username"), body.get("password")
    if not isinstance(name, str) or not isinstance(password, str):
        raise errors.BadRequest("username and password are strings")
    roles = _strings(body.get("roles"), "roles")
    dept = body.get("department")
    if dept is not None and not isinstance(dept, str):
        raise errors.BadRequest("department is a string")
    insts = body.get("institutions")
    insts = None if insts is None else _strings(insts, "institutions")
    clear = _strings(body.get("clearances", []), "clearances")
    sec, ctx = request.app[SECURITY], _ctx(request)

    def make():
        if dept is not None and not sec.accounts.department_exists(dept):
            raise errors.BadRequest("no such department")
        sec.create_user(name, password, roles, temporary=True, **ctx)
        if dept is not None:
            sec.update_user(name, department=dept, **ctx)
        if insts is not None or clear:
            sec.set_user_scope(name, insts, clear, **ctx)
        return sec._user(name)
    return _json(_user_json(sec, await _run(request, make)), status=201)


@requires("admin")
async def patch_user(request: web.Request) -> web.Response:
    """PATCH {"roles"?, "department"?, "disabled"?, "password"?}: audited."""
    body = await _body(request)
    unknown = set(body) - {"roles", "department", "disabled", "password"}
    if unknown:
        raise errors.BadRequest(f"unknown field {sorted(unknown)[0][:32]!r}")
    name = request.match_info["user"]
    sec, ctx = request.app[SECURITY], _ctx(request)
    kwargs = {}
    if "roles" in body:
        kwargs["roles"] = _strings(body["roles"], "roles")
    if "disabled" in body:
        if not isinstance(body["disabled"], bool):
            raise errors.BadRequest("disabled is true or false")
        kwargs["disabled"] = body["disabled"]
    if "department" in body:
        if body["department"] is not None and not isinstance(body["department"], str):
            raise errors.BadRequest("department is a string or null")
        kwargs["department"] = body["department"]
    password = body.get("password")
    if password is not None and not isinstance(password, str):
        raise errors.BadRequest("password is a string")

    def change():
        if password is not None:
            sec.set_password(name, password, temporary=True, **ctx)
        if kwargs:
            sec.update_user(name, **kwargs, **ctx)
        return sec._user(name)
    return _json(_user_json(sec, await _run(request, change)))


@requires("admin")
async def delete_user(request: web.Request) -> web.Response:
    """DELETE = disable (MLPS 5: accounts are never reused and the audit trail keeps
    naming them): its sessions and tokens stop working at once."""
    sec, ctx = request.app[SECURITY], _ctx(request)
    await _run(request, lambda: sec.update_user(request.match_info["user"], disabled=True,
                                                **ctx))
    return web.Response(status=204)


@requires("admin")
async def unlock_user(request: web.Request) -> web.Response:
    sec = request.app[SECURITY]
    actor = current_actor(request)
    await _run(request, lambda: sec.unlock_user(request.match_info["user"], actor=actor))
    return web.Response(status=204)


@requires("admin")
async def list_tokens(request: web.Request) -> web.Response:
    sec = request.app[SECURITY]
    tokens = await _run(request, lambda: sec.list_tokens(request.query.get("user") or None))
    return _json({"tokens": [_token_json(sec, t) for t in tokens]})


@requires("admin")
async def create_token(request: web.Request) -> web.Response:
    """POST {"user", "scopes", "days", ["name", "institutions"]} -> 201 with the token,
    shown this once (stored as its SHA-256)."""
    body = await _body(request)
    user, days = body.get("user"), body.get("days", 30)
    if not isinstance(user, str) or not isinstance(days, (int, float)) or \
            isinstance(days, bool):
        raise errors.BadRequest("user is a string and days a number")
    scopes = _strings(body.get("scopes"), "scopes")
    name = body.get("name", "")
    if not isinstance(name, str):
        raise errors.BadRequest("name is a string")
    insts = body.get("institutions")
    insts = None if insts is None else _strings(insts, "institutions")
    sec, actor = request.app[SECURITY], current_actor(request)
    pk, token, expires = await _run(request, lambda: sec.create_token(
        user, scopes, float(days), name=name, actor=actor, institutions=insts))
    return _json({"id": pk, "token": token, "expires_at": iso_utc(expires)}, status=201)


@requires("admin")
async def revoke_token(request: web.Request) -> web.Response:
    try:
        pk = int(request.match_info["token"])
    except ValueError:
        raise errors.NotFound("no such token") from None
    sec, actor = request.app[SECURITY], current_actor(request)
    await _run(request, lambda: sec.revoke_token(pk, actor=actor))
    return web.Response(status=204)


@requires("admin")
async def list_departments(request: web.Request) -> web.Response:
    sec = request.app[SECURITY]
    return _json({"departments": await _run(request, sec.departments)})


@requires("admin")
async def create_department(request: web.Request) -> web.Response:
    body = await _body(request)
    name, desc = body.get("name"), body.get("description", "")
    if not isinstance(name, str) or not isinstance(desc, str):
        raise errors.BadRequest("name and description are strings")
    sec, ctx = request.app[SECURITY], _ctx(request)
    await _run(request, lambda: sec.change_department("create", name, description=desc,
                                                      **ctx))
    return _json({"name": name, "description": desc}, status=201)


@requires("admin")
async def patch_department(request: web.Request) -> web.Response:
    body = await _body(request)
    new_name, desc = body.get("name"), body.get("description")
    if not isinstance(new_name, (str, type(None))) or not isinstance(desc, (str, type(None))):
        raise errors.BadRequest("name and description are strings")
    sec, ctx = request.app[SECURITY], _ctx(request)
    name = request.match_info["department"]
    await _run(request, lambda: sec.change_department("update", name, new_name=new_name,
                                                      description=desc, **ctx))
    return web.Response(status=204)


@requires("admin")
async def delete_department(request: web.Request) -> web.Response:
    sec, ctx = request.app[SECURITY], _ctx(request)
    name = request.match_info["department"]
    await _run(request, lambda: sec.change_department("delete", name, **ctx))
    return web.Response(status=204)


@requires("admin")
async def list_roles(request: web.Request) -> web.Response:
    """The roles and what each may do (fixed in code: MLPS 6 separation of duties)."""
    return _json({"roles": {r: sorted(a) for r, a in ROLE_ACTIONS.items() if r in ROLES},
                  "exclusive": sorted(ADMIN_ROLES)})


def _proc_memory() -> dict[str, int | None]:
    """VmRSS and VmHWM of this process in bytes (None where /proc is not there)."""
    out: dict[str, int | None] = {"rss_bytes": None, "rss_peak_bytes": None}
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith((b"VmRSS:", b"VmHWM:")):
                    key = "rss_bytes" if line.startswith(b"VmRSS:") else "rss_peak_bytes"
                    out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


@requires("admin")
async def metrics(request: web.Request) -> web.Response:
    """In-process sizes of this server process (module docstring); no patient data."""
    import os

    from .app import INFLIGHT

    retrieve = request.app[RETRIEVE]
    tracker = request.app.get(INFLIGHT)
    return _json({"pid": os.getpid(), **_proc_memory(),
                  "caches": {"metadata": retrieve.metadata_cache.stats(),
                             "render": retrieve.render_cache.stats()},
                  "requests_in_flight": tracker.count if tracker is not None else None})


def add_admin_routes(router: web.UrlDispatcher) -> None:
    a = "/api/v1/admin"
    router.add_get(f"{a}/metrics", metrics)
    router.add_get(f"{a}/studies/{{study}}/labels", get_labels)
    router.add_put(f"{a}/studies/{{study}}/labels", put_labels)
    router.add_put(f"{a}/users/{{user}}/scope", put_user_scope)
    router.add_get(f"{a}/users", list_users)
    router.add_post(f"{a}/users", create_user)
    router.add_get(f"{a}/users/{{user}}", get_user)
    router.add_patch(f"{a}/users/{{user}}", patch_user)
    router.add_delete(f"{a}/users/{{user}}", delete_user)
    router.add_post(f"{a}/users/{{user}}/unlock", unlock_user)
    router.add_get(f"{a}/tokens", list_tokens)
    router.add_post(f"{a}/tokens", create_token)
    router.add_delete(f"{a}/tokens/{{token}}", revoke_token)
    router.add_get(f"{a}/departments", list_departments)
    router.add_post(f"{a}/departments", create_department)
    router.add_patch(f"{a}/departments/{{department}}", patch_department)
    router.add_delete(f"{a}/departments/{{department}}", delete_department)
    router.add_get(f"{a}/roles", list_roles)
