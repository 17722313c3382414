"""The security administrator's HTTP API under /api/v1/admin (R-E1, MLPS 5, 6, 7, 9):
users, departments, tokens and roles, secadmin only, every change audited. SQLite and
PostgreSQL, through the real application."""
from __future__ import annotations

import orjson
from sechelpers import PASSWORD

A = "/api/v1/admin"


async def test_RE1_MLPS7_secadmin_manages_departments_users_and_tokens(api_db):
    api = api_db
    sec = await api.session("sec", "secadmin")
    # Departments: create, list, rename (users follow), refuse deleting one in use.
    r = await api.client.post(f"{A}/departments", headers=sec,
                              json={"name": "radiology", "description": "放射科"})
    assert r.status == 201
    assert (await api.client.post(f"{A}/departments", headers=sec,
                                  json={"name": "radiology"})).status == 409
    # A user with a department, institutions and clearances, in one call.
    r = await api.client.post(f"{A}/users", headers=sec, json={
        "username": "dr-li", "password": PASSWORD, "roles": ["radiologist"],
        "department": "radiology", "institutions": ["A"], "clearances": ["VIP"]})
    assert r.status == 201, await r.text()
    body = await r.json()
    assert body["department"] == "radiology" and body["institutions"] == ["A"]
    assert "password_hash" not in orjson.dumps(body).decode() and "$argon2" not in \
        orjson.dumps(body).decode()
    assert (await api.client.post(f"{A}/users", headers=sec, json={
        "username": "x", "password": "short", "roles": ["clinician"]})).status == 400
    assert (await api.client.post(f"{A}/users", headers=sec, json={
        "username": "y", "password": PASSWORD, "roles": ["sysadmin", "auditor"]})
            ).status == 400  # MLPS 6: exclusive administrator roles
    r = await api.client.patch(f"{A}/departments/radiology", headers=sec,
                               json={"name": "imaging"})
    assert r.status == 204
    r = await api.client.get(f"{A}/users/dr-li", headers=sec)
    assert (await r.json())["department"] == "imaging"
    assert (await api.client.delete(f"{A}/departments/imaging", headers=sec)).status == 409
    deps = (await (await api.client.get(f"{A}/departments", headers=sec)).json())
    assert deps["departments"] == [{"name": "imaging", "description": "放射科", "users": 1}]
    # The user logs in and works; a role change applies to the next request.
    dr = {"Authorization": f"Bearer {await api.login('dr-li')}"}
    assert (await api.client.get("/api/v1/auth/me", headers=dr)).status == 200
    r = await api.client.patch(f"{A}/users/dr-li", headers=sec, json={"roles": ["clinician"]})
    assert r.status == 200 and (await r.json())["roles"] == ["clinician"]
    me = await (await api.client.get("/api/v1/auth/me", headers=dr)).json()
    assert me["actions"] == ["read"]
    # Tokens: created (shown once), listed without the token, revoked.
    r = await api.client.post(f"{A}/tokens", headers=sec, json={
        "user": "dr-li", "scopes": ["read"], "days": 7, "name": "viewer"})
    assert r.status == 201
    created = await r.json()
    tok = {"Authorization": f"Bearer {created['token']}"}
    assert (await api.client.get("/api/v1/auth/me", headers=tok)).status == 200
    listed = await (await api.client.get(f"{A}/tokens?user=dr-li", headers=sec)).json()
    assert [t["state"] for t in listed["tokens"]] == ["valid"]
    assert created["token"] not in orjson.dumps(listed).decode()
    assert (await api.client.delete(f"{A}/tokens/{created['id']}", headers=sec)
            ).status == 204
    assert (await api.client.get("/api/v1/auth/me", headers=tok)).status == 401
    # DELETE disables (the account is never reused): the session stops at once.
    assert (await api.client.delete(f"{A}/users/dr-li", headers=sec)).status == 204
    assert (await api.client.get("/api/v1/auth/me", headers=dr)).status == 401
    users = (await (await api.client.get(f"{A}/users", headers=sec)).json())["users"]
    assert {u["username"]: u["disabled"] for u in users} == {"sec": False, "dr-li": True}
    r = await api.client.get(f"{A}/roles", headers=sec)
    assert (await r.json())["roles"]["auditor"] == ["audit-read"]
    # Everything is in the audit trail, done by "sec" (MLPS 9).
    want = {"department-changed": 2, "user-created": 1, "user-changed": 3,
            "user-scope-changed": 1, "token-created": 1, "token-revoked": 1}
    for event, count in want.items():
        got = await api.events(event_type=event, actor_name="sec")
        assert len(got) == count, (event, got)


