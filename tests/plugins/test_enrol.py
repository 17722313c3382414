"""Self-enrolment (R-C3): card number + phone + SMS code opens the patient's space; codes
hashed, limited answers, expiry, rate limits (429), the same answer whether or not the
card and phone match, every attempt audited; the code goes out through the SMS channel
(a local HTTP gateway) via the persistent job queue (R-B5). Service switch (R-C9)."""
from __future__ import annotations

import asyncio
import re

import sqlalchemy as sa

from dicomgen import make_dataset, multipart, to_part10
from test_notify import Gateway, deliveries, notify_settings, start_app, start_gateway

PHONE = "13800134321"


async def setup(aiohttp_client, aiohttp_server, tmp_path, monkeypatch, **share):
    monkeypatch.setenv("SMS_KEY", "k-123")
    gw = Gateway(fail_first=0)
    server = await start_gateway(aiohttp_server, gw)
    settings = notify_settings(tmp_path, str(server.make_url("")).rstrip("/"))
    settings.plugins["share"] = {"enrol_rate_limit": 50, **share}
    client = await start_app(aiohttp_client, settings)
    ds = make_dataset(Modality="CT", PatientID="P5", PatientBirthDate="19800131",
                      StudyDescription="Head CT", InstitutionName="City Hospital")
    body, ctype = multipart([to_part10(ds)])
    assert (await client.post("/dicom-web/studies", data=body,
                              headers={"Content-Type": ctype})).status == 200
    return client, gw, ds.StudyInstanceUID


async def sms_code(gw: Gateway, n: int = 1) -> str:
    for _ in range(300):
        if len(gw.received) >= n:
            return re.search(r"\b(\d{6})\b", gw.received[n - 1]["content"]).group(1)
        await asyncio.sleep(0.02)
    raise AssertionError("no code SMS")


async def events(client, kind: str) -> list[dict]:
    r = await client.get("/api/v1/audit", params={"type": kind})
    return (await r.json())["events"]


