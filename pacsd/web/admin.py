"""Security administration over HTTP, under /api/v1/admin (secadmin only: action ``admin``,
MLPS 6, 7). Every change is audited by the service (MLPS 9).

* ``GET /api/v1/admin/studies/{study}/labels`` — ``{"study": UID, "labels": [...]}``
* ``PUT /api/v1/admin/studies/{study}/labels`` — body ``{"labels": ["VIP", ...]}``
  replaces the study's sensitivity labels (MLPS 8; audited as ``labels-changed``). A
  study may be labelled before it arrives, so an unknown UID is not an error (and the
  answer does not tell whether the study exists).
* ``PUT /api/v1/admin/users/{user}/scope`` — body ``{"institutions": [...] | null,
  "clearances": [...]}`` sets a user's data scope (R-A12; audited as
  ``user-scope-changed``). ``null`` institutions = ``[security] default_institutions``.
"""
from __future__ import annotations

import orjson
from aiohttp import web

from .. import errors
from .auth import client_device, client_ip, current_actor, requires
from .dicomweb.common import path_uid
from .keys import ARCHIVE, SECURITY


def _json(body, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status,
                        content_type="application/json",
                        headers={"Cache-Control": "no-store"})


async def _body(request: web.Request) -> dict:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise errors.BadRequest("send a JSON object") from None
    if not isinstance(body, dict):
        raise errors.BadRequest("send a JSON object")
    return body


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


def add_admin_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/admin/studies/{study}/labels", get_labels)
    router.add_put("/api/v1/admin/studies/{study}/labels", put_labels)
    router.add_put("/api/v1/admin/users/{user}/scope", put_user_scope)