async def test_MLPS6_only_the_security_administrator_and_not_on_itself(api_db):
    api = api_db
    sec = await api.session("sec", "secadmin")
    for role in ("sysadmin", "auditor", "radiologist"):
        who = await api.session(f"u-{role}", role)
        for method, url in (("GET", f"{A}/users"), ("POST", f"{A}/users"),
                            ("POST", f"{A}/tokens"), ("GET", f"{A}/departments"),
                            ("PATCH", f"{A}/users/sec")):
            r = await api.client.request(method, url, headers=who, json={})
            assert r.status == 403, (role, method, url)
    # A secadmin neither changes their own roles nor disables themselves.
    r = await api.client.patch(f"{A}/users/sec", headers=sec, json={"roles": ["sysadmin"]})
    assert r.status == 403
    assert (await api.client.delete(f"{A}/users/sec", headers=sec)).status == 403
    denied = await api.events(event_type="permission-denied")
    assert len(denied) == 15


async def test_RH1_metrics_show_cache_sizes_to_the_secadmin_only(api, aiohttp_client, tmp_path,
                                                                 clock):
    """GET /api/v1/admin/metrics (issue 6 item 4, R-H1): this process's RSS and the
    retrieve caches' bytes / entries, for memory soaks; secadmin only like the rest of
    /api/v1/admin, the local operator where [security] is off (loopback); sizes and
    counters only, never a UID or a patient's name or ID."""
    from dicomgen import make_dataset, multipart, to_part10

    url = f"{A}/metrics"
    assert (await api.client.get(url)).status == 401
    for role in ("sysadmin", "auditor", "radiologist", "clinician"):
        who = await api.session(f"m-{role}", role)
        assert (await api.client.get(url, headers=who)).status == 403, role
    sec = await api.session("sec", "secadmin")
    r = await api.client.get(url, headers=sec)
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    before = await r.json()
    assert before["caches"]["metadata"]["entries"] == 0
    assert before["caches"]["metadata"]["max_bytes"] == 64 * 2**20
    assert before["rss_bytes"] > 0 and before["rss_peak_bytes"] >= before["rss_bytes"]
    # A radiologist stores and reads series metadata: one cache entry of that size.
    rad = await api.session("rad", "radiologist")
    ds = make_dataset(PatientName="Wang^Xiaoming", PatientID="PID-METRICS-7")
    body, ctype = multipart([to_part10(ds)])
    assert (await api.client.post("/dicom-web/studies", data=body, headers={
        "Content-Type": ctype, **rad})).status == 200
    r = await api.client.get(
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata",
        headers={**rad, "Accept": "application/dicom+json", "Accept-Encoding": "identity"})
    assert r.status == 200
    answer = await r.read()
    r = await api.client.get(url, headers=sec)
    raw = await r.read()
    after = orjson.loads(raw)
    meta = after["caches"]["metadata"]
    assert meta["entries"] == 1 and meta["bytes"] == len(answer) and meta["misses"] >= 1
    assert after["caches"]["render"]["entries"] == 0
    for secret in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                   "Wang", "PID-METRICS-7"):
        assert secret.encode() not in raw
    # [security] off (loopback only): the implicit local operator reads it, as the soak does.
    from sechelpers import make_settings, start_api

    local = await start_api(aiohttp_client, make_settings(tmp_path / "local", enabled=False),
                            clock)
    r = await local.client.get(url)
    assert r.status == 200 and set((await r.json())["caches"]) == {"metadata", "render"}
