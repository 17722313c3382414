"""DICOM audit messages over syslog to the hospital SOC (MLPS 13, R-E3, R-E4; PS3.15
A.5, RFC 5424 / 5425 / 5426): a real TLS syslog collector started here (asyncio, mutual
TLS with certificates made by ``cryptography``) receives octet-counted RFC 5424 frames
from the real app; each frame's header, structured data and DICOM Audit Message XML are
parsed and checked (EventID codes, participants, study and patient). A collector that is
down loses nothing: the events wait in the audit table and arrive after it is back
(at-least-once, the cursor of migration 7)."""
from __future__ import annotations

import asyncio
import re
import ssl
import time
import xml.etree.ElementTree as ET

import pytest
from dicomgen import make_dataset, multipart, to_part10
from pki import make_pki
from sechelpers import make_settings, start_api

from pacsd.services import audit_syslog
from pacsd.services.audit import EVENT_TYPES
from pacsd.services.audit_syslog import EVENT_CODES, codes_for

HEADER = re.compile(
    rb'^<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (\S+) (\S+) (\S+) (\S+) '
    rb'\[pacsd@32473 seq="(\d+)" hash="([0-9a-f]{64})"\] \xef\xbb\xbf(<AuditMessage>.*)$',
    re.S)


class Collector:
    """A syslog-over-TLS (RFC 5425) or UDP (RFC 5426) collector on 127.0.0.1."""

    def __init__(self, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.ssl_ctx = ssl_ctx
        self.frames: list[bytes] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: set = set()
        self._udp = None

    async def start(self) -> None:
        if self.ssl_ctx is None:
            loop = asyncio.get_running_loop()
            frames = self.frames

            class Proto(asyncio.DatagramProtocol):
                def datagram_received(self, data, addr):
                    frames.append(data)

            self._udp, _ = await loop.create_datagram_endpoint(
                Proto, local_addr=("127.0.0.1", self.port))
            self.port = self._udp.get_extra_info("sockname")[1]
            return
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port,
                                                  ssl=self.ssl_ctx)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _client(self, reader, writer) -> None:
        self._writers.add(writer)
        try:
            while True:  # RFC 5425 octet counting: MSG-LEN SP SYSLOG-MSG
                length = await reader.readuntil(b" ")
                self.frames.append(await reader.readexactly(int(length[:-1])))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            return
        self._server.close()
        for w in list(self._writers):
            w.close()
        await self._server.wait_closed()

    def messages(self) -> list[dict]:
        out = []
        for frame in self.frames:
            m = HEADER.match(frame)
            assert m, frame[:200]
            out.append({"pri": int(m[1]), "time": m[2].decode(), "host": m[3].decode(),
                        "app": m[4].decode(), "msgid": m[6].decode(), "seq": int(m[7]),
                        "hash": m[8].decode(), "xml": ET.fromstring(m[9])})
        return out


def server_context(pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki["ca"])
    ctx.load_cert_chain(pki["cert"], pki["key"])
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: pacsd shows its client certificate
    return ctx


async def wait_for(pred, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.05)


def event_id(xml: ET.Element) -> tuple[str, str]:
    ei = xml.find("EventIdentification")
    ev = ei.find("EventID")
    assert ev.get("codeSystemName") == "DCM"
    return ev.get("csd-code"), ei.get("EventActionCode")


def objects(xml: ET.Element) -> dict[str, str]:
    """IDTypeCode -> ParticipantObjectID."""
    return {p.find("ParticipantObjectIDTypeCode").get("csd-code"): p.get("ParticipantObjectID")
            for p in xml.findall("ParticipantObjectIdentification")}


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch):
    monkeypatch.setattr(audit_syslog, "POLL_S", 0.05)


def syslog_settings(tmp_path, pki, port: int, **extra):
    s = make_settings(tmp_path)
    sl = s.audit.syslog
    sl.enabled, sl.address, sl.hostname, sl.enterprise_site_id = (
        True, f"127.0.0.1:{port}", "pacs01", "HOSPITAL-A")
    sl.tls_ca, sl.tls_cert, sl.tls_key = pki["ca"], pki["client_cert"], pki["client_key"]
    sl.retry_s = 0.1
    for k, v in extra.items():
        setattr(sl, k, v)
    return s


async def stow(api, auth, *datasets):
    body, ctype = multipart([to_part10(d) for d in datasets])
    r = await api.client.post("/dicom-web/studies", data=body,
                              headers={"Content-Type": ctype, **auth})
    assert r.status == 200, await r.text()


