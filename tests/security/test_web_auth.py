"""Authentication and authorization through the real app (SEC-5 .. SEC-8, SEC-21, MLPS 6):
every route walked from the router, login / logout, scopes, roles, plugin routes and the
two security hooks."""
from __future__ import annotations

import re

import pytest
from aiohttp import web
from dicomgen import make_dataset, multipart, to_part10
from sechelpers import PASSWORD, make_settings, start_api

from pacsd import errors, hookimpl
from pacsd.plugins import Plugins
from pacsd.services.security import Actor
from pacsd.web.auth import PUBLIC, public, requires, route_action

UIDS = {"study": "1.2.3.4", "series": "1.2.3.4.5", "instance": "1.2.3.4.5.6",
        "frames": "1", "tag": "7FE00010", "version": "1", "user": "someone", "token": "1",
        "department": "radiology"}
RETRIEVE = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def concrete(path: str) -> str:
    # Installed plugins add routes with their own parameters ({token}, {id}, ...).
    return re.sub(r"\{(\w+)\}", lambda m: UIDS.get(m.group(1), "1"), path)


async def stow(client, datasets, headers):
    body, ctype = multipart([to_part10(d) for d in datasets])
    return await client.post("/dicom-web/studies", data=body,
                             headers={"Content-Type": ctype, **headers})


async def test_SEC6_every_route_without_a_token_is_401(api):
    """Walks the app's router, so a route added later is covered without editing this."""
    routes = [r for r in api.app.router.routes() if r.method not in ("HEAD", "OPTIONS")]
    dicomweb = [r for r in routes if r.resource.canonical.startswith("/dicom-web")]
    assert len(dicomweb) >= 25  # STOW, QIDO, WADO-RS (+metadata, frames, ...), DELETE, URI
    for route in routes:
        action = route_action(route.handler)
        assert action is not None, f"{route.method} {route.resource.canonical} declares " \
                                   "no permission (SEC-21)"
        url = concrete(route.resource.canonical)
        if "/wado" in url:
            url += "?requestType=WADO&studyUID=1.2.3&seriesUID=1.2.3.4&objectUID=1.2.3.4.5"
        r = await api.client.request(route.method, url)
        if action == PUBLIC:
            # pacsd-share's public landing refuses an invalid link in its URL with 401
            # (SEC-6) — a link, not a missing Bearer token.
            assert r.status != 401 or "pacsd-share" in r.headers.get("WWW-Authenticate",
                                                                    ""), url
            continue
        assert r.status == 401, f"{route.method} {url}: {r.status}"
        assert r.headers["WWW-Authenticate"].startswith("Bearer"), url
        assert r.headers["Content-Type"].startswith("text/plain")
    health = await api.client.get("/api/v1/health")
    assert health.status == 200


async def test_login_use_logout(api):
    api.user("alice", "radiologist")
    r = await api.client.post("/api/v1/auth/login",
                              json={"username": "alice", "password": PASSWORD})
    assert r.status == 200
    assert r.headers["Cache-Control"] == "no-store"
    body = await r.json()
    assert body["token_type"] == "Bearer" and body["roles"] == ["radiologist"]
    auth = {"Authorization": f"Bearer {body['token']}"}
    r = await api.client.get("/dicom-web/studies", headers=auth)
    assert r.status == 200
    me = await (await api.client.get("/api/v1/auth/me", headers=auth)).json()
    assert me["user"] == "alice" and me["actions"] == ["read", "write"]
    assert (await api.client.post("/api/v1/auth/logout", headers=auth)).status == 204
    r = await api.client.get("/dicom-web/studies", headers=auth)
    assert r.status == 401 and 'error_description="revoked"' in r.headers["WWW-Authenticate"]
    r = await api.client.post("/api/v1/auth/login", data=b"not json")
    assert r.status == 400
    r = await api.client.post("/api/v1/auth/login",
                              json={"username": "alice", "password": "Wrong-pass-1"})
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")


async def test_SEC6_SEC7_expired_revoked_tampered_unknown_tokens_are_401(api):
    api.user("bridge", "integration")
    token = api.token("bridge", "read", days=1)
    pk, revoked, _ = api.security.create_token("bridge", ["read"], 30)
    api.security.revoke_token(pk)
    ok = await api.client.get("/dicom-web/studies", headers={"Authorization": f"Bearer {token}"})
    assert ok.status == 200
    cases = {"revoked": revoked, "unknown": token[:-2] + "zz",
             "unknown ": "pacsd-t-" + "A" * 43, "unknown  ": "garbage"}
    for reason, bad in cases.items():
        r = await api.client.get("/dicom-web/studies",
                                 headers={"Authorization": f"Bearer {bad}"})
        assert r.status == 401
        assert f'error_description="{reason.strip()}"' in r.headers["WWW-Authenticate"]
    api.clock.advance(86400)
    r = await api.client.get("/dicom-web/studies", headers={"Authorization": f"Bearer {token}"})
    assert r.status == 401 and 'error_description="expired"' in r.headers["WWW-Authenticate"]