async def test_R_C3_card_phone_and_sms_code_open_the_patient_space(
        aiohttp_client, aiohttp_server, tmp_path, monkeypatch, with_plugin_site):
    client, gw, study = await setup(aiohttp_client, aiohttp_server, tmp_path, monkeypatch)
    r = await client.put("/api/v1/plugins/share/patients/P5",
                         json={"phone": PHONE, "cards": ["C-778899"]})
    assert r.status == 204
    r = await client.get("/plugins/share/enrol")
    assert r.status == 200 and "就诊卡号" in await r.text()
    r = await client.post("/plugins/share/enrol",
                          data={"card": "c-778899 ", "phone": "138 0013 4321"},
                          allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/plugins/share/enrol/code"
    code = await sms_code(gw)
    sms = gw.received[0]
    assert sms["mobile"] == PHONE and "P5" not in sms["content"]
    [d] = await deliveries(client)
    assert d["status"] == "sent" and d["purpose"] == "enrol-code"
    # hashed at rest: neither the code nor the phone nor the card number in clear
    engine = sa.create_engine(f"sqlite:///{tmp_path}/index.db")
    with engine.connect() as conn:
        dump = repr(conn.execute(sa.text("SELECT * FROM share_enrolments")).all()) + \
            repr(conn.execute(sa.text("SELECT * FROM share_patients")).all()) + \
            repr(conn.execute(sa.text("SELECT * FROM share_cards")).all()) + \
            repr(conn.execute(sa.text("SELECT message, pending_text FROM notify_deliveries"
                                      )).all())
    engine.dispose()
    assert code not in dump and PHONE not in dump and "778899" not in dump
    assert "<code>" in dump
    wrong = "000000" if code != "000000" else "111111"
    r = await client.post("/plugins/share/enrol/code", data={"code": wrong},
                          allow_redirects=False)
    assert r.status == 303 and r.headers["Location"].endswith("?e=1")
    r = await client.post("/plugins/share/enrol/code", data={"code": code},
                          allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/plugins/share/exams"
    r = await client.get("/plugins/share/exams")
    assert r.status == 200 and "Head CT" in await r.text()
    # used once
    r = await client.post("/plugins/share/enrol/code", data={"code": code},
                          allow_redirects=False)
    assert r.status == 401
    assert [e["outcome"] for e in await events(client, "share.enrol-requested")] == ["success"]
    assert len(await events(client, "share.enrol-verified")) == 1
    assert len(await events(client, "share.enrol-denied")) == 2


async def test_R_C3_no_match_same_answer_no_sms_and_attempts_run_out(
        aiohttp_client, aiohttp_server, tmp_path, monkeypatch, with_plugin_site):
    client, gw, study = await setup(aiohttp_client, aiohttp_server, tmp_path, monkeypatch,
                                    enrol_max_attempts=3)
    # rule 2: the card number is the PatientID; the phone came with a final report
    r = await client.put("/api/v1/plugins/share/patients/P5", json={"phone": PHONE})
    assert r.status == 204
    r = await client.post("/plugins/share/enrol", data={"card": "P5", "phone": "13900000000"},
                          allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/plugins/share/enrol/code"
    for i in range(2):
        r = await client.post("/plugins/share/enrol/code", data={"code": f"12345{i}"},
                              allow_redirects=False)
        assert r.status == 303
    r = await client.post("/plugins/share/enrol/code", data={"code": "123459"},
                          allow_redirects=False)
    assert r.status == 401 and "重新获取" in await r.text()
    await asyncio.sleep(0.3)
    assert gw.received == []                                      # nothing sent
    [e] = await events(client, "share.enrol-requested")
    assert e["outcome"] == "denied" and "13900000000" not in str(e)
    # the right phone with card = PatientID works
    r = await client.post("/plugins/share/enrol", data={"card": "P5", "phone": PHONE},
                          allow_redirects=False)
    code = await sms_code(gw)
    r = await client.post("/plugins/share/enrol/code", data={"code": code},
                          allow_redirects=False)
    assert r.headers["Location"] == "/plugins/share/exams"


async def test_R_C3_code_expires_and_requests_are_rate_limited(
        aiohttp_client, aiohttp_server, tmp_path, monkeypatch, with_plugin_site):
    client, gw, study = await setup(aiohttp_client, aiohttp_server, tmp_path, monkeypatch,
                                    enrol_code_ttl_s=0.5, enrol_phone_limit=2)
    await client.put("/api/v1/plugins/share/patients/P5", json={"phone": PHONE})
    await client.post("/plugins/share/enrol", data={"card": "P5", "phone": PHONE},
                      allow_redirects=False)
    code = await sms_code(gw)
    await asyncio.sleep(0.6)
    r = await client.post("/plugins/share/enrol/code", data={"code": code},
                          allow_redirects=False)
    assert r.status == 401 and "过期" in await r.text()
    r = await client.post("/plugins/share/enrol", data={"card": "P5", "phone": PHONE},
                          allow_redirects=False)
    assert r.status == 303
    r = await client.post("/plugins/share/enrol", data={"card": "P5", "phone": PHONE},
                          allow_redirects=False)
    assert r.status == 429 and "Retry-After" in r.headers             # per phone
    r = await client.post("/plugins/share/enrol", data={"card": "x", "phone": "1"},
                          allow_redirects=False)
    assert r.status == 400                                            # malformed


async def test_R_C9_service_off_for_the_patient_no_code_no_sms_no_pages(
        aiohttp_client, aiohttp_server, tmp_path, monkeypatch, with_plugin_site):
    from test_notify import pdf

    client, gw, study = await setup(aiohttp_client, aiohttp_server, tmp_path, monkeypatch)
    await client.put("/api/v1/plugins/share/patients/P5", json={"phone": PHONE})
    r = await client.put("/api/v1/plugins/share/service",
                         json={"patient": "P5", "enabled": False})
    assert r.status == 204
    r = await client.post("/plugins/share/enrol", data={"card": "P5", "phone": PHONE},
                          allow_redirects=False)
    assert r.status == 303                                            # same answer
    r = await client.post(f"/api/v1/plugins/reports/studies/{study}",
                          params={"status": "final", "phone": PHONE},
                          data=pdf(), headers={"Content-Type": "application/pdf"})
    assert r.status == 201
    await asyncio.sleep(0.5)
    assert gw.received == []                                          # no SMS at all
    assert len(await events(client, "share.not-notified")) == 1
    # a link made before (or by staff) shows "service not enabled" and nothing else
    r = await client.post("/api/v1/plugins/share/links", json={"studies": [study]})
    url = (await r.json())["url"]
    r = await client.get(url.split("://", 1)[1].split("/", 1)[1].join(["/", ""]),
                         allow_redirects=False)
    text = await r.text()
    assert r.status == 403 and "服务未开通" in text and "Head CT" not in text
    # per hospital: switched back on for the patient, off for the hospital
    await client.put("/api/v1/plugins/share/service", json={"patient": "P5", "enabled": True})
    r = await client.put("/api/v1/plugins/share/service",
                         json={"institution": "City Hospital", "enabled": False})
    assert r.status == 204
    r = await client.get(url.split("://", 1)[1].split("/", 1)[1].join(["/", ""]),
                         allow_redirects=False)
    assert r.status == 403 and "服务未开通" in await r.text()
    r = await client.get("/api/v1/plugins/share/service")
    assert {(s["scope"], s["enabled"]) for s in (await r.json())["switches"]} == {
        ("patient", True), ("institution", False)}