def test_every_core_event_type_has_a_dicom_event_id():
    assert set(EVENT_CODES) == EVENT_TYPES
    assert codes_for("share.accessed", {})[0] == "accessed"
    assert codes_for("share.whatever", {})[0] == "application"


async def test_MLPS13_tls_syslog_carries_dicom_audit_messages(aiohttp_client, tmp_path,
                                                              clock):
    pki = make_pki(tmp_path)
    collector = Collector(server_context(pki))
    await collector.start()
    try:
        api = await start_api(aiohttp_client, syslog_settings(tmp_path, pki, collector.port),
                              clock)
        auth = await api.session("dr-wang", "radiologist")
        ds = make_dataset(PatientName="Zhang^San", PatientID="PID-7788")
        await stow(api, auth, ds)
        study = ds.StudyInstanceUID
        assert (await api.client.get("/dicom-web/studies?PatientID=PID-7788",
                                     headers=auth)).status == 200
        assert (await api.client.get(f"/dicom-web/studies/{study}/metadata",
                                     headers=auth)).status == 200
        bad = await api.client.post("/api/v1/auth/login",
                                    json={"username": "dr-wang", "password": "Wrong-pw-99"})
        assert bad.status == 401
        rows = await api.events()
        await wait_for(lambda: len(collector.frames) >= len(rows))
        msgs = collector.messages()
        assert [m["seq"] for m in msgs] == [r["seq"] for r in rows]  # in order, all
        assert [m["hash"] for m in msgs] == [r["hash"] for r in rows]
        assert {m["host"] for m in msgs} == {"pacs01"} and {m["app"] for m in msgs} == \
            {"pacsd"} and {m["msgid"] for m in msgs} == {"DICOM+RFC3881"}
        by_type = {r["event_type"]: m for r, m in zip(rows, msgs)}
        assert list(by_type) == ["user-created", "login", "instances-stored", "query",
                                 "study-read", "login-failed"]

        x = by_type["instances-stored"]["xml"]
        assert event_id(x) == ("110104", "C")
        assert x.find("EventIdentification").get("EventOutcomeIndicator") == "0"
        assert objects(x) == {"110180": study, "2": "PID-7788"}
        req, me = x.findall("ActiveParticipant")
        assert (req.get("UserID"), req.get("UserName"), req.get("UserIsRequestor"),
                req.get("NetworkAccessPointID")) == ("user:1", "dr-wang", "true",
                                                     "127.0.0.1")
        assert req.find("RoleIDCode").get("csd-code") == "110153"  # the source
        assert me.get("UserIsRequestor") == "false" and \
            me.find("RoleIDCode").get("csd-code") == "110152"
        asi = x.find("AuditSourceIdentification")
        assert (asi.get("AuditSourceID"), asi.get("AuditEnterpriseSiteID")) == \
            ("pacs01", "HOSPITAL-A")
        assert "Zhang" not in ET.tostring(x, encoding="unicode")  # no name, only the ID

        read = by_type["study-read"]["xml"]
        assert event_id(read) == ("110103", "R") and objects(read)["110180"] == study
        q = by_type["query"]["xml"]
        assert event_id(q) == ("110112", "E")
        assert "PID-7788" not in ET.tostring(q, encoding="unicode")  # keys, not values
        login = by_type["login"]["xml"]
        assert event_id(login) == ("110114", "E")
        assert login.find("EventIdentification/EventTypeCode").get("csd-code") == "110122"
        failed = by_type["login-failed"]
        assert failed["pri"] == 10 * 8 + 4  # authpriv.warning
        assert failed["xml"].find("EventIdentification").get("EventOutcomeIndicator") == "4"
        assert event_id(by_type["user-created"]["xml"]) == ("110113", "C")
        assert objects(by_type["user-created"]["xml"]) == {"11": "user:1"}
        # The cursor follows once the batch is written (at-least-once).
        await wait_for(lambda: api.audit.log.cursor("syslog") == rows[-1]["seq"])
    finally:
        await collector.stop()


