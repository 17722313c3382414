"""pacsd-notify (R-B5, R-3.3.3, SEC-11) with pacsd-reports and pacsd-share: a final report
with the patient's phone makes a share link, the link goes out through an HTTP SMS
gateway (a local server speaking a provider's API, failing once to exercise retries),
the delivery log records it masked and token-free, and the link opens with the phone's
last digits."""
from __future__ import annotations

import asyncio
import io

import pytest
from aiohttp import web
from PIL import Image

from dicomgen import make_dataset, multipart, to_part10
from sharehelpers import without_link_tokens
from pacsd.config import Settings
from pacsd.plugins import Plugins
from pacsd.web import create_app


class Gateway:
    """An SMS provider: POST /sms/send JSON {apikey, mobile, content} -> {"code": 0, "sid"}.
    The first ``fail_first`` calls answer 503."""

    def __init__(self, fail_first: int = 1, code: int = 0) -> None:
        self.received: list[dict] = []
        self.calls = 0
        self.fail_first, self.code = fail_first, code
        self.down = False

    async def handle(self, request):
        self.calls += 1
        body = await request.json()
        if self.calls <= self.fail_first or self.down:
            return web.json_response({"code": 99}, status=503)
        self.received.append(body)
        return web.json_response({"code": self.code, "sid": f"m{self.calls}"})


async def start_gateway(aiohttp_server, gw: Gateway):
    app = web.Application()
    app.router.add_post("/sms/send", gw.handle)
    return await aiohttp_server(app)


def pdf() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (200, 100), "white").save(out, format="PDF")
    return out.getvalue()


def notify_settings(tmp_path, gateway_url, **notify) -> Settings:
    settings = Settings()
    settings.server.data_dir = str(tmp_path)
    # The persistent job queue sends the messages (R-B5): quick retries for the tests.
    settings.jobs.backoff_base_s, settings.jobs.backoff_jitter = 0.02, 0.0
    settings.jobs.poll_interval_s = 0.05
    settings.plugins = {"notify": {"channel": "http-sms",
                                   "hospital": "市一院",
                                   "http-sms": {"url": gateway_url + "/sms/send",
                                                "fields": {"apikey": "$env:SMS_KEY",
                                                           "mobile": "{to}",
                                                           "content": "{text}"},
                                                "success_field": "code",
                                                "success_value": "0", "id_field": "sid"},
                                   **notify}}
    return settings


async def start_app(aiohttp_client, settings):
    plugins = Plugins()
    plugins.load(settings.plugins)
    assert {"notify", "reports", "share"} <= set(plugins.names())
    return await aiohttp_client(create_app(settings, plugins))


async def make_client(aiohttp_client, tmp_path, monkeypatch, gateway_url, **notify):
    monkeypatch.setenv("SMS_KEY", "k-123")
    settings = notify_settings(tmp_path, gateway_url, **notify)
    client = await start_app(aiohttp_client, settings)
    ds = make_dataset(Modality="CT", PatientID="P5", PatientBirthDate="19800131",
                      StudyDescription="Head CT", PatientName="Wang^Wu",
                      OtherPatientIDs="110101198001310011")
    body, ctype = multipart([to_part10(ds)])
    assert (await client.post("/dicom-web/studies", data=body,
                              headers={"Content-Type": ctype})).status == 200
    return client, ds.StudyInstanceUID


async def deliveries(client, n: int = 1, until=("sent", "failed")) -> list[dict]:
    for _ in range(500):                        # bounded wait for the job runner
        r = await client.get("/api/v1/plugins/notify/deliveries")
        rows = (await r.json())["deliveries"]
        if len(rows) >= n and all(d["status"] in until for d in rows):
            return rows
        await asyncio.sleep(0.02)
    raise AssertionError("no delivery recorded")


