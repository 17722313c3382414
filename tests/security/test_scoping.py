"""Data scoping on every HTTP path (R-A12, MLPS 7, 8; SEC-1, SEC-2, SEC-3, SEC-9), on SQLite
and PostgreSQL, through the real application (aiohttp test server, real database).

Four studies: A1 (Hospital A, patient P1), B1 (Hospital B, P1 again), B2 (Hospital B,
P2), A2 (Hospital A, P3, later labelled VIP). ``institution_map`` turns the captured
InstitutionName into the codes A / B. A study outside the caller's scope must look
exactly like a missing one: same status, same body.
"""
from __future__ import annotations

import orjson
import pytest
import sqlalchemy as sa
from dicomgen import make_dataset, multipart, to_part10
from sechelpers import PASSWORD, make_settings, start_api

from pacsd import hookimpl
from pacsd.index import Catalogue
from pacsd.index.access import scope_clause
from pacsd.index.qido import parse_qido
from pacsd.index.qido_sql import build
from pacsd.plugins import Plugins
from pacsd.services.scoping import NoneOf, OneOf

ST = "/dicom-web/studies"
RETRIEVE = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
JSON = {"Accept": "application/dicom+json"}
MAP = {"Hospital A": "A", "Hospital B": "B"}
STUDIES = {  # name: (institution name, patient id)
    "A1": ("Hospital A", "P1"), "B1": ("Hospital B", "P1"),
    "B2": ("Hospital B", "P2"), "A2": ("Hospital A", "P3"),
}


def uid(name: str, level: str = "") -> str:
    base = {"A1": 1, "B1": 2, "B2": 3, "A2": 4}[name]
    return f"1.2.826.0.1.3680043.10.543.{base}" + {"": "", "se": ".1", "sop": ".1.1"}[level]


async def populate(api) -> dict[str, str]:
    """Store the four studies as a sysadmin who sees everything; return headers."""
    admin = await api.session("ops", "sysadmin")
    datasets = [make_dataset(study=uid(n), series=uid(n, "se"), sop=uid(n, "sop"),
                             InstitutionName=inst, PatientID=pid, AccessionNumber=f"ACC{n}")
                for n, (inst, pid) in STUDIES.items()]
    body, ctype = multipart([to_part10(d) for d in datasets])
    r = await api.client.post(ST, data=body, headers={**admin, "Content-Type": ctype})
    assert r.status == 200, await r.text()
    return admin


async def user(api, name: str, role: str, institutions, clearances=()) -> dict[str, str]:
    api.user(name, role)
    api.security.set_user_scope(name, institutions, clearances)
    return {"Authorization": f"Bearer {await api.login(name)}"}


async def study_uids(api, headers, query: str = "") -> set[str]:
    r = await api.client.get(f"{ST}{query}", headers={**headers, **JSON})
    assert r.status == 200, await r.text()
    return {item["0020000D"]["Value"][0] for item in await r.json()}


def paths(name: str) -> list[str]:
    st, se, sop = uid(name), uid(name, "se"), uid(name, "sop")
    ins = f"{ST}/{st}/series/{se}/instances/{sop}"
    return [f"{ST}/{st}", f"{ST}/{st}/series/{se}", ins, f"{ST}/{st}/metadata",
            f"{ST}/{st}/series/{se}/metadata", f"{ins}/metadata", f"{ins}/frames/1",
            f"{ins}/rendered", f"{ins}/frames/1/rendered", f"{ins}/thumbnail",
            f"{ST}/{st}/thumbnail", f"{ins}/bulkdata/7FE00010",
            f"/dicom-web/wado?requestType=WADO&studyUID={st}&seriesUID={se}&objectUID={sop}"
            "&contentType=application/dicom"]


ACCEPT = {"frames": {"Accept": "multipart/related; type=application/octet-stream; "
                               "transfer-syntax=*"},
          "rendered": {"Accept": "image/png"}, "thumbnail": {"Accept": "image/jpeg"},
          "metadata": JSON, "bulkdata": {"Accept": "application/octet-stream"}}


def accept_for(path: str) -> dict[str, str]:
    for key in ("rendered", "thumbnail", "frames", "metadata", "bulkdata"):
        if f"/{key}" in path:
            return ACCEPT[key]
    return {"Accept": "application/dicom"} if "wado?" in path else RETRIEVE


