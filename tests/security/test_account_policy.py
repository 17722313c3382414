"""Account policy (MLPS 1, 2, 5; SEC-8): forced password change, password history and
maximum age, disabling of inactive accounts, and trusted X-Forwarded-For, through the real
application (SQLite and PostgreSQL) with the injectable clock."""
from __future__ import annotations

import orjson
import pytest
from sechelpers import PASSWORD, make_settings, start_api

DAY = 86400.0
NEW = "Another-Horse-7"


async def login(api, name, password=PASSWORD):
    return await api.client.post("/api/v1/auth/login",
                                 json={"username": name, "password": password})


async def change(api, headers, old, new):
    return await api.client.post("/api/v1/auth/password", headers=headers,
                                 json={"password": old, "new_password": new})


async def test_MLPS1_temporary_password_must_be_changed_first(api_db):
    api = api_db
    api.security.create_user("dr", PASSWORD, ["radiologist"], temporary=True)
    r = await login(api, "dr")
    assert r.status == 200 and (await r.json())["password_change_required"] is True
    auth = {"Authorization": f"Bearer {(await r.json())['token']}"}
    # Only whoami, logout and the password change work until then.
    r = await api.client.get("/dicom-web/studies", headers={
        **auth, "Accept": "application/dicom+json"})
    assert r.status == 403
    assert (await api.client.get("/api/v1/auth/me", headers=auth)).status == 200
    assert (await change(api, auth, "wrong-Pass-1", NEW)).status == 403
    assert (await change(api, auth, PASSWORD, PASSWORD)).status == 400   # history
    assert (await change(api, auth, PASSWORD, "short")).status == 400    # policy
    assert (await change(api, auth, PASSWORD, NEW)).status == 204
    r = await api.client.get("/dicom-web/studies", headers={
        **auth, "Accept": "application/dicom+json"})
    assert r.status == 200
    assert (await login(api, "dr", NEW)).status == 200
    events = await api.events(event_type="password-changed")
    assert [orjson.loads(e["detail"])["temporary"] for e in events] == [False]
    assert events[0]["actor_name"] == "dr"
    denied = await api.events(event_type="permission-denied")
    assert orjson.loads(denied[0]["detail"])["reason"] == "password change required"


async def test_MLPS1_password_history_refuses_the_last_n(api):
    api.user("kim", "clinician")
    history = [PASSWORD, "Second-Pass-1", "Third-Pass-2", "Fourth-Pass-3", "Fifth-Pass-4"]
    for pw in history[1:]:
        api.security.set_password("kim", pw)
    for pw in history:  # current + 4 previous = password_history (5)
        with pytest.raises(Exception, match="last 5 passwords"):
            api.security.set_password("kim", pw)
    api.security.set_password("kim", "Sixth-Pass-5")
    api.security.set_password("kim", PASSWORD)  # the oldest fell out of the history
    assert (await login(api, "kim")).status == 200


async def test_MLPS1_expired_password_forces_a_change(api):
    api.user("kim", "clinician")
    api.clock.advance(89 * DAY)
    r = await login(api, "kim")
    assert (await r.json())["password_change_required"] is False
    api.clock.advance(2 * DAY)
    r = await login(api, "kim")
    body = await r.json()
    assert body["password_change_required"] is True
    auth = {"Authorization": f"Bearer {body['token']}"}
    assert (await api.client.get("/dicom-web/studies", headers=auth)).status == 403
    assert (await change(api, auth, PASSWORD, NEW)).status == 204
    assert (await api.client.get("/dicom-web/studies", headers={
        **auth, "Accept": "application/dicom+json"})).status == 200


async def test_MLPS5_inactive_account_is_disabled_and_can_be_enabled_again(api_db):
    api = api_db
    api.user("old", "clinician")
    assert (await login(api, "old")).status == 200
    api.clock.advance(91 * DAY)
    assert api.security.is_inactive(api.security.accounts.get_user("old"))
    assert (await login(api, "old")).status == 401
    assert (await login(api, "old")).status == 401  # stays disabled
    ev = await api.events(event_type="user-changed")
    assert orjson.loads(ev[0]["detail"])["reason"] == "inactive for 90 days"
    # The security administrator enables it again: the inactivity clock restarts.
    api.security.update_user("old", disabled=False)
    r = await login(api, "old")
    assert r.status == 200, await r.text()
    reasons = [orjson.loads(e["detail"])["reason"]
               for e in await api.events(event_type="login-failed")]
    assert reasons == ["account disabled (inactive)", "account disabled"]


async def test_SEC8_trusted_proxy_forwarded_for_names_the_client(aiohttp_client, tmp_path,
                                                                 clock):
    settings = make_settings(tmp_path, trusted_proxies=["127.0.0.1/32"], login_rate_limit=3)
    api = await start_api(aiohttp_client, settings, clock)
    api.user("kim", "clinician")

    async def attempt(xff, password="Wrong-Pass-99"):
        return await api.client.post("/api/v1/auth/login", headers={"X-Forwarded-For": xff},
                                     json={"username": "kim", "password": password})
    for _ in range(3):
        assert (await attempt("198.51.100.7, 127.0.0.1")).status == 401
    assert (await attempt("198.51.100.7")).status == 429       # that client is limited
    assert (await attempt("203.0.113.5", PASSWORD)).status == 200  # another is not
    # A client cannot choose its address by prepending: the right-most untrusted wins.
    assert (await attempt("203.0.113.5, 198.51.100.7")).status == 429
    ips = [e["source_ip"] for e in await api.events(event_type="login-failed")]
    assert ips[:3] == ["198.51.100.7"] * 3
    assert (await api.events(event_type="login"))[0]["source_ip"] == "203.0.113.5"


async def test_SEC8_forwarded_for_from_an_untrusted_peer_is_ignored(api):
    api.user("kim", "clinician")
    r = await api.client.post("/api/v1/auth/login", headers={
        "X-Forwarded-For": "203.0.113.5"}, json={"username": "kim", "password": PASSWORD})
    assert r.status == 200
    assert (await api.events(event_type="login"))[0]["source_ip"] == "127.0.0.1"


async def test_SEC6_token_cache_revocation_from_another_process_within_ttl(api_db):
    """Revocation through this process is immediate; through another pacsd process (a
    second SecurityService on the same database) it takes effect within
    auth_cache_ttl_s, measured with the injectable clock."""
    from sechelpers import make_service
    api = api_db
    api.user("gw", "integration")
    token = api.token("gw", "read")
    auth = {"Authorization": f"Bearer {token}"}
    me = "/api/v1/auth/me"
    assert (await api.client.get(me, headers=auth)).status == 200
    other, cat = make_service(api.security.settings, api.clock)  # "another process"
    try:
        pk = other.list_tokens("gw")[0].pk
        other.revoke_token(pk)
    finally:
        cat.close()
    ttl = api.security.conf.auth_cache_ttl_s
    assert ttl == 5.0
    assert (await api.client.get(me, headers=auth)).status == 200   # cached, < TTL
    api.clock.advance(ttl)
    r = await api.client.get(me, headers=auth)
    assert r.status == 401 and "revoked" in r.headers["WWW-Authenticate"]
    # Same process: a session's logout is effective at once, however fresh the cache.
    session = {"Authorization": f"Bearer {await api.login('gw')}"}
    assert (await api.client.get(me, headers=session)).status == 200
    assert (await api.client.post("/api/v1/auth/logout", headers=session)).status == 204
    assert (await api.client.get(me, headers=session)).status == 401
