"""The audit trail through the real app, on SQLite and PostgreSQL (R-E3, R-E4, MLPS 9-12,
SEC-22): rows for STOW / QIDO / WADO / DELETE / logins / denials with their fields and no
patient data, the auditor's read API, batching and shutdown flush, and the hash chain
catching UPDATE and DELETE done directly in SQL (also through ``pacsd audit verify``)."""
from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from dicomgen import make_dataset, multipart, to_part10
from sechelpers import PASSWORD, FakeClock, make_service, make_settings, start_api

from pacsd import cli
from pacsd.index.security_schema import audit_events
from pacsd.services.audit import EVENT_TYPES
from pacsd.web.keys import ARCHIVE

RETRIEVE = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
FIELDS = {"seq", "event_time", "event_type", "outcome", "actor", "actor_name", "source_ip",
          "device", "study_uid", "object_count", "location", "detail", "prev_hash", "hash"}


async def stow(client, datasets, headers):
    body, ctype = multipart([to_part10(d) for d in datasets])
    return await client.post("/dicom-web/studies", data=body,
                             headers={"Content-Type": ctype, "User-Agent": "CT-Scanner/1",
                                      **headers})


def no_phi(rows, *datasets):
    for ds in datasets:
        for value in (str(ds.PatientName), str(ds.PatientName).split("^")[0],
                      str(ds.PatientID)):
            for row in rows:
                assert all(value not in str(v) for v in row.values()), (value, row)


async def test_R_E3_E4_every_dicomweb_access_is_audited(api_db):
    api = api_db
    auth = await api.session("dr-wang", "radiologist")
    a = make_dataset(PatientName="Zhang^San", PatientID="PID-778899")
    a2 = make_dataset(study=a.StudyInstanceUID, series=a.SeriesInstanceUID,
                      PatientName="Zhang^San", PatientID="PID-778899", InstanceNumber=2)
    b = make_dataset(PatientName="Li^Si")
    assert (await stow(api.client, [a, a2, b], auth)).status == 200
    study = f"/dicom-web/studies/{a.StudyInstanceUID}"
    inst = f"{study}/series/{a.SeriesInstanceUID}/instances/{a.SOPInstanceUID}"
    q = await api.client.get("/dicom-web/studies?PatientName=Zhang*&limit=5", headers=auth)
    assert q.status == 200
    assert (await api.client.get(study, headers={**auth, **RETRIEVE})).status == 200
    assert (await api.client.get(study + "/metadata", headers=auth)).status == 200
    assert (await api.client.get(inst + "/frames/1", headers={
        **auth, "Accept": "multipart/related; type=application/octet-stream"})).status == 200
    assert (await api.client.get(inst + "/rendered", headers={
        **auth, "Accept": "image/png"})).status == 200
    uri = (f"/wado?requestType=WADO&studyUID={a.StudyInstanceUID}&seriesUID="
           f"{a.SeriesInstanceUID}&objectUID={a.SOPInstanceUID}&contentType=application/dicom")
    assert (await api.client.get(uri, headers=auth)).status == 200
    missing = await api.client.get("/dicom-web/studies/1.2.3.999/metadata", headers=auth)
    assert missing.status == 404
    ops = await api.session("ops", "sysadmin")
    assert (await api.client.delete(f"/dicom-web/studies/{b.StudyInstanceUID}",
                                    headers=ops)).status == 204

    rows = await api.events()
    assert all(set(r) == FIELDS for r in rows)
    assert all(r["event_time"].endswith("Z") and len(r["event_time"]) == 27 for r in rows)
    stored = [r for r in rows if r["event_type"] == "instances-stored"]
    # R-E3: who, which device, which exam (one event per study), how many, where stored.
    assert {(r["study_uid"], r["object_count"]) for r in stored} == {
        (a.StudyInstanceUID, 2), (b.StudyInstanceUID, 1)}
    for r in stored:
        assert r["actor"].startswith("user:") and r["actor_name"] == "dr-wang"
        assert r["source_ip"] == "127.0.0.1" and r["device"] == "CT-Scanner/1"
        assert r["location"].endswith("blobs") and r["outcome"] == "success"
    query = [r for r in rows if r["event_type"] == "query"]
    assert len(query) == 1
    assert '"keys":["PatientName","limit"]' in query[0]["detail"]  # keys, never values
    reads = [r for r in rows if r["event_type"] == "study-read"]
    assert [r["study_uid"] for r in reads] == [a.StudyInstanceUID] * 5 + ["1.2.3.999"]
    assert [r["outcome"] for r in reads] == ["success"] * 5 + ["failure"]
    assert reads[0]["object_count"] == 2
    routes = [r["detail"] for r in reads]
    assert any("/metadata" in d for d in routes) and any("/frames/" in d for d in routes)
    assert any("/rendered" in d for d in routes) and any('"/wado"' in d for d in routes)
    deleted = [r for r in rows if r["event_type"] == "delete"]
    assert [(r["study_uid"], r["object_count"], r["actor_name"]) for r in deleted] == [
        (b.StudyInstanceUID, 1, "ops")]
    assert [r["event_type"] for r in rows if r["event_type"].startswith("login")] == \
        ["login", "login"]
    no_phi(rows, a, b)


