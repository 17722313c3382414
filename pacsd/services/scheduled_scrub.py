"""The scheduled scrub inside ``pacsd serve`` (R-A6; reliability-matrix §3 target 3:
"scheduled scrub of every replica at least every N days", FT-13).

``[storage] scrub_every_days`` > 0 turns it on. :meth:`ScrubScheduler.tick` does one
slice of work and returns; the serve process calls it in a loop on its worker pool:

* a run starts when the last one completed at least ``scrub_every_days`` ago (or never);
* a slice checks up to :data:`SLICE` objects with the scrubber (``services/scrub.py``,
  repair on: a bad copy is rewritten from a hash-valid one), saving its position in the
  ``scrub_schedule`` row as it goes, so a restart — of this process or another — goes on
  from there (FT-13);
* the slice runs under a lease in that row, so of several processes sharing one
  catalogue (scale-out) only one scrubs at a time; a process that died loses its lease
  after :data:`LEASE_S`;
* the slice that reaches the end also runs the orphan pass, records the summary and the
  completion time, and writes a ``scrub`` audit event (counts only, no PHI).
"""
from __future__ import annotations

import logging
import uuid
from typing import Callable

import orjson
import sqlalchemy as sa

from ..index.engine import translate_errors
from ..index.lifecycle_schema import scrub_schedule
from .archive import Archive
from .audit import AuditTrail
from .scrub import ScrubReport, Scrubber

log = logging.getLogger(__name__)

SLICE = 1000
LEASE_S = 600.0
#: Seconds between checks whether a run is due (the serve loop).
POLL_S = 60.0


class ScrubScheduler:
    def __init__(self, archive: Archive, audit: AuditTrail | None = None, *,
                 clock: Callable[[], float] | None = None, slice_objects: int = SLICE,
                 orphan_grace_s: float = 24 * 3600.0) -> None:
        self.archive = archive
        self.audit = audit
        self.clock = clock or (lambda: archive.clock())
        self.slice = slice_objects
        self.orphan_grace_s = orphan_grace_s
        self.owner = uuid.uuid4().hex

    @property
    def every_s(self) -> float:
        return float(self.archive.settings.storage.scrub_every_days) * 86400.0

    def _row(self, conn: sa.Connection) -> sa.Row:
        row = conn.execute(sa.select(scrub_schedule).where(scrub_schedule.c.pk == 1)).first()
        if row is None:
            conn.execute(sa.insert(scrub_schedule).values(pk=1))
            row = conn.execute(sa.select(scrub_schedule).where(scrub_schedule.c.pk == 1)
                               ).first()
        return row

    def _claim(self) -> int | None:
        """Take the lease when a slice is due; returns the pk to continue after."""
        now = self.clock()
        every = self.every_s

        def tx(conn: sa.Connection) -> int | None:
            row = self._row(conn)
            if row.lease_until > now and row.lease_owner != self.owner:
                return None  # another process is scrubbing
            if not row.in_progress and row.last_completed_at is not None and \
                    now - row.last_completed_at < every:
                return None  # not due yet
            values = {"lease_owner": self.owner, "lease_until": now + LEASE_S,
                      "in_progress": True}
            if not row.in_progress:
                values.update(after_pk=0, last_started_at=now, running="{}")
            conn.execute(sa.update(scrub_schedule).where(scrub_schedule.c.pk == 1)
                         .values(**values))
            return int(values.get("after_pk", row.after_pk))
        return self.archive.catalogue.run_write("claiming the scrub", tx)

    def _save(self, pk: int) -> None:
        self.archive.catalogue.run_write("saving scrub progress", lambda conn: conn.execute(
            sa.update(scrub_schedule).where(scrub_schedule.c.pk == 1,
                                            scrub_schedule.c.lease_owner == self.owner)
            .values(after_pk=pk, lease_until=self.clock() + LEASE_S)))

    def _accumulate(self, report: ScrubReport, *, final: bool) -> dict:
        """Add this slice's numbers to the run's totals (kept in the row); at the end,
        record them as the last result and close the run."""
        def tx(conn: sa.Connection) -> dict:
            row = self._row(conn)
            tot = orjson.loads(row.running or "{}")
            counts = tot.get("counts", {})
            for k, v in report.counts.items():
                counts[k] = counts.get(k, 0) + v
            tot["counts"] = counts
            for k in ("objects", "repairs", "repair_failures", "unrepairable", "remaining"):
                tot[k] = tot.get(k, 0) + getattr(report, k)
            tot["errors"] = tot.get("errors", []) + report.errors
            values: dict = {"running": orjson.dumps(tot).decode()}
            if final:
                tot.update(orphans=report.orphans, orphans_recent=report.orphans_recent,
                           ok=tot["remaining"] == 0 and not tot["errors"])
                values.update(in_progress=False, after_pk=0, lease_until=0, lease_owner="",
                              last_completed_at=self.clock(), running="{}",
                              last_result=orjson.dumps(tot).decode())
            conn.execute(sa.update(scrub_schedule).where(scrub_schedule.c.pk == 1)
                         .values(**values))
            return tot
        return self.archive.catalogue.run_write("recording scrub results", tx)

    def _release(self) -> None:
        self.archive.catalogue.run_write("releasing the scrub", lambda conn: conn.execute(
            sa.update(scrub_schedule).where(scrub_schedule.c.pk == 1,
                                            scrub_schedule.c.lease_owner == self.owner)
            .values(lease_until=0, lease_owner="")))

    def tick(self) -> ScrubReport | None:
        """One slice if a run is due and no other process scrubs; else None. Blocking."""
        if self.every_s <= 0:
            return None
        after = self._claim()
        if after is None:
            return None
        try:
            scrubber = Scrubber(self.archive.store, self.archive.catalogue, repair=True,
                                orphan_grace_s=self.orphan_grace_s)
            report = scrubber.run(after, checkpoint=self._save, limit=self.slice)
        except BaseException:
            self._release()
            raise
        try:
            tot = self._accumulate(report, final=report.complete)
        finally:
            if not report.complete:
                self._release()
        if report.complete:
            log.info("scheduled scrub complete: %s", "OK" if tot["ok"] else "problems remain")
            if self.audit is not None:
                self.audit.record("scrub", outcome="success" if tot["ok"] else "failure",
                                  object_count=tot["objects"],
                                  detail={k: v for k, v in tot.items() if k != "objects"})
        return report

    def status(self) -> dict:
        with translate_errors("reading the scrub schedule"), \
                self.archive.catalogue.engine.connect() as c:
            row = c.execute(sa.select(scrub_schedule).where(scrub_schedule.c.pk == 1)).first()
        every = self.archive.settings.storage.scrub_every_days
        if row is None:
            return {"every_days": every, "in_progress": False, "last_completed_at": None,
                    "last_result": None}
        return {"every_days": every, "in_progress": bool(row.in_progress),
                "position_pk": int(row.after_pk), "last_started_at": row.last_started_at,
                "last_completed_at": row.last_completed_at,
                "last_result": orjson.loads(row.last_result or "{}") or None}
