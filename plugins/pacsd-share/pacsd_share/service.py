"""The digital service switched on or off per hospital and per patient (R-C9), and the
patient's feedback (R-C8).

A row of ``share_service`` (scope ``institution`` with the InstitutionName of the
exam's series, or ``patient`` with the PatientID) says enabled or not; without a row
the default is ``[plugins.share] service_default`` (on). Rule: off when the patient or
the exam's hospital is switched off; else on when one of them is switched on; else the
default. When the service is off for a
patient, or for the hospital of an exam: no link is made from a final report (so no
SMS), no self-enrolment code is sent, and a link or session already given out shows a
"service not enabled" page instead of anything of that exam (an exam of a hospital
that is off is left out of a patient space; nothing of it leaks). Switches are changed
by staff (``PUT /api/v1/plugins/share/service``, audited ``share.service``) and take
effect within ``cache_ttl_s`` on other processes, at once on this one.
"""
from __future__ import annotations

import time

import sqlalchemy as sa
from aiohttp import web

from pacsd.plugin_api import api_of, current_actor, errors, json_object, note_audit, requires

import pacsd_share as S

from . import links as L


def _table(api) -> dict[tuple[str, str], bool]:
    state = api.plugin_state(S.NAME)
    hit = state.get("service")
    now = time.time()
    if hit is not None and hit[0] > now:
        return hit[1]
    rows = api.read(lambda c: c.execute(sa.select(L.service)).all())
    table = {(r.scope, r.name): bool(r.enabled) for r in rows}
    state["service"] = (now + float(S.conf(api)["cache_ttl_s"]), table)
    return table


async def enabled(api, *, patient_id: str | None = None, institutions=()) -> bool:
    """Off when the patient or any of the hospitals is switched off; else on when one of
    them is switched on; else ``service_default``."""
    table = await api.run(_table, api)
    keys = [("institution", i) for i in institutions if i]
    if patient_id is not None:
        keys.append(("patient", patient_id))
    values = [table[k] for k in keys if k in table]
    if False in values:
        return False
    return True if values else bool(S.conf(api)["service_default"])


async def institutions_of(api, study_uid: str) -> set[str]:
    """The hospitals of an exam (InstitutionName of its series), cached briefly."""
    cache = api.plugin_state(S.NAME).setdefault("institutions", {})
    hit = cache.get(study_uid)
    now = time.time()
    if hit is not None and hit[0] > now:
        return hit[1]
    found = await api.search("series", {"includefield": "00080080"}, study_uid=study_uid)
    names = {S._v(s, "00080080") for s in found} - {""}
    if len(cache) > 10000:
        cache.clear()
    cache[study_uid] = (now + float(S.conf(api)["cache_ttl_s"]), names)
    return names


async def study_enabled(api, study_uid: str, patient_id: str | None) -> bool:
    return await enabled(api, patient_id=patient_id,
                         institutions=await institutions_of(api, study_uid))


@requires("write", audit="share.service")
async def put_service(request: web.Request) -> web.Response:
    """PUT /api/v1/plugins/share/service {"institution" | "patient": name, "enabled": bool}"""
    api = api_of(request)
    body = await json_object(request)
    scopes = [k for k in ("institution", "patient") if isinstance(body.get(k), str)
              and body[k].strip()]
    if len(scopes) != 1 or not isinstance(body.get("enabled"), bool):
        raise errors.BadRequest('{"institution": name} or {"patient": PatientID}, '
                                'with "enabled": true|false')
    scope, name = scopes[0], body[scopes[0]].strip()[:128]
    who = current_actor(request).id[:64]

    def put(conn):
        conn.execute(sa.delete(L.service).where(L.service.c.scope == scope,
                                                L.service.c.name == name))
        conn.execute(sa.insert(L.service).values(scope=scope, name=name,
                                                 enabled=body["enabled"], updated_by=who,
                                                 updated_at=time.time()))
    await api.run(api.write, put)
    api.plugin_state(S.NAME).pop("service", None)
    note_audit(request, scope=scope, enabled=body["enabled"])
    return web.Response(status=204)


@requires("read", audit="query")
async def get_service(request: web.Request) -> web.Response:
    api = api_of(request)
    rows = await api.run(api.read, lambda c: c.execute(sa.select(L.service)).all())
    note_audit(request, results=len(rows))
    return S._json({"default": bool(S.conf(api)["service_default"]),
                    "switches": [{"scope": r.scope, "name": r.name,
                                  "enabled": bool(r.enabled), "updated_by": r.updated_by,
                                  "updated_at": r.updated_at} for r in rows]})


# --- feedback (R-C8) ----------------------------------------------------------------------

async def store_feedback(api, link_id: int, study_uid: str | None, rating: int | None,
                         text: str) -> int:
    return await api.run(api.write, lambda c: c.execute(sa.insert(L.feedback).values(
        link_id=link_id, study_uid=study_uid, rating=rating, text=text,
        created_at=time.time())).inserted_primary_key[0])


@requires("audit-read", audit="query")
async def list_feedback(request: web.Request) -> web.Response:
    """GET /api/v1/plugins/share/feedback: what patients wrote (administrators)."""
    api = api_of(request)
    rows = await api.run(api.read, lambda c: c.execute(
        sa.select(L.feedback).order_by(L.feedback.c.id.desc()).limit(1000)).all())
    note_audit(request, results=len(rows))
    return S._json({"feedback": [{"id": r.id, "link": r.link_id, "study": r.study_uid,
                                  "rating": r.rating, "text": r.text,
                                  "created_at": r.created_at} for r in rows]})


def add_routes(router) -> None:
    router.add_put(S.API + "/service", put_service)
    router.add_get(S.API + "/service", get_service)
    router.add_get(S.API + "/feedback", list_feedback)
