"""The audit trail as DICOM audit messages over syslog, to the hospital's SOC (MLPS 13;
R-E3, R-E4; docs/security.md "Syslog export", docs/audit-events.md).

* **Message**: one DICOM Audit Message (PS3.15 A.5, the RFC 3881 based schema) per audit
  event: ``EventIdentification`` with the ``EventID`` of :data:`EVENT_CODES` (DCM 110100
  .. 110114), ``ActiveParticipant`` for the requestor and for pacsd itself,
  ``AuditSourceIdentification``, and ``ParticipantObjectIdentification`` for the study,
  its patient (PatientID, looked up in the catalogue: the trail itself holds no patient
  data), the user an account event is about, the query, or the audit log.
* **Framing**: RFC 5424 (``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] BOM XML``),
  facility 10 (security/authorization), severity notice (warning for failures), MSGID
  ``DICOM+RFC3881``, structured data ``[pacsd@32473 seq=".." hash=".."]`` so the SOC
  holds the chain's hashes outside pacsd's database. Over TLS (RFC 5425: octet counting,
  ``LEN SP MSG``) or UDP (RFC 5426: one datagram per message).
* **Delivery**: :class:`SyslogForwarder` follows the persistent ``audit_events`` table
  with a cursor (``audit_cursors`` row ``syslog``, migration 7), never the request path.
  A batch is sent, the stream drained, and only then the cursor moves: a collector that is
  down or drops the connection gets everything since the cursor again after the reconnect
  (at-least-once; duplicates carry the same ``seq``). Retention pruning never deletes
  events beyond the cursor.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from ..config import AuditSyslogSettings, ConfigError
from .audit import AuditFilter, AuditTrail, iso_utc

log = logging.getLogger(__name__)

SINK = "syslog"
MSGID = "DICOM+RFC3881"
SD_ID = "pacsd@32473"  # 32473: the private enterprise number for examples (RFC 5612)
FACILITY = 10          # security/authorization messages (RFC 5424 §6.2.1)
POLL_S = 1.0

# EventID (CID 400), EventActionCode, optional EventTypeCode (CID 401 DCM codes).
EV = {
    "application": ("110100", "Application Activity"),
    "audit-log": ("110101", "Audit Log Used"),
    "accessed": ("110103", "DICOM Instances Accessed"),
    "transferred": ("110104", "DICOM Instances Transferred"),
    "deleted": ("110105", "DICOM Study Deleted"),
    "export": ("110106", "Export"),
    "import": ("110107", "Import"),
    "patient": ("110110", "Patient Record"),
    "query": ("110112", "Query"),
    "alert": ("110113", "Security Alert"),
    "auth": ("110114", "User Authentication"),
}
TYPE_CODES = {
    "login": ("110122", "Login"), "logout": ("110123", "Logout"),
    "restricted": ("110132", "Use of Restricted Function"),
    "user-attrs": ("110137", "User Security Attributes Changed"),
    "roles": ("110136", "Security Roles Changed"),
    "sec-config": ("110129", "Security Configuration"),
    "object-attrs": ("110135", "Object Security Attributes Changed"),
}
#: pacsd event type -> (EventID key, EventActionCode, EventTypeCode key or None).
EVENT_CODES: dict[str, tuple[str, str, str | None]] = {
    "instances-stored": ("transferred", "C", None),
    "study-read": ("accessed", "R", None),
    "query": ("query", "E", None),
    "delete": ("deleted", "D", None),
    "login": ("auth", "E", "login"),
    "login-failed": ("auth", "E", "login"),
    "logout": ("auth", "E", "logout"),
    "permission-denied": ("alert", "E", "restricted"),
    "token-created": ("alert", "C", "user-attrs"),
    "token-revoked": ("alert", "D", "user-attrs"),
    "user-created": ("alert", "C", "user-attrs"),
    "user-unlocked": ("alert", "U", "user-attrs"),
    "password-changed": ("alert", "U", "user-attrs"),
    "totp-enrolled": ("alert", "U", "user-attrs"),
    "totp-removed": ("alert", "U", "user-attrs"),
    "user-changed": ("alert", "U", "roles"),
    "user-scope-changed": ("alert", "U", "user-attrs"),
    "department-changed": ("alert", "U", "sec-config"),
    "labels-changed": ("alert", "U", "object-attrs"),
    "audit-read": ("audit-log", "R", None),
    "audit-export": ("audit-log", "R", None),
    "audit-pruned": ("audit-log", "D", None),
    "study-forwarded": ("transferred", "R", None),
    "forward-overdue": ("application", "E", None),
    "job-resubmitted": ("application", "E", None),
    "forward-resend": ("application", "E", None),
    "export": ("export", "R", None),
    "research-export": ("export", "R", None),
    "legal-hold": ("accessed", "U", None),
    "visit-data": ("patient", "U", None),
    "purge": ("deleted", "D", None),
    "correction": ("accessed", "U", None),
    "scrub": ("application", "E", None),
    "reconcile": ("query", "E", None),
    "worklist-reindex": ("application", "E", None),
    "encryption-key": ("alert", "U", "sec-config"),
}
#: Plugin events by their suffix (``share.accessed``); any other: Application Activity.
PLUGIN_SUFFIX_CODES = {"accessed": ("accessed", "R", None),
                       "denied": ("alert", "E", "restricted"),
                       "created": ("application", "C", None),
                       "revoked": ("application", "D", None)}
OUTCOME_CODES = {"success": "0", "failure": "4", "denied": "8"}
#: Events whose study moved *to* pacsd (the requestor is the source).
_INBOUND = {"instances-stored"}
#: Events that name a user account in ``detail.user``.
_USER_EVENTS = {"token-created", "user-created", "user-unlocked", "password-changed",
                "totp-enrolled", "totp-removed", "user-changed", "user-scope-changed"}
QR_FIND_STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.1"


def codes_for(event_type: str, detail: dict) -> tuple[str, str, str | None]:
    if event_type == "reconcile":
        return {"fetch": ("import", "C", None), "send": ("transferred", "R", None)}.get(
            detail.get("action"), EVENT_CODES["reconcile"])
    if event_type in EVENT_CODES:
        return EVENT_CODES[event_type]
    return PLUGIN_SUFFIX_CODES.get(event_type.rpartition(".")[2],
                                   ("application", "E", None))


def _code(parent: ET.Element, tag: str, code: str, system: str, meaning: str) -> None:
    ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system,
                                "originalText": meaning})


@dataclass(frozen=True)
class Source:
    """Who sends: the AuditSourceID / HOSTNAME, site, APP-NAME and AE title."""
    hostname: str
    app_name: str = "pacsd"
    site_id: str = ""
    ae_title: str = "PACSD"


def audit_message(row: dict, source: Source,
                  patient: tuple[str, str] | None = None) -> bytes:
    """The DICOM Audit Message (PS3.15 A.5.1) of one audit row, UTF-8 XML."""
    detail = row["detail"]
    if isinstance(detail, str):
        detail = orjson.loads(detail or "{}")
    ev_key, action, type_key = codes_for(row["event_type"], detail)
    root = ET.Element("AuditMessage")
    ei = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": action, "EventDateTime": row["event_time"],
        "EventOutcomeIndicator": OUTCOME_CODES.get(row["outcome"], "4")})
    _code(ei, "EventID", *(EV[ev_key][0], "DCM", EV[ev_key][1]))
    if type_key:
        _code(ei, "EventTypeCode", TYPE_CODES[type_key][0], "DCM", TYPE_CODES[type_key][1])
    if row["outcome"] != "success":
        reason = detail.get("reason") or detail.get("status") or row["outcome"]
        ET.SubElement(ei, "EventOutcomeDescription").text = str(reason)[:256]

    # The requestor (a user, token, DIMSE peer, the console or pacsd's own service).
    inbound = row["event_type"] in _INBOUND
    moved = ev_key in ("transferred", "accessed", "export")
    req = {"UserID": row["actor"] or "anonymous", "UserIsRequestor": "true"}
    if row.get("actor_name"):
        req["UserName"] = row["actor_name"]
    if row["actor"].startswith("ae:"):
        req["AlternativeUserID"] = "AETITLES=" + row["actor"][3:]
    if row.get("source_ip"):
        req.update(NetworkAccessPointID=row["source_ip"], NetworkAccessPointTypeCode="2")
    ap = ET.SubElement(root, "ActiveParticipant", req)
    if moved:
        _code(ap, "RoleIDCode", *(("110153", "DCM", "Source Role ID") if inbound
                                  else ("110152", "DCM", "Destination Role ID")))
    # pacsd itself.
    me = ET.SubElement(root, "ActiveParticipant", {
        "UserID": source.app_name, "AlternativeUserID": "AETITLES=" + source.ae_title,
        "UserIsRequestor": "false", "NetworkAccessPointID": source.hostname,
        "NetworkAccessPointTypeCode": "1"})
    if moved:
        _code(me, "RoleIDCode", *(("110152", "DCM", "Destination Role ID") if inbound
                                  else ("110153", "DCM", "Source Role ID")))
    else:
        _code(me, "RoleIDCode", "110150", "DCM", "Application")

    src = {"AuditSourceID": source.hostname}
    if source.site_id:
        src["AuditEnterpriseSiteID"] = source.site_id
    asi = ET.SubElement(root, "AuditSourceIdentification", src)
    _code(asi, "AuditSourceTypeCode", "4", "DCM", "Application Server")

    study = row.get("study_uid")
    if study:
        po = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": study, "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3"})
        _code(po, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
        if row.get("object_count") is not None:
            ET.SubElement(po, "ParticipantObjectDetail", {
                "type": "NumberOfInstances",
                "value": base64.b64encode(str(row["object_count"]).encode()).decode()})
    if patient is not None:
        pid, issuer = patient
        po = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": f"{pid}^^^{issuer}" if issuer else pid,
            "ParticipantObjectTypeCode": "1", "ParticipantObjectTypeCodeRole": "1"})
        _code(po, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
    if row["event_type"] == "query":
        po = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": QR_FIND_STUDY_ROOT, "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3"})
        _code(po, "ParticipantObjectIDTypeCode", "110181", "DCM", "SOP Class UID")
        # The query keys only: pacsd never records the values (no patient data).
        keys = {"level": detail.get("level"), "keys": detail.get("keys")}
        ET.SubElement(po, "ParticipantObjectQuery").text = base64.b64encode(
            orjson.dumps(keys)).decode()
    if row["event_type"] in _USER_EVENTS and detail.get("user"):
        po = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": str(detail["user"]), "ParticipantObjectTypeCode": "1",
            "ParticipantObjectTypeCodeRole": "11"})
        _code(po, "ParticipantObjectIDTypeCode", "11", "RFC-3881", "User Identifier")
        if detail.get("username"):
            ET.SubElement(po, "ParticipantObjectName").text = str(detail["username"])
    if ev_key == "audit-log":
        po = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": f"{source.app_name}:audit_events",
            "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "13"})
        _code(po, "ParticipantObjectIDTypeCode", "12", "RFC-3881", "URI")
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)


def syslog_message(row: dict, xml: bytes, source: Source, procid: str = "-") -> bytes:
    """The RFC 5424 message: header, pacsd's structured data (seq and hash), BOM, XML."""
    severity = 5 if row["outcome"] == "success" else 4
    sd = f'[{SD_ID} seq="{row["seq"]}" hash="{row["hash"]}"]'
    header = (f"<{FACILITY * 8 + severity}>1 {row['event_time']} "
              f"{_printable(source.hostname, 255)} {_printable(source.app_name, 48)} "
              f"{_printable(procid, 128)} {MSGID} {sd} ")
    return header.encode("ascii") + b"\xef\xbb\xbf" + xml