@pytest.fixture
async def scoped(aiohttp_client, tmp_path, clock, db_url):
    settings = make_settings(tmp_path, db_url, institution_map=dict(MAP))
    return await start_api(aiohttp_client, settings, clock)


async def test_RA12_SEC1_SEC2_institution_scope_on_every_http_path(scoped):
    api = scoped
    admin = await populate(api)
    b = await user(api, "dr-b", "clinician", ["B"])
    # SEC-2: listing without a filter shows only B's studies; every level.
    assert await study_uids(api, b) == {uid("B1"), uid("B2")}
    assert await study_uids(api, admin) == {uid(n) for n in STUDIES}
    r = await api.client.get("/dicom-web/instances", headers={**b, **JSON})
    assert {i["0020000D"]["Value"][0] for i in await r.json()} == {uid("B1"), uid("B2")}
    assert r.headers["X-Total-Count"] == "2"
    # SEC-1 (Orthanc's test): a PatientID query returns only the study in scope.
    assert await study_uids(api, b, "?PatientID=P1") == {uid("B1")}
    assert await study_uids(api, b, f"?StudyInstanceUID={uid('A1')}") == set()
    assert await study_uids(api, b, "?AccessionNumber=ACCA1") == set()
    r = await api.client.get(f"{ST}/{uid('A1')}/series", headers={**b, **JSON})
    assert r.status == 200 and await r.json() == []
    # Every retrieve route: A1 answers exactly like a study that does not exist (SEC-9).
    missing = "1.2.826.0.1.3680043.10.543.99"
    for path in paths("A1"):
        ghost = path.replace(uid("A1"), missing)
        r1 = await api.client.get(path, headers={**b, **accept_for(path)})
        r2 = await api.client.get(ghost, headers={**b, **accept_for(path)})
        assert (r1.status, await r1.read()) == (r2.status, await r2.read()), path
        assert r1.status == 404, path
    for path in paths("B1"):  # and the same routes work in scope
        r = await api.client.get(path, headers={**b, **accept_for(path)})
        assert r.status == 200, (path, await r.text())
    # SEC-3: B's series under A's study path is not found, in scope or not.
    r = await api.client.get(f"{ST}/{uid('A1')}/series/{uid('B1', 'se')}", headers={
        **admin, **RETRIEVE})
    assert r.status == 404


async def test_RA12_delete_outside_scope_is_not_found_and_keeps_the_study(scoped):
    api = scoped
    admin = await populate(api)
    api.user("ops-b", "sysadmin")
    api.security.set_user_scope("ops-b", ["B"], [])
    ops_b = {"Authorization": f"Bearer {await api.login('ops-b')}"}
    r = await api.client.delete(f"{ST}/{uid('A1')}", headers=ops_b)
    assert r.status == 404
    assert uid("A1") in await study_uids(api, admin)
    r = await api.client.delete(f"{ST}/{uid('B2')}", headers=ops_b)
    assert r.status == 204
    assert await study_uids(api, admin) == {uid("A1"), uid("B1"), uid("A2")}
    denied = await api.events(event_type="delete", study_uid=uid("A1"))
    assert denied and denied[-1]["outcome"] == "failure"


async def test_RA12_cross_institution_history_only_for_configured_roles(
        aiohttp_client, tmp_path, clock, db_url):
    settings = make_settings(tmp_path, db_url, institution_map=dict(MAP),
                             cross_institution_roles=["radiologist"])
    api = await start_api(aiohttp_client, settings, clock)
    await populate(api)
    rad = await user(api, "rad-a", "radiologist", ["A"])
    cli = await user(api, "cli-a", "clinician", ["A"])
    # P1 has a study at A, so the radiologist of A sees P1's study at B too (not P2's).
    assert await study_uids(api, rad) == {uid("A1"), uid("A2"), uid("B1")}
    assert await study_uids(api, cli) == {uid("A1"), uid("A2")}
    r = await api.client.get(paths("B1")[2], headers={**rad, **RETRIEVE})
    assert r.status == 200
    r = await api.client.get(paths("B1")[2], headers={**cli, **RETRIEVE})
    assert r.status == 404


