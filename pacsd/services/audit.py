"""The audit trail: who stored, viewed, queried, deleted; logins and denials (R-E3, R-E4,
MLPS 9-12, SEC-22).

:meth:`AuditTrail.record` only appends to an in-memory queue, so the request path pays a
list append, not a database transaction. A background task writes the queue every
:data:`FLUSH_INTERVAL_S` (or as soon as :data:`BATCH_SIZE` events wait), one transaction
per batch, into the hash-chained ``audit_events`` table (``index/audit_log.py``). The
queue is flushed on shutdown; a reader of the trail flushes first, so it sees everything
recorded up to its request. A failing write keeps the events queued, logs an alarm
(MLPS 12) and is retried at the next tick.

Event types follow the spirit of DICOM PS3.15 Annex A.5 (audit messages); every type and
its fields are listed in docs/security.md. Records carry no patient data (SEC-23): the
object of an event is a StudyInstanceUID and a count; details hold route templates,
query *keys* (never their values), user names of staff and reasons.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import re
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from ..index import AuditLog, Catalogue, VerifyResult
from ..index.audit_log import Anchor, AuditFilter

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.1
BATCH_SIZE = 500
#: Every event type pacsd writes (docs/security.md "Audit event reference").
EVENT_TYPES = frozenset({
    "instances-stored",   # STOW-RS: instances of one study archived (R-E3)
    "study-read",         # WADO-RS / WADO-URI: objects, metadata, frames, rendered ... (R-E4)
    "query",              # QIDO-RS
    "delete",             # DELETE of a study, series or instance
    "login", "login-failed", "logout",
    "permission-denied",
    "token-created", "token-revoked",
    "user-created", "user-unlocked", "password-changed",
    "audit-read",         # GET /api/v1/audit: reading the trail is itself audited
    "study-forwarded",    # store-and-forward delivered a study to a destination (R-B2)
    "forward-overdue",    # a study missed the forwarding deadline (R-A9 alert)
    "job-resubmitted",    # an administrator resubmitted a dead job
    "forward-resend",     # an administrator had a stored study forwarded again
    # Lifecycle (services/export.py, retention.py, versions.py; R-A7, R-A8, R-A11):
    "export",             # one object exported (and one summary event per export run)
    "legal-hold",         # a legal hold set or cleared
    "visit-data",         # visit class / dates (HIS data) recorded for retention
    "purge",              # retention purge: study marked, blobs removed, finalised
    "correction",         # attribute correction: new versions of a study's instances
    "scrub",              # a scheduled scrub of every copy completed (counts, repairs)
    "labels-changed",     # sensitivity labels of a study set / removed (MLPS 8)
    "user-scope-changed", # a user's institutions / clearances changed (R-A12, MLPS 9)
    "totp-enrolled", "totp-removed",  # second factor of a user (MLPS 4)
    "user-changed",       # roles, department, disabled / enabled (admin API, MLPS 9)
    "department-changed", # a department created, renamed / described, or deleted (R-E1)
    "reconcile",          # pacsd reconcile: a comparison, a fetch or a send (R-A10)
    "research-export",    # de-identified research export: per study, plus a summary with
                          # the authorization record (R-H3, R-G2; services/research_export.py)
    "worklist-reindex",   # pacsd worklist reindex: visit columns re-read (R-D2; count only)
    "audit-export",       # the trail exported as CSV / Excel (page, API or pacsd audit export)
    "audit-pruned",       # events past retention deleted, chain re-anchored (MLPS 13)
    "encryption-key",     # pacsd keys init / rotate / rewrap / encrypt-existing (R-G1)
})
OUTCOMES = frozenset({"success", "failure", "denied"})
#: The trail is never pruned below this many days (MLPS 13: 网络安全法 §21, >= 6 months).
MIN_RETENTION_DAYS = 180
#: A plugin's own event types are namespaced ``<plugin>.<event>`` (e.g. ``share.accessed``)
#: so they never collide with core ones (docs/plugin_hooks.md "Plugin API").
PLUGIN_EVENT = re.compile(r"^[a-z][a-z0-9_]{0,30}\.[a-z][a-z0-9-]{0,40}$")


def is_event_type(name: str) -> bool:
    """A core event type or a plugin-namespaced one."""
    return name in EVENT_TYPES or bool(PLUGIN_EVENT.match(name))


def store_location(store) -> str:
    """Every storage copy of ``store``, space-separated, without credentials (R-E3
    "where stored")."""
    from urllib.parse import urlsplit, urlunsplit
    out = []
    for c in getattr(store, "copies", None) or [store]:
        parts = urlsplit(c.url)
        if parts.username or parts.password:
            host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
            parts = parts._replace(netloc=host)
        out.append(urlunsplit(parts))
    return " ".join(out)


class _System:
    """The audit actor of pacsd's own housekeeping (retention of the trail)."""

    id = "system:audit"
    name = "audit retention"