async def test_R_B5_R_C2_final_report_sends_an_sms_link_that_opens_with_phone_digits(
        aiohttp_client, aiohttp_server, tmp_path, monkeypatch, with_plugin_site):
    gw = Gateway(fail_first=1)
    server = await start_gateway(aiohttp_server, gw)
    client, study = await make_client(aiohttp_client, tmp_path, monkeypatch,
                                      str(server.make_url("")).rstrip("/"))
    r = await client.post(f"/api/v1/plugins/reports/studies/{study}",
                          params={"status": "final", "phone": "138 0013 4321"},
                          data=pdf(), headers={"Content-Type": "application/pdf"})
    assert r.status == 201
    [d] = await deliveries(client)
    assert d["status"] == "sent" and d["attempts"] == 2           # one retry after 503
    assert d["recipient"] == "138****4321" and d["provider_id"] == "m2"
    assert "<token>" in d["message"] and "/plugins/share/s/" in d["message"]
    [sms] = gw.received
    assert sms["apikey"] == "k-123" and sms["mobile"] == "138 0013 4321"
    # SEC-11: the text carries a link only: no name, ID, birth date, diagnosis.
    text = without_link_tokens(sms["content"])
    for secret in ("P5", "19800131", "Head CT", study, "Wang", "110101198001310011"):
        assert secret not in text
    url = sms["content"][sms["content"].index("http"):]
    path = url.split("://", 1)[1].split("/", 1)[1]
    r = await client.get("/" + path, allow_redirects=False)
    assert r.status == 303
    r = await client.post("/plugins/share/verify", data={"answer": "4321"},
                          allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/plugins/share/exams"
    r = await client.get("/plugins/share/exams")
    assert r.status == 200 and "Head CT" in await r.text()


async def test_R_B5_refused_message_is_not_retried_and_is_logged_failed(
        aiohttp_client, aiohttp_server, tmp_path, monkeypatch, with_plugin_site):
    gw = Gateway(fail_first=0, code=17)                           # provider says no
    server = await start_gateway(aiohttp_server, gw)
    client, study = await make_client(aiohttp_client, tmp_path, monkeypatch,
                                      str(server.make_url("")).rstrip("/"))
    r = await client.post(f"/api/v1/plugins/reports/studies/{study}",
                          params={"status": "final", "phone": "13900001111"},
                          data=pdf(), headers={"Content-Type": "application/pdf"})
    assert r.status == 201
    [d] = await deliveries(client)
    assert d["status"] == "failed" and d["attempts"] == 1 and "code=17" in d["last_error"]
    r = await client.get("/api/v1/audit", params={"type": "notify.failed"})
    assert len((await r.json())["events"]) == 1


async def test_R_B5_gateway_down_restart_then_delivered_from_the_persistent_queue(
        aiohttp_client, aiohttp_server, tmp_path, monkeypatch, with_plugin_site):
    """R-B5, R-B2: the gateway is down, pacsd restarts in the middle of the retries; the
    queued message (a job in the catalogue, not a task in memory) is sent by the new
    process once the gateway is back, exactly once, still carrying a link only."""
    gw = Gateway(fail_first=0)
    gw.down = True
    server = await start_gateway(aiohttp_server, gw)
    client, study = await make_client(aiohttp_client, tmp_path, monkeypatch,
                                      str(server.make_url("")).rstrip("/"), retries=50)
    r = await client.post(f"/api/v1/plugins/reports/studies/{study}",
                          params={"status": "final", "phone": "13800134321"},
                          data=pdf(), headers={"Content-Type": "application/pdf"})
    assert r.status == 201
    [d] = await deliveries(client, until=("retrying",))
    assert d["last_error"] == "gateway answered 503" and d["job_id"]
    assert not gw.received
    await client.close()                                          # pacsd stops
    calls = gw.calls
    gw.down = False                                               # the gateway recovers
    settings = notify_settings(tmp_path, str(server.make_url("")).rstrip("/"), retries=50)
    client = await start_app(aiohttp_client, settings)            # pacsd starts again
    [d] = await deliveries(client)
    assert d["status"] == "sent" and d["attempts"] > 1 and gw.calls > calls
    [sms] = gw.received                                           # once, not twice
    assert "/plugins/share/s/" in sms["content"]
    for secret in ("P5", "19800131", "Head CT", "Wang", "110101198001310011"):
        assert secret not in without_link_tokens(sms["content"])
    r = await client.get("/api/v1/audit", params={"type": "notify.sent"})
    assert len((await r.json())["events"]) == 1


async def test_R_B5_gateway_down_for_good_ends_in_the_dead_letter_state(
        aiohttp_client, aiohttp_server, tmp_path, monkeypatch, with_plugin_site):
    gw = Gateway(fail_first=10**6)
    server = await start_gateway(aiohttp_server, gw)
    client, study = await make_client(aiohttp_client, tmp_path, monkeypatch,
                                      str(server.make_url("")).rstrip("/"), retries=2)
    r = await client.post(f"/api/v1/plugins/reports/studies/{study}",
                          params={"status": "final", "phone": "13800134321"},
                          data=pdf(), headers={"Content-Type": "application/pdf"})
    assert r.status == 201
    [d] = await deliveries(client)
    assert d["status"] == "failed" and d["attempts"] == 3 and gw.calls == 3
    r = await client.get("/api/v1/audit", params={"type": "notify.failed"})
    assert len((await r.json())["events"]) == 1


async def test_R_B5_wechat_template_message_channel(aiohttp_server):
    from pacsd_notify.channels import ChannelError, WeChatChannel

    seen = []

    async def send(request):
        seen.append((request.query["access_token"], await request.json()))
        ok = len(seen) > 1
        return web.json_response({"errcode": 0, "msgid": 42} if ok else {"errcode": 40001})
    app = web.Application()
    app.router.add_post("/cgi-bin/message/template/send", send)
    server = await aiohttp_server(app)
    ch = WeChatChannel({"api_base": str(server.make_url("")).rstrip("/"),
                        "access_token": "tok", "template_id": "T1"})
    with pytest.raises(ChannelError) as e:
        await ch.send("openid-1", "报告已出", "https://pacs.example/s/x")
    assert e.value.retryable                                      # expired token
    assert await ch.send("openid-1", "报告已出", "https://pacs.example/s/x") == "42"
    token, body = seen[-1]
    assert token == "tok" and body["touser"] == "openid-1" and body["template_id"] == "T1"
    assert body["url"] == "https://pacs.example/s/x"


@pytest.mark.postgres
async def test_R_C3_R_B5_share_and_notify_tables_on_postgresql(
        aiohttp_client, aiohttp_server, tmp_path, monkeypatch, with_plugin_site,
        pg_server_url):
    """The plugins' own tables and migrations on the real PostgreSQL (scale-out)."""
    import sqlalchemy as sa

    engine = sa.create_engine(pg_server_url)
    with engine.begin() as conn:     # the session database may hold another test's rows
        for t in ("share_sessions", "share_links", "notify_deliveries", "reports_reports"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {t} CASCADE"))
        conn.execute(sa.text("DROP TABLE IF EXISTS plugin_schema_version"))
    engine.dispose()
    gw = Gateway(fail_first=0)
    server = await start_gateway(aiohttp_server, gw)
    original = Settings

    def on_pg():
        s = original()
        s.index.url = pg_server_url
        return s
    monkeypatch.setattr(__import__(__name__), "Settings", on_pg)
    client, study = await make_client(aiohttp_client, tmp_path, monkeypatch,
                                      str(server.make_url("")).rstrip("/"))
    r = await client.post(f"/api/v1/plugins/reports/studies/{study}",
                          params={"status": "final", "phone": "13800134321"},
                          data=pdf(), headers={"Content-Type": "application/pdf"})
    assert r.status == 201
    [d] = await deliveries(client)
    assert d["status"] == "sent"
    url = gw.received[0]["content"]
    path = url[url.index("http"):].split("://", 1)[1].split("/", 1)[1]
    assert (await client.get("/" + path, allow_redirects=False)).status == 303
    r = await client.post("/plugins/share/verify", data={"answer": "4321"},
                          allow_redirects=False)
    assert r.status == 303
    assert "Head CT" in await (await client.get("/plugins/share/exams")).text()
    engine = sa.create_engine(pg_server_url)
    with engine.connect() as conn:
        versions = dict(conn.execute(sa.text(
            "SELECT plugin, max(version) FROM plugin_schema_version GROUP BY plugin")).all())
    engine.dispose()
    assert versions == {"share": 3, "notify": 2, "reports": 2}
