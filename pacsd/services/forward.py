"""Store-and-forward (R-B2, R-B3, R-A9; docs/forwarding.md).

* **Routing** — :class:`ForwardingService` is registered as a built-in plugin; its
  ``instance_stored`` hook (after the durable commit, on the ingest worker thread) matches
  each newly stored instance against ``[[forward.rules]]`` (:class:`Rule`: DICOM keywords
  of the instance's metadata, or ``calling_aet`` — the Source AE Title pacsd wrote into
  the stored file's meta header on C-STORE — with ``*``/``?`` wildcards). For every
  matching destination it logs the arrival (``forward_items``), starts the study's upload
  clock (``forward_studies``) and queues one ``forward.study`` job per (destination,
  study) with a dedupe key and ``batch_delay_s``: the instances of a study arriving
  together travel in one job — all in one transaction.
* **Sending** — the ``forward.study`` job reads the study's ``pending`` instances through
  the one retrieve path (:class:`RetrieveService`, sha256-checked) and hands them to the
  destination type's :class:`Sender` (``web/stow_client.py`` for STOW-RS,
  ``dimse/scu.py`` for C-STORE; adapters are injected, this layer imports neither).
  Each confirmed instance is logged ``sent``; when none is pending the upload clock stops
  and a ``study-forwarded`` audit event records the disclosure. A transient failure
  (destination down, 5xx, A7xx) is retried with the queue's backoff, a permanent one
  (refused, 4xx) goes to the dead letter state at once; resubmitting sends what is still
  pending.
* **SLA** (R-A9) — every ``sla_check_interval_s`` studies still undelivered
  ``sla_minutes`` after their first arrival raise one alert each: a ``forward-overdue``
  audit event and a log line without patient data, and they are listed by the
  monitoring API (``web/forwarding.py``).
"""
from __future__ import annotations

import fnmatch
import logging
import re
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from pydicom.datadict import tag_for_keyword

from .. import errors
from ..config import ConfigError, ForwardDestination, Settings
from ..hookspecs import hookimpl
from ..index.forward_log import Arrival, ForwardLog, PendingItem
from ..index.jobs import JobQueue
from ..model import InstanceRow, ParsedInstance, StoreOutcome
from .archive import Archive
from .jobs import JobFailed
from .retrieve import RetrieveService

log = logging.getLogger(__name__)

JOB_KIND = "forward.study"
#: Match key that is not a DICOM keyword: the calling AE title of the C-STORE.
CALLING_AET = "calling_aet"


# --- rules --------------------------------------------------------------------------------

def _pattern(value: str) -> re.Pattern[str]:
    # DICOM-style wildcards only: * and ? (fnmatch's [...] classes are escaped).
    return re.compile(fnmatch.translate(value.replace("[", "[[]")), re.S)


@dataclass(frozen=True)
class Rule:
    """``match``: key -> patterns (any may match); every key must match."""

    name: str
    destinations: tuple[str, ...]
    match: tuple[tuple[str, str | None, tuple[re.Pattern[str], ...]], ...]

    @property
    def needs_calling_aet(self) -> bool:
        return any(key == CALLING_AET for key, _, _ in self.match)

    def matches(self, values: Callable[[str, str | None], list[str]]) -> bool:
        for key, tag, patterns in self.match:
            got = values(key, tag) or [""]
            if not any(p.fullmatch(v) for p in patterns for v in got):
                return False
        return True


def compile_rules(settings: Settings) -> list[Rule]:
    """``[[forward.rules]]`` checked and compiled; ConfigError names a bad keyword."""
    settings.forward.check()
    rules = []
    for n, conf in enumerate(settings.forward.rules, 1):
        match = []
        for key, value in (conf.get("match") or {}).items():
            tag = None
            if key != CALLING_AET:
                number = tag_for_keyword(key)
                if number is None:
                    raise ConfigError(f"[[forward.rules]] entry {n}: {key!r} is neither a "
                                      f"DICOM keyword nor {CALLING_AET!r}")
                tag = f"{number:08X}"
            values = [value] if isinstance(value, str) else value
            match.append((key, tag, tuple(_pattern(v) for v in values)))
        rules.append(Rule(str(conf.get("name") or f"rule {n}"),
                          tuple(conf["destinations"]), tuple(match)))
    return rules