async def test_SEC8_429_after_repeated_failed_logins(api):
    api.user("alice", "clinician")
    for i in range(10):  # login_rate_limit failures within the window, several names
        r = await api.client.post("/api/v1/auth/login",
                                  json={"username": f"guess{i % 3}", "password": "Nope-123"})
        assert r.status == 401
    r = await api.client.post("/api/v1/auth/login",
                              json={"username": "alice", "password": PASSWORD})
    assert r.status == 429 and int(r.headers["Retry-After"]) > 0  # even the right one
    api.clock.advance(301)
    assert len(await api.login("alice")) > 40


async def test_SEC8_429_after_repeated_bad_tokens(api):
    for i in range(10):
        r = await api.client.get("/dicom-web/studies",
                                 headers={"Authorization": f"Bearer pacsd-t-guess{i}"})
        assert r.status == 401
    r = await api.client.get("/dicom-web/studies",
                             headers={"Authorization": "Bearer pacsd-t-guess-again"})
    assert r.status == 429 and "Retry-After" in r.headers
    failed = await api.events(event_type="login-failed")
    assert len(failed) == 10 and all(e["source_ip"] for e in failed)


async def test_SEC5_read_token_cannot_store_or_delete(api):
    api.user("bridge", "integration")
    api.user("ops", "sysadmin")
    read = {"Authorization": f"Bearer {api.token('bridge', 'read')}"}
    write = {"Authorization": f"Bearer {api.token('bridge', 'write')}"}
    delete_tok = {"Authorization": f"Bearer {api.token('ops', 'delete')}"}
    ds = make_dataset()
    r = await stow(api.client, [ds], read)
    assert r.status == 403
    r = await stow(api.client, [ds], write)
    assert r.status == 200
    study = f"/dicom-web/studies/{ds.StudyInstanceUID}"
    assert (await api.client.get(study, headers={**read, **RETRIEVE})).status == 200
    assert (await api.client.get(study, headers={**write, **RETRIEVE})).status == 403
    assert (await api.client.delete(study, headers=read)).status == 403
    assert (await api.client.delete(study, headers=write)).status == 403
    # A delete scope on an integration user gives nothing: its role has no delete.
    api.user("bridge2", "integration")
    bad = {"Authorization": f"Bearer {api.token('bridge2', 'delete')}"}
    assert (await api.client.delete(study, headers=bad)).status == 403
    assert (await api.client.delete(study, headers=delete_tok)).status == 204
    denied = await api.events(event_type="permission-denied")
    assert [e["outcome"] for e in denied] == ["denied"] * 5
    assert {e["actor"] for e in denied} >= {"token:1", "token:2", "token:4"}


async def test_MLPS6_separation_of_duties(api):
    auditor = await api.session("audrey", "auditor")
    sysadmin = await api.session("ops", "sysadmin")
    secadmin = await api.session("sec", "secadmin")
    ds = make_dataset()
    assert (await stow(api.client, [ds], sysadmin)).status == 200
    study = f"/dicom-web/studies/{ds.StudyInstanceUID}"
    for who in (auditor, secadmin):  # neither administrator sees images
        assert (await api.client.get(study, headers={**who, **RETRIEVE})).status == 403
        assert (await api.client.get(study + "/metadata", headers=who)).status == 403
        assert (await api.client.get("/dicom-web/studies", headers=who)).status == 403
        assert (await stow(api.client, [make_dataset()], who)).status == 403
    assert (await api.client.get("/api/v1/audit", headers=auditor)).status == 200
    # The system administrator runs the archive but cannot read the audit trail.
    assert (await api.client.get(study + "/metadata", headers=sysadmin)).status == 200
    assert (await api.client.get("/api/v1/audit", headers=sysadmin)).status == 403
    assert (await api.client.get("/api/v1/audit", headers=secadmin)).status == 403