async def test_MLPS8_sensitivity_labels_set_by_secadmin_hide_studies(scoped):
    api = scoped
    admin = await populate(api)
    sec = await api.session("sec", "secadmin")
    plain = await user(api, "dr-a", "radiologist", ["A"])
    cleared = await user(api, "dr-vip", "radiologist", ["A"], ["VIP"])
    url = f"/api/v1/admin/studies/{uid('A2')}/labels"
    # Only the security administrator sets labels (MLPS 7); a sysadmin is refused.
    r = await api.client.put(url, json={"labels": ["VIP"]}, headers=admin)
    assert r.status == 403
    r = await api.client.put(url, json={"labels": ["VIP", "bad label!"]}, headers=sec)
    assert r.status == 400
    r = await api.client.put(url, json={"labels": ["VIP"]}, headers=sec)
    assert r.status == 200 and (await r.json())["labels"] == ["VIP"]
    assert (await (await api.client.get(url, headers=sec)).json())["labels"] == ["VIP"]
    # Not cleared: A2 is gone from every path, for the radiologist and the sysadmin.
    assert await study_uids(api, plain) == {uid("A1")}
    assert uid("A2") not in await study_uids(api, admin)
    assert (await api.client.get(paths("A2")[2], headers={**plain, **RETRIEVE})).status == 404
    # Cleared for VIP: visible.
    assert await study_uids(api, cleared) == {uid("A1"), uid("A2")}
    assert (await api.client.get(paths("A2")[2], headers={**cleared, **RETRIEVE})
            ).status == 200
    # Audited (MLPS 9): who, which study, what changed.
    ev = await api.events(event_type="labels-changed")
    assert len(ev) == 1 and ev[0]["study_uid"] == uid("A2")
    assert orjson.loads(ev[0]["detail"])["added"] == ["VIP"]
    assert ev[0]["actor_name"] == "sec"
    # Removing the label shows the study again.
    r = await api.client.put(url, json={"labels": []}, headers=sec)
    assert (await r.json())["labels"] == []
    assert await study_uids(api, plain) == {uid("A1"), uid("A2")}


async def test_RA12_user_scope_api_is_secadmin_only_and_audited(scoped):
    api = scoped
    await populate(api)
    sec = await api.session("sec", "secadmin")
    doc = await api.session("dr", "radiologist")  # default_institutions ["*"]: all
    assert len(await study_uids(api, doc)) == 4
    url = "/api/v1/admin/users/dr/scope"
    assert (await api.client.put(url, json={"institutions": ["B"]}, headers=doc)
            ).status == 403
    r = await api.client.put(url, json={"institutions": ["B"], "clearances": []},
                             headers=sec)
    assert r.status == 200
    # The new scope applies to the next request of the existing session.
    assert await study_uids(api, doc) == {uid("B1"), uid("B2")}
    ev = await api.events(event_type="user-scope-changed")
    assert ev and ev[-1]["actor_name"] == "sec"


async def test_RA12_token_narrows_its_users_institutions(scoped):
    api = scoped
    await populate(api)
    api.user("gw", "integration")
    api.security.set_user_scope("gw", ["A", "B"], [])
    _, both, _ = api.security.create_token("gw", ["read"], 30)
    _, only_a, _ = api.security.create_token("gw", ["read"], 30, institutions=["A", "C"])
    assert await study_uids(api, {"Authorization": f"Bearer {both}"}) == {
        uid(n) for n in STUDIES}
    # C is not the user's: the token gets A only (narrows, never widens).
    assert await study_uids(api, {"Authorization": f"Bearer {only_a}"}) == {
        uid("A1"), uid("A2")}


async def test_RA12_default_institutions_empty_denies_until_assigned(
        aiohttp_client, tmp_path, clock, db_url):
    settings = make_settings(tmp_path, db_url, institution_map=dict(MAP),
                             default_institutions=[])
    api = await start_api(aiohttp_client, settings, clock)
    api.user("ops", "sysadmin")
    api.security.set_user_scope("ops", ["*"], [])
    ops = {"Authorization": f"Bearer {await api.login('ops')}"}
    datasets = [make_dataset(study=uid(n), series=uid(n, "se"), sop=uid(n, "sop"),
                             InstitutionName=inst, PatientID=pid)
                for n, (inst, pid) in STUDIES.items()]
    body, ctype = multipart([to_part10(d) for d in datasets])
    assert (await api.client.post(ST, data=body, headers={**ops, "Content-Type": ctype})
            ).status == 200
    new = await api.session("new", "clinician")
    assert await study_uids(api, new) == set()
    assert len(await study_uids(api, ops)) == 4