def _printable(value: str, limit: int) -> str:
    """An RFC 5424 header field: PRINTUSASCII without spaces, or the NILVALUE."""
    out = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return out or "-"


def octet_frame(msg: bytes) -> bytes:
    """RFC 5425 §4.3 octet-counting: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(msg)).encode() + b" " + msg


class SyslogForwarder:
    """Follows the audit table from the ``syslog`` cursor and sends each event to the
    collector (see the module docstring). ``run`` is the archive's worker-thread runner."""

    def __init__(self, conf: AuditSyslogSettings, audit: AuditTrail, *,
                 run: Callable, ae_title: str = "PACSD", poll_s: float | None = None
                 ) -> None:
        self.conf = conf
        self.audit = audit
        self._run = run
        self.poll_s = POLL_S if poll_s is None else poll_s
        host, _, port = conf.address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.source = Source(hostname=conf.hostname or socket.gethostname(),
                             app_name=conf.app_name, site_id=conf.enterprise_site_id,
                             ae_title=ae_title)
        self.procid = str(os.getpid())
        self._ctx: ssl.SSLContext | None = None
        if conf.transport == "tls":
            # A CA or client certificate that cannot be loaded is a configuration error
            # found at start-up, not an alarm that repeats forever.
            try:
                self._ctx = self._ssl_context()
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError("[audit.syslog] tls_ca / tls_cert / tls_key not usable: "
                                  f"{exc}") from None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._udp: socket.socket | None = None
        self._task: asyncio.Task | None = None
        self._down = False
        self.sent = 0  # messages sent by this process (tests, status)

    # --- connection ----------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.conf.tls_ca or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.conf.tls_cert:
            ctx.load_cert_chain(self.conf.tls_cert, self.conf.tls_key)
        return ctx

    async def _connect(self) -> None:
        if self.conf.transport == "udp":
            if self._udp is None:
                self._udp = socket.socket(socket.AF_INET6 if ":" in self.host
                                          else socket.AF_INET, socket.SOCK_DGRAM)
                self._udp.connect((self.host, self.port))
            return
        # The collector never sends anything (RFC 5425): EOF on our reader means it
        # closed its end, and a write now would vanish in the kernel buffer. Reconnect.
        if self._writer is not None and (self._writer.is_closing() or
                                         (self._reader is not None and
                                          self._reader.at_eof())):
            await self._close()
        if self._writer is None:
            self._reader, self._writer = await asyncio.wait_for(asyncio.open_connection(
                self.host, self.port, ssl=self._ctx,
                server_hostname=self.host), timeout=10)

    async def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass
            self._writer = self._reader = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    async def _send(self, messages: list[bytes]) -> None:
        if self.conf.transport == "udp":
            assert self._udp is not None
            for m in messages:
                self._udp.send(m)
            return
        assert self._writer is not None
        self._writer.write(b"".join(octet_frame(m) for m in messages))
        await asyncio.wait_for(self._writer.drain(), timeout=30)
        await asyncio.sleep(0)  # let a pending EOF / reset from the collector arrive
        if self._writer.is_closing() or (self._reader is not None and
                                         self._reader.at_eof()):
            # Sent into a connection the collector had closed: not delivered.
            raise ConnectionResetError("the syslog collector closed the connection")

    # --- one round -----------------------------------------------------------------------
    def _batch(self) -> tuple[int, list[dict], dict]:
        log_ = self.audit.log
        cursor = log_.cursor(SINK)
        if cursor is None:
            # First start: from the oldest event still held (after a prune: the anchor).
            cursor = log_.anchor().seq
        rows = log_.select(AuditFilter(after_seq=cursor, limit=self.conf.batch))
        patients = log_.patients_of_studies(
            [r["study_uid"] for r in rows if r["study_uid"]]) if self.conf.patient_id else {}
        return cursor, rows, patients

    async def send_pending(self) -> int:
        """Send every event after the cursor (in batches); returns how many were sent.
        Raises on a connection problem, leaving the cursor at the last delivered batch."""
        total = 0
        while True:
            _, rows, patients = await self._run(self._batch)
            if not rows:
                return total
            messages = [syslog_message(r, audit_message(r, self.source,
                                                        patients.get(r["study_uid"] or "")),
                                       self.source, self.procid) for r in rows]
            await self._connect()
            await self._send(messages)
            last = rows[-1]["seq"]
            await self._run(self.audit.log.set_cursor, SINK, last, iso_utc(self.audit.clock()))
            self.sent += len(rows)
            total += len(rows)

    async def _loop(self) -> None:
        while True:
            try:
                await self.send_pending()
                if self._down:
                    log.warning("syslog collector %s:%d reachable again; audit export "
                                "resumed", self.host, self.port)
                    self._down = False
                await asyncio.sleep(self.poll_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._close()
                if not self._down:
                    # MLPS 12: a failing audit sink is an alarm (no event content logged).
                    log.error("ALARM: syslog collector %s:%d unreachable (%s); audit "
                              "events wait in the database and are sent on reconnect",
                              self.host, self.port, type(exc).__name__)
                    self._down = True
                await asyncio.sleep(self.conf.retry_s)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="pacsd-audit-syslog")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Send what the trail holds now (bounded by ``timeout_s``), then stop."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if not self._down:
            try:
                await asyncio.wait_for(self.send_pending(), timeout_s)
            except Exception:
                pass  # still in the database: sent after the next start
        await self._close()