def _values(metadata: dict, tag: str) -> list[str]:
    element = metadata.get(tag) or {}
    out = []
    for v in element.get("Value") or ():
        if isinstance(v, dict):  # PN: match on the alphabetic group
            v = v.get("Alphabetic", "")
        out.append(str(v))
    return out


def source_aet_from_header(head: bytes) -> str:
    """(0002,0016) Source Application Entity Title from the first bytes of a Part 10
    file (File Meta is always explicit VR little endian), '' when absent."""
    if len(head) < 132 or head[128:132] != b"DICM":
        return ""
    pos = 132
    while pos + 8 <= len(head):
        group, elem = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            return ""
        vr = head[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL",
                  b"OV"):
            if pos + 12 > len(head):
                return ""
            length = struct.unpack_from("<I", head, pos + 8)[0]
            start = pos + 12
        else:
            length = struct.unpack_from("<H", head, pos + 6)[0]
            start = pos + 8
        if elem == 0x0016:
            return head[start:start + length].decode("ascii", "replace").strip("\0 ")
        pos = start + length
    return ""


# --- senders --------------------------------------------------------------------------------

class SendError(Exception):
    """A send failed: ``permanent`` when the destination refused (no retry helps)."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class Sender(Protocol):
    async def send(self, destination: ForwardDestination, rows: list[InstanceRow],
                   retrieve: RetrieveService,
                   on_sent: Callable[[list[InstanceRow]], Any]) -> None:
        """Send ``rows`` (read through ``retrieve``); ``await on_sent(rows)`` for each
        batch the destination confirmed; raise :class:`SendError` on failure."""


# --- the service ----------------------------------------------------------------------------

class ForwardingService:
    """Routing hook, the ``forward.study`` job handler and the SLA check (module doc)."""

    def __init__(self, archive: Archive, queue: JobQueue, *,
                 clock: Callable[[], float] = time.time,
                 senders: dict[str, Sender] | None = None, audit: Any = None,
                 wake: Callable[[], None] | None = None) -> None:
        self.archive = archive
        self.settings = archive.settings
        self.conf = archive.settings.forward
        self.destinations = self.conf.parsed_destinations()
        self.rules = compile_rules(archive.settings)
        self.queue = queue
        self.log = ForwardLog(archive.catalogue)
        self.retrieve = RetrieveService(archive)
        self.clock = clock
        self.senders = senders or {}
        self.audit = audit
        self.wake = wake or (lambda: None)
        self._lock = threading.Lock()
        self._unrecorded: list[tuple[list[Arrival], float]] = []

    @property
    def enabled(self) -> bool:
        return bool(self.rules)

    # --- routing (ingest worker thread) -----------------------------------------------------
    def route(self, parsed: ParsedInstance, calling_aet: str | None = None) -> list[str]:
        """The destinations ``parsed`` goes to (deduplicated, in rule order)."""
        if not self.rules:
            return []
        metadata: dict | None = None
        aet = calling_aet

        def values(key: str, tag: str | None) -> list[str]:
            nonlocal metadata, aet
            if key == CALLING_AET:
                if aet is None:
                    aet = self._calling_aet(parsed)
                return [aet]
            if metadata is None:
                metadata = orjson.loads(parsed.metadata)
            return _values(metadata, tag or "")

        out: dict[str, None] = {}
        for rule in self.rules:
            if rule.matches(values):
                out.update(dict.fromkeys(rule.destinations))
        return list(out)

    def _calling_aet(self, parsed: ParsedInstance) -> str:
        row = self.archive.catalogue.get_instance(
            parsed.study_instance_uid, parsed.series_instance_uid, parsed.sop_instance_uid)
        if row is None:
            return ""
        return source_aet_from_header(
            self.archive.store.read_range(row.sha256, 0, min(row.size, 4096)))

    @hookimpl
    def instance_stored(self, parsed: ParsedInstance, outcome: StoreOutcome) -> None:
        if not outcome.created or not self.rules:
            return  # an identical re-send was routed when it first arrived
        self.on_stored(parsed)

    def on_stored(self, parsed: ParsedInstance, calling_aet: str | None = None) -> list[str]:
        destinations = self.route(parsed, calling_aet)
        if not destinations:
            return []
        aet = calling_aet if calling_aet is not None else (
            self._calling_aet(parsed) if any(r.needs_calling_aet for r in self.rules)
            else "")
        arrivals = [Arrival(d, parsed.study_instance_uid, parsed.series_instance_uid,
                            parsed.sop_instance_uid, parsed.sop_class_uid, aet)
                    for d in destinations]
        try:
            self._record(arrivals, self.clock())
        except errors.PacsdError as exc:
            # The instance is stored; only its routing could not be written (index busy
            # or down). Kept in memory and retried by the periodic check, so a passing
            # fault loses nothing (a crash meanwhile would: POST .../resend is the cure).
            with self._lock:
                self._unrecorded.append((arrivals, self.clock()))
            log.error("forwarding: could not queue a stored instance (%s); will retry",
                      exc.reason)
        return destinations

    def _record(self, arrivals: list[Arrival], received_at: float) -> None:
        def enqueue(conn) -> None:
            for key in dict.fromkeys((a.destination, a.study_uid) for a in arrivals):
                d, study = key
                self.queue.enqueue_in(conn, JOB_KIND, {"destination": d, "study": study},
                                      dedupe_key=f"forward:{d}:{study}",
                                      delay_s=self.conf.batch_delay_s,
                                      max_attempts=self.conf.max_attempts)
        self.log.record_arrivals(arrivals, received_at, then=enqueue)
        self.wake()

    def retry_unrecorded(self) -> int:
        """Write the routing of instances whose first attempt failed; returns how many
        batches are still waiting."""
        with self._lock:
            waiting, self._unrecorded = self._unrecorded, []
        left = []
        for arrivals, received_at in waiting:
            try:
                self._record(arrivals, received_at)
            except errors.PacsdError:
                left.append((arrivals, received_at))
        with self._lock:
            self._unrecorded[:0] = left
            return len(self._unrecorded)

    # --- manual re-send (R-A10 re-upload) --------------------------------------------------
    def resend(self, study_uid: str, destination: str | None = None) -> dict[str, int]:
        """Route every stored instance of a study again — by the rules, or to
        ``destination`` only — and queue it for sending now; instances already sent are
        sent again. Returns destination -> instances queued. NotFound for an unknown
        study, BadRequest for an unknown destination. Runs on a worker thread."""
        if destination is not None and destination not in self.destinations:
            raise errors.BadRequest("no such destination")
        cat = self.archive.catalogue
        rows = list(cat.iter_instances(study_uid))
        if not rows:
            raise errors.NotFound("no such study")
        metas = [orjson.loads(m) for m in cat.iter_metadata(study_uid)]
        aets: dict[str, str] = {}
        needs_aet = destination is None and any(r.needs_calling_aet for r in self.rules)
        arrivals: list[Arrival] = []
        counts: dict[str, int] = {}
        for row, meta in zip(rows, metas):
            if needs_aet:
                aets[row.sop_instance_uid] = source_aet_from_header(
                    self.archive.store.read_range(row.sha256, 0, min(row.size, 4096)))
            aet = aets.get(row.sop_instance_uid, "")
            if destination is not None:
                targets = [destination]
            else:
                def values(key: str, tag: str | None, meta=meta, aet=aet) -> list[str]:
                    return [aet] if key == CALLING_AET else _values(meta, tag or "")
                targets = list(dict.fromkeys(d for rule in self.rules if rule.matches(values)
                                             for d in rule.destinations))
            for d in targets:
                arrivals.append(Arrival(d, study_uid, row.series_instance_uid,
                                        row.sop_instance_uid, row.sop_class_uid, aet))
                counts[d] = counts.get(d, 0) + 1

        def enqueue(conn) -> None:
            for d in counts:
                self.queue.enqueue_in(conn, JOB_KIND, {"destination": d, "study": study_uid},
                                      dedupe_key=f"forward:{d}:{study_uid}",
                                      max_attempts=self.conf.max_attempts, reschedule=True)
        if arrivals:
            self.log.record_arrivals(arrivals, self.clock(), then=enqueue)
            self.wake()
        return counts

    # --- sending (the job) ----------------------------------------------------------------
    async def handle(self, job: Any) -> None:
        """The ``forward.study`` job: send what the study still lacks at the destination."""
        name, study = job.payload.get("destination"), job.payload.get("study")
        dest = self.destinations.get(name)
        if dest is None:
            raise JobFailed(f"destination {name!r} is not configured", retry=False)
        sender = self.senders.get(dest.type)
        if sender is None:
            raise JobFailed(f"no sender for destination type {dest.type!r} here")
        pending = await self.archive.run(self.log.pending, name, study)
        rows, by_sop, gone = [], {}, []
        for item in pending:
            row = await self._row(item)
            if row is None:
                gone.append(item.pk)
                continue
            rows.append(row)
            by_sop[row.sop_instance_uid] = item.pk
        if gone:
            await self.archive.run(self.log.mark_gone, gone, "deleted before it was sent")

        async def on_sent(sent: list[InstanceRow]) -> None:
            pks = [by_sop.pop(r.sop_instance_uid) for r in sent
                   if r.sop_instance_uid in by_sop]
            await self.archive.run(self.log.mark_sent, pks, self.clock())

        try:
            if rows:
                await sender.send(dest, rows, self.retrieve, on_sent)
        except SendError as exc:
            await self.archive.run(self.log.mark_failed_attempt, name, study,
                                   list(by_sop.values()), exc.reason)
            raise JobFailed(f"{dest.where()}: {exc.reason}", retry=not exc.permanent) \
                from None
        if by_sop:  # the sender returned without confirming some: try again later
            raise JobFailed(f"{dest.where()}: {len(by_sop)} instances not confirmed")
        delivered = await self.archive.run(self.log.finish_study, name, study, self.clock())
        if delivered is not None:
            self._delivered(dest, study, delivered)

    async def _row(self, item: PendingItem) -> InstanceRow | None:
        try:
            return await self.retrieve.instance(item.study_uid, item.series_uid,
                                                item.sop_uid, actor=_FORWARDER)
        except errors.NotFound:
            return None

    def _delivered(self, dest: ForwardDestination, study: str, row: dict) -> None:
        minutes = (row["delivered_at"] - row["first_received_at"]) / 60.0
        late = row["alerted_at"] is not None
        (log.warning if late else log.info)(
            "forwarding: study #%d delivered to %s after %.1f min%s", row["pk"], dest.name,
            minutes, " (over the SLA)" if late else "")
        if self.audit is not None:
            self.audit.record("study-forwarded", actor=_FORWARDER, device=dest.name,
                              study_uid=study, object_count=row["sent"],
                              location=dest.where(),
                              detail={"destination": dest.name,
                                      "upload_s": round(row["delivered_at"]
                                                        - row["first_received_at"], 3)})

    # --- SLA (R-A9) -----------------------------------------------------------------------
    def sla_s(self) -> float:
        return self.conf.sla_minutes * 60.0

    async def check_sla(self) -> list[dict]:
        """Alert once for each study newly over the limit; returns them. Also retries
        routing that could not be written when the instances arrived."""
        if self._unrecorded:
            left = await self.archive.run(self.retry_unrecorded)
            if left:
                log.error("forwarding: %d stored instances still wait to be queued", left)
        now = self.clock()
        late = await self.archive.run(self.log.newly_overdue, now - self.sla_s(), now)
        for study in late:
            minutes = (now - study["first_received_at"]) / 60.0
            log.warning("ALERT forwarding SLA exceeded: study #%d not delivered to %s "
                        "%.1f min after its first instance arrived (limit %s min)%s",
                        study["id"], study["destination"], minutes, self.conf.sla_minutes,
                        f"; last error: {study['last_error']}" if study["last_error"] else "")
            if self.audit is not None:
                dest = self.destinations.get(study["destination"])
                self.audit.record(
                    "forward-overdue", outcome="failure", actor=_FORWARDER,
                    device=study["destination"], study_uid=study["study_uid"],
                    location=dest.where() if dest else "",
                    detail={"destination": study["destination"],
                            "minutes": round(minutes, 1),
                            "sla_minutes": self.conf.sla_minutes,
                            "last_error": study["last_error"]})
        return late


@dataclass(frozen=True)
class _Actor:
    """The audit actor of the forwarding service itself."""

    id: str = "system:forward"
    name: str = "forwarding"


_FORWARDER = _Actor()