async def test_MLPS9_logins_logouts_and_denials_are_audited(api_db):
    api = api_db
    api.user("alice", "clinician")
    r = await api.client.post("/api/v1/auth/login",
                              json={"username": "alice", "password": "Wrong-pass-1"})
    assert r.status == 401
    token = await api.login("alice")
    auth = {"Authorization": f"Bearer {token}"}
    assert (await stow(api.client, [make_dataset()], auth)).status == 403
    assert (await api.client.post("/api/v1/auth/logout", headers=auth)).status == 204
    rows = await api.events()
    kinds = [(r["event_type"], r["outcome"]) for r in rows]
    assert kinds == [("user-created", "success"), ("login-failed", "failure"),
                     ("login", "success"), ("permission-denied", "denied"),
                     ("logout", "success")]
    assert '"reason":"wrong password"' in rows[1]["detail"]
    assert rows[2]["actor"] == rows[3]["actor"] == rows[4]["actor"] == "user:1"
    assert '"action":"write"' in rows[3]["detail"]
    assert all(PASSWORD not in str(r) and token not in str(r) for r in rows)  # SEC-10


async def test_auditor_reads_the_trail_and_reading_is_audited(api):
    auditor = await api.session("audrey", "auditor")
    auth = await api.session("alice", "radiologist")
    await api.client.get("/dicom-web/studies", headers=auth)
    r = await api.client.get("/api/v1/audit?type=query", headers=auditor)
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    events = (await r.json())["events"]
    assert [e["event_type"] for e in events] == ["query"]
    assert events[0]["detail"]["level"] == "study"
    r = await api.client.get("/api/v1/audit?limit=2", headers=auditor)
    assert len((await r.json())["events"]) == 2
    since = "2099-01-01T00:00:00Z"
    r = await api.client.get(f"/api/v1/audit?since={since}", headers=auditor)
    assert (await r.json())["events"] == []
    for bad in ("type=nonsense", "limit=0", "limit=x", "since=yesterday"):
        assert (await api.client.get(f"/api/v1/audit?{bad}", headers=auditor)).status == 400
    reads = await api.events(event_type="audit-read")
    assert len(reads) == 7 and reads[0]["actor_name"] == "audrey"
    assert [r["outcome"] for r in reads] == ["success"] * 3 + ["failure"] * 4