class OnlyAccessions:
    """A query_filter plugin: hides accession ACCB2 from everyone, for every action."""

    @hookimpl
    def query_filter(self, actor, action):
        return [NoneOf("accession_number", ["ACCB2"])]


async def test_RA12_query_filter_plugin_constraints_are_anded_into_every_path(
        aiohttp_client, tmp_path, clock, db_url):
    plugins = Plugins()
    settings = make_settings(tmp_path, db_url, institution_map=dict(MAP))
    api = await start_api(aiohttp_client, settings, clock, plugins)
    admin = await populate(api)
    # Registered once the four studies are stored: its constraint binds writes too.
    plugins.register(OnlyAccessions(), name="only-accessions")
    assert await study_uids(api, admin) == {uid("A1"), uid("B1"), uid("A2")}
    b = await user(api, "dr-b", "clinician", ["B"])
    assert await study_uids(api, b) == {uid("B1")}  # institution AND plugin
    assert (await api.client.get(paths("B2")[2], headers={**admin, **RETRIEVE})
            ).status == 404
    assert (await api.client.delete(f"{ST}/{uid('B2')}", headers=admin)).status == 404
    # Writes obey it as well (R-A12): no instance can be added to the hidden study.
    more = make_dataset(study=uid("B2"), series=uid("B2", "se"), sop=uid("B2", "sop") + "9",
                        InstitutionName="Hospital B", PatientID="P2", AccessionNumber="ACCB2")
    body, ctype = multipart([to_part10(more)])
    r = await api.client.post(ST, data=body, headers={**admin, "Content-Type": ctype})
    assert r.status == 409
    assert (await r.json())["00081198"]["Value"][0]["00081197"]["Value"] == [0x0124]


def test_RA12_scope_sql_uses_bound_parameters_only():
    """The scope is a bound-parameter clause: no value is ever spliced into SQL."""
    q = parse_qido("study", [("PatientID", "P1")])
    scope = (OneOf("institution", ["HOSP'); DROP TABLE studies;--"]),)
    page, _ = build(q, scope_clause(scope))
    sql = str(page.compile(compile_kwargs={}))
    assert "DROP TABLE" not in sql and "institution IN (__[POSTCOMPILE_" in sql


def test_RA12_migration_5_adds_columns_and_backfills_institution(tmp_path, db_url):
    """An archive at schema version 2 (before migration 5) upgrades: the institution is
    backfilled from the stored InstitutionName and labels can be stored."""
    from pacsd.dicom import parse_instance
    cat = Catalogue(db_url)
    cat.migrate()
    p = parse_instance(to_part10(make_dataset(study=uid("A1"), series=uid("A1", "se"),
                                              sop=uid("A1", "sop"),
                                              InstitutionName="Hospital A")))
    cat.store_instance(p, sha256="0" * 64, size=1)
    with cat.engine.begin() as conn:  # take the database back to version 2
        conn.exec_driver_sql("DROP INDEX ix_studies_institution_order_"
                             + ("pg" if "postgresql" in db_url else "sqlite"))
        conn.exec_driver_sql("DROP TABLE study_labels")
        for table, col in (("studies", "institution"), ("users", "institutions"),
                           ("users", "clearances"), ("api_tokens", "institutions")):
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {col}")
        conn.exec_driver_sql("DELETE FROM schema_version WHERE version > 2")
    cat.close()
    cat = Catalogue(db_url)
    try:
        assert cat.migrate() >= 5
        with cat.engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT institution FROM studies")) == "Hospital A"
            assert conn.scalar(sa.text("SELECT count(*) FROM study_labels")) == 0
        names = {i["name"] for i in sa.inspect(cat.engine).get_indexes("studies")}
        assert names & {"ix_studies_institution_order_pg",
                        "ix_studies_institution_order_sqlite"}
        assert PASSWORD  # the users table still works with the new columns:
        from pacsd.index import Accounts
        pk = Accounts(cat).create_user("x", ("clinician",), "h", 1.0)
        Accounts(cat).set_scope(pk, ("A",), ("VIP",))
        u = Accounts(cat).get_user("x")
        assert u.institutions == ("A",) and u.clearances == ("VIP",)
    finally:
        cat.close()