async def test_MLPS13_collector_outage_loses_nothing(aiohttp_client, tmp_path, clock):
    pki = make_pki(tmp_path)
    collector = Collector(server_context(pki))
    await collector.start()
    api = await start_api(aiohttp_client, syslog_settings(tmp_path, pki, collector.port),
                          clock)
    api.user("a", "radiologist")
    await wait_for(lambda: len(collector.frames) == 1)
    await collector.stop()  # the SOC goes down
    for i in range(5):
        api.user(f"user{i}", "clinician")
    await api.audit.flush()
    await asyncio.sleep(0.5)  # pacsd keeps trying meanwhile; nothing may be lost
    assert api.audit.log.cursor("syslog") == 1
    again = Collector(server_context(pki))
    again.port = collector.port
    await again.start()  # back, same address
    try:
        await wait_for(lambda: len(again.frames) >= 5)
        seqs = [m["seq"] for m in again.messages()]
        assert sorted(set(seqs)) == [2, 3, 4, 5, 6]  # at-least-once: every event arrived
        await wait_for(lambda: api.audit.log.cursor("syslog") == 6)
    finally:
        await again.stop()


async def test_unusable_tls_files_stop_the_start(aiohttp_client, tmp_path, clock):
    from pacsd.config import ConfigError
    pki = make_pki(tmp_path)
    s = syslog_settings(tmp_path, pki, 6514)
    s.audit.syslog.tls_ca = str(tmp_path / "missing-ca.pem")
    with pytest.raises(ConfigError, match=r"\[audit.syslog\]"):
        await start_api(aiohttp_client, s, clock)


async def test_RFC5426_udp_transport(aiohttp_client, tmp_path, clock):
    collector = Collector(None)
    await collector.start()
    try:
        s = make_settings(tmp_path)
        sl = s.audit.syslog
        sl.enabled, sl.address, sl.transport = True, f"127.0.0.1:{collector.port}", "udp"
        sl.patient_id = False
        api = await start_api(aiohttp_client, s, clock)
        auth = await api.session("dr-li", "radiologist")
        ds = make_dataset(PatientID="PID-UDP-1")
        await stow(api, auth, ds)
        await wait_for(lambda: len(collector.frames) >= 3)
        msgs = collector.messages()
        stored = [m for m in msgs if event_id(m["xml"])[0] == "110104"]
        # patient_id = false: the study only.
        assert objects(stored[0]["xml"]) == {"110180": ds.StudyInstanceUID}
    finally:
        await collector.stop()


def test_every_event_type_is_in_the_event_reference_with_its_event_id():
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs/audit-events.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in doc.splitlines()
            if line.startswith("| `")}
    for event, (ev_key, action, _) in EVENT_CODES.items():
        assert event in rows, event
        assert audit_syslog.EV[ev_key][0] in rows[event], event


def test_MLPS13_pacsd_serve_configured_by_toml_sends_over_tls(tmp_path):
    """The whole path: ``[audit.syslog]`` in the settings file, a real ``pacsd serve``
    process, a collector (in a thread of its own) requiring a client certificate."""
    import threading

    import requests
    from pacsd_server import Server

    pki = make_pki(tmp_path)
    loop = asyncio.new_event_loop()
    collector = Collector(server_context(pki))
    ready = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(collector.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    conf = tmp_path / "pacsd.toml"
    conf.write_text(f"""
[audit]
retention_days = 365

[audit.syslog]
enabled = true
address = "127.0.0.1:{collector.port}"
tls_ca = "{pki['ca']}"
tls_cert = "{pki['client_cert']}"
tls_key = "{pki['client_key']}"
app_name = "pacsd-e2e"
enterprise_site_id = "HOSPITAL-B"
""")
    data = tmp_path / "data"
    data.mkdir()
    srv = Server(str(data), "--config", str(conf))
    try:
        ds = make_dataset(PatientID="PID-E2E")
        body, ctype = multipart([to_part10(ds)])
        r = requests.post(srv.url + "/dicom-web/studies", data=body, timeout=30,
                          headers={"Content-Type": ctype})
        assert r.status_code == 200, r.text
        end = time.monotonic() + 20
        while not collector.frames and time.monotonic() < end:
            time.sleep(0.05)
        msgs = collector.messages()
        assert msgs and msgs[0]["app"] == "pacsd-e2e" and msgs[0]["seq"] == 1
        x = msgs[0]["xml"]
        assert event_id(x) == ("110104", "C")
        assert objects(x) == {"110180": ds.StudyInstanceUID, "2": "PID-E2E"}
        assert x.find("AuditSourceIdentification").get("AuditEnterpriseSiteID") == \
            "HOSPITAL-B"
    finally:
        srv.stop()
        asyncio.run_coroutine_threadsafe(collector.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