class SecurityPlugin:
    """Plugin routes with and without declarations, an SSO header, and a veto."""

    def __init__(self) -> None:
        self.vetoed_study: str | None = None
        self.asked: list[tuple[str, str]] = []

    @hookimpl
    def register_routes(self, router, settings):
        async def undeclared(request):
            return web.json_response({"ok": True})

        @requires("read")
        async def declared(request):
            return web.json_response({"ok": True})

        @public
        async def landing(request):
            return web.json_response({"ok": True})
        router.add_get("/api/v1/plugins/sec/undeclared", undeclared)
        router.add_post("/api/v1/plugins/sec/undeclared", undeclared)
        router.add_get("/api/v1/plugins/sec/declared", declared)
        router.add_get("/api/v1/plugins/sec/landing", landing)

    @hookimpl
    def actor_from_request(self, request):
        ticket = request.headers.get("X-Test-SSO")
        if ticket is None:
            return None
        if ticket != "valid":
            raise errors.Unauthorized("bad SSO ticket",
                                      headers={"WWW-Authenticate": 'Bearer realm="pacsd"'})
        return Actor(id="sso:dr-li", name="dr-li", roles=frozenset({"radiologist"}))

    @hookimpl
    def permission_allowed(self, actor, action, resource):
        self.asked.append((actor.id, action))
        if resource.study_instance_uid and resource.study_instance_uid == self.vetoed_study:
            return False
        return True  # never grants more than the roles give


@pytest.fixture
async def plugged(aiohttp_client, tmp_path, clock):
    plugins = Plugins()
    plugin = SecurityPlugin()
    plugins.register(plugin, "sec")
    api = await start_api(aiohttp_client, make_settings(tmp_path), clock, plugins)
    return api, plugin


async def test_SEC21_plugin_routes_deny_by_default(plugged):
    api, _ = plugged
    auth = await api.session("alice", "radiologist")
    assert (await api.client.get("/api/v1/plugins/sec/undeclared")).status == 401
    assert (await api.client.get("/api/v1/plugins/sec/undeclared", headers=auth)).status == 403
    assert (await api.client.post("/api/v1/plugins/sec/undeclared", headers=auth)).status == 403
    assert (await api.client.get("/api/v1/plugins/sec/declared", headers=auth)).status == 200
    assert (await api.client.get("/api/v1/plugins/sec/declared")).status == 401
    assert (await api.client.get("/api/v1/plugins/sec/landing")).status == 200
    auditor = await api.session("audrey", "auditor")
    assert (await api.client.get("/api/v1/plugins/sec/declared", headers=auditor)).status == 403
    denied = await api.events(event_type="permission-denied")
    assert any('"action":"undeclared"' in e["detail"] for e in denied)


async def test_SEC21_undeclared_plugin_route_works_when_security_is_off(aiohttp_client,
                                                                         tmp_path, clock):
    plugins = Plugins()
    plugins.register(SecurityPlugin(), "sec")
    api = await start_api(aiohttp_client, make_settings(tmp_path, enabled=False), clock,
                          plugins)
    assert (await api.client.get("/api/v1/plugins/sec/undeclared")).status == 200


async def test_hook_actor_from_request(plugged):
    api, plugin = plugged
    r = await api.client.get("/dicom-web/studies", headers={"X-Test-SSO": "valid"})
    assert r.status == 200
    r = await api.client.get("/dicom-web/studies", headers={"X-Test-SSO": "forged"})
    assert r.status == 401
    queries = await api.events(event_type="query")
    assert [e["actor"] for e in queries] == ["sso:dr-li"]
    assert ("sso:dr-li", "read") in plugin.asked


async def test_hook_permission_allowed_vetoes_but_never_grants(plugged):
    api, plugin = plugged
    auth = await api.session("alice", "radiologist")
    a, b = make_dataset(), make_dataset()
    assert (await stow(api.client, [a, b], auth)).status == 200
    plugin.vetoed_study = b.StudyInstanceUID
    ok = await api.client.get(f"/dicom-web/studies/{a.StudyInstanceUID}/metadata", headers=auth)
    assert ok.status == 200
    no = await api.client.get(f"/dicom-web/studies/{b.StudyInstanceUID}/metadata", headers=auth)
    assert no.status == 403
    # The plugin answers True for everything else, yet a clinician still cannot delete.
    clin = await api.session("carl", "clinician")
    r = await api.client.delete(f"/dicom-web/studies/{a.StudyInstanceUID}", headers=clin)
    assert r.status == 403
    denied = await api.events(event_type="permission-denied")
    assert {e["study_uid"] for e in denied} == {b.StudyInstanceUID, a.StudyInstanceUID}


async def test_security_disabled_acts_as_local_operator(aiohttp_client, tmp_path, clock):
    api = await start_api(aiohttp_client, make_settings(tmp_path, enabled=False), clock)
    ds = make_dataset()
    assert (await stow(api.client, [ds], {})).status == 200
    assert (await api.client.get("/api/v1/audit")).status == 200
    stored = await api.events(event_type="instances-stored")
    assert [(e["actor"], e["study_uid"]) for e in stored] == [("local", ds.StudyInstanceUID)]