SYSTEM = _System()


def iso_utc(ts: float) -> str:
    """POSIX seconds as the trail's fixed-width ISO 8601 UTC form (sorts as text).
    The text up to the second is kept per second (R-H1: formatting a datetime was 3 % of
    a QIDO worker's GIL time, one audit record per request); the microseconds are
    rounded as ``datetime.fromtimestamp`` rounds them (half to even, carrying into the
    next second)."""
    whole = math.floor(ts)
    micro = round((ts - whole) * 1e6)
    if micro >= 1_000_000:
        whole += 1
        micro -= 1_000_000
    held = _SECOND
    if held[0] != whole:
        held = (whole, _dt.datetime.fromtimestamp(whole, _dt.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S."))
        globals()["_SECOND"] = held  # one tuple, replaced whole: safe across threads
    return f"{held[1]}{micro:06d}Z"


_SECOND: tuple[int, str] = (-1, "")


def parse_time(value: str, name: str = "time") -> str:
    """An ISO 8601 date or time (UTC unless it has an offset) as the trail's stored form;
    BadRequest naming ``name`` otherwise."""
    from ..errors import BadRequest
    try:
        when = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} is an ISO 8601 date or time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return iso_utc(when.timestamp())


class AuditTrail:
    """Batched writer and reader of the audit trail of one archive."""

    def __init__(self, catalogue: Catalogue, *, clock: Callable[[], float] = time.time,
                 run: Callable | None = None, immediate: bool = False,
                 flush_interval_s: float = FLUSH_INTERVAL_S,
                 batch_size: int = BATCH_SIZE) -> None:
        self.log = AuditLog(catalogue)
        self.clock = clock
        self._run = run
        self.immediate = immediate
        self.flush_interval_s = flush_interval_s
        self.batch_size = batch_size
        self._pending: list[dict] = []
        self._lock = threading.Lock()        # guards _pending
        self._write_lock = threading.Lock()  # one batch at a time, in queue order
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing = False

    # --- recording ----------------------------------------------------------------------
    def record(self, event_type: str, *, outcome: str = "success", actor: Any = None,
               source_ip: str = "", device: str = "", study_uid: str | None = None,
               object_count: int | None = None, location: str = "",
               detail: dict | None = None) -> None:
        """Queue one event (thread-safe; cheap). ``actor`` is a security Actor or None
        (anonymous). Never put patient data in ``detail``."""
        if not is_event_type(event_type) or outcome not in OUTCOMES:
            raise ValueError(f"unknown audit event type or outcome: {event_type}/{outcome}")
        ev = {
            "event_time": iso_utc(self.clock()), "event_type": event_type,
            "outcome": outcome,
            "actor": getattr(actor, "id", None) or "anonymous",
            "actor_name": (getattr(actor, "name", "") or "")[:64],
            "source_ip": (source_ip or "")[:64], "device": (device or "")[:128],
            "study_uid": study_uid, "object_count": object_count,
            "location": location or "",
            "detail": orjson.dumps(detail or {}, option=orjson.OPT_SORT_KEYS).decode(),
        }
        with self._lock:
            self._pending.append(ev)
            full = len(self._pending) >= self.batch_size
        if self.immediate:
            self.flush_sync()
        elif full and self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    # --- writing ------------------------------------------------------------------------
    def flush_sync(self) -> int:
        """Write everything queued now, in order; returns how many events were written.
        On a database error the events stay queued and the error propagates."""
        with self._write_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return 0
            try:
                self.log.append(batch)
            except BaseException:
                with self._lock:
                    self._pending[:0] = batch
                raise
            return len(batch)

    async def flush(self) -> int:
        if self._run is None:
            return self.flush_sync()
        return await self._run(self.flush_sync)

    async def _flusher(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if not self.pending:
                # Nothing queued: no hop to the pool (an idle tick used to take the GIL
                # from the ingest threads ten times a second; issue 6 DIMSE profile).
                continue
            try:
                await self.flush()
                if self._failing:
                    log.warning("audit trail writes work again")
                    self._failing = False
            except asyncio.CancelledError:
                raise
            except Exception:
                # MLPS 12: an audit sink that fails is an alarm, not a silent loss. The
                # events stay queued; the next tick tries again.
                if not self._failing:
                    log.error("ALARM: audit trail cannot be written; %d events queued",
                              self.pending, exc_info=True)
                self._failing = True

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._flusher(), name="pacsd-audit-flusher")

    async def stop(self) -> None:
        """Stop the background writer and flush what is queued (shutdown)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            await self.flush()
        except Exception:
            log.error("ALARM: %d audit events could not be written at shutdown",
                      self.pending, exc_info=True)

    # --- reading ------------------------------------------------------------------------
    def query(self, *, since: str | None = None, event_type: str | None = None,
              after_seq: int | None = None, limit: int = 100) -> list[dict]:
        return self.log.query(since=since, event_type=event_type, after_seq=after_seq,
                              limit=limit)

    def select(self, flt: AuditFilter) -> list[dict]:
        return self.log.select(flt)

    def studies_of_patient(self, patient_id: str) -> tuple[str, ...]:
        return self.log.studies_of_patient(patient_id)

    def anchor(self) -> Anchor:
        return self.log.anchor()

    def cursor(self, sink: str) -> int | None:
        return self.log.cursor(sink)

    def count(self, flt: AuditFilter) -> int:
        return self.log.count(flt)

    def iter_filtered(self, flt: AuditFilter, batch: int = 1000):
        return self.log.iter_filtered(flt, batch)

    def verify(self) -> VerifyResult:
        return self.log.verify()

    # --- retention (MLPS 13) -----------------------------------------------------------
    def prune_bound(self, retention_days: int) -> str | None:
        """The ``event_time`` before which events may go: ``max(180, retention_days)``
        days ago; None when ``retention_days`` is 0 (keep forever)."""
        if retention_days <= 0:
            return None
        days = max(MIN_RETENTION_DAYS, retention_days)
        return iso_utc(self.clock() - days * 86400.0)

    def prune(self, retention_days: int, *, keep_after_seq: int | None = None
              ) -> tuple[int, Anchor]:
        """Delete events past retention (never younger than 180 days), re-anchor the
        chain, and record an ``audit-pruned`` event naming the anchor (blocking: call
        from a worker thread). ``keep_after_seq``: an export sink's cursor, so events not
        yet delivered stay."""
        before = self.prune_bound(retention_days)
        if before is None:
            return 0, self.log.anchor()
        self.flush_sync()
        n, anchor = self.log.prune(before, keep_after_seq=keep_after_seq,
                                   now=iso_utc(self.clock()))
        if n:
            self.record("audit-pruned", actor=SYSTEM, object_count=n, detail={
                "before": before, "through_seq": anchor.seq, "anchor_hash": anchor.hash,
                "retention_days": max(MIN_RETENTION_DAYS, retention_days),
                "pruned_total": anchor.pruned_rows})
            self.flush_sync()
            log.info("audit trail: %d events older than %s pruned; chain anchored at "
                     "seq %d", n, before, anchor.seq)
        return n, anchor