async def test_audit_writes_are_batched_and_flushed_on_shutdown(aiohttp_client, tmp_path):
    clock = FakeClock()
    settings = make_settings(tmp_path, enabled=False)
    api = await start_api(aiohttp_client, settings, clock)
    for _ in range(20):
        assert (await api.client.get("/dicom-web/studies")).status == 200
    # Recorded in memory, written by the background task within ~100 ms, one batch.
    loop = asyncio.get_running_loop()
    start = loop.time()
    while len(api.audit.query(limit=100)) < 20 and loop.time() < start + 5:
        await asyncio.sleep(0.02)
    assert len(api.audit.query(limit=100)) == 20 and api.audit.pending == 0
    for _ in range(5):
        await api.client.get("/dicom-web/studies")
    api.audit.flush_interval_s = 3600  # only the shutdown flush can write these now
    await api.client.close()
    svc, cat = make_service(settings, clock)
    try:
        assert len(svc.audit.query(limit=100)) == 25
        assert svc.audit.verify().ok
    finally:
        cat.close()


def _tamper(url: str, sql: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(sql)
    engine.dispose()


async def test_SEC22_hash_chain_detects_update_and_delete_in_sql(api_db):
    api = api_db
    auth = await api.session("alice", "radiologist")
    for _ in range(4):
        await api.client.get("/dicom-web/studies", headers=auth)
    await api.audit.flush()
    url = api.app[ARCHIVE].settings.index_url
    ok = api.audit.verify()
    assert ok.ok and ok.rows == 6 and ok.head_seq == 6
    # Someone with database access rewrites who looked at what.
    _tamper(url, "UPDATE audit_events SET actor_name = 'nobody' WHERE seq = 3")
    bad = api.audit.verify()
    assert not bad.ok and bad.bad_seq == 3 and "modified" in bad.problem
    _tamper(url, "UPDATE audit_events SET actor_name = 'alice' WHERE seq = 3")
    assert api.audit.verify().ok  # restored byte for byte
    _tamper(url, "DELETE FROM audit_events WHERE seq = 4")
    bad = api.audit.verify()
    assert not bad.ok and bad.bad_seq == 4 and "missing" in bad.problem


async def test_SEC22_chain_detects_tail_deletion_and_rehash_of_one_row(api_db):
    api = api_db
    auth = await api.session("alice", "radiologist")
    await api.client.get("/dicom-web/studies", headers=auth)
    await api.audit.flush()
    url = api.app[ARCHIVE].settings.index_url
    _tamper(url, "DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)")
    bad = api.audit.verify()
    assert not bad.ok and "end of the trail" in bad.problem
    # Appending continues the chain from the head, so the gap stays visible.
    await api.client.get("/dicom-web/studies", headers=auth)
    await api.audit.flush()
    assert not api.audit.verify().ok
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(audit_events)) == 3


def test_SEC22_cli_audit_verify_exit_codes(tmp_path, clock, db_url, capsys):
    settings = make_settings(tmp_path, db_url)
    svc, cat = make_service(settings, clock)
    svc.create_user("alice", PASSWORD, ["clinician"])
    svc.create_token("alice", ["read"], 7)
    cat.close()
    conf = tmp_path / "pacsd.toml"
    conf.write_text(f'[index]\nurl = "{db_url}"\n')
    args = ["audit", "verify", "--data-dir", settings.server.data_dir, "--config", str(conf)]
    assert cli.main(args) == 0
    assert "intact: 2 events" in capsys.readouterr().out
    _tamper(settings.index_url, "UPDATE audit_events SET outcome = 'failure' WHERE seq = 2")
    assert cli.main(args) == 1
    assert "TAMPERED" in capsys.readouterr().err


def test_every_event_type_is_documented():
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs/security.md").read_text()
    for event in EVENT_TYPES:
        assert f"`{event}`" in doc, event
    for field in FIELDS:
        assert f"`{field}`" in doc, field


@pytest.mark.parametrize("bad", ["", "nonsense"])
def test_unknown_event_types_are_refused(service, bad):
    with pytest.raises(ValueError):
        service.audit.record(bad or "login", outcome="maybe" if not bad else "success")
