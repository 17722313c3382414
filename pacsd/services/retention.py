"""Retention (R-A7; reliability-matrix §5 item 23, §7 item 3, FT-11, FT-13): how long each
study must be kept, legal holds, the veto on deletion inside retention, and the purge of
studies whose retention has expired.

Rules (``[retention]`` settings; docs/operations.md "Retention"):

* **Visit class.** HIS data recorded through the API or ``pacsd retention visit``
  (``study_retention.visit_class``) wins. Otherwise DICOM: a non-empty Admission ID
  (0038,0010) makes the study *inpatient*. Otherwise the class is unknown and
  ``default_class`` applies — by default ``"longest"``: the class with the longer period
  (inpatient, 30 years), so an unknown study is never deleted early.
* **Start of the period.** Outpatient: the visit date from HIS, else StudyDate.
  Inpatient: the discharge date from HIS, else Discharge Date (0038,0030), else the later
  of the HIS visit (admission) date and StudyDate. A DICOM date that is missing,
  malformed, or later than the day the study was archived is not trusted: the archive
  date is used instead (never shorter than the truth for wrong modality clocks). HIS dates
  are taken as given.
* **Until.** start + ``outpatient_years`` / ``inpatient_years`` calendar years (29 February
  + N years = 1 March when that year has none). The study may be deleted from the day
  *after* that date (UTC; "at least N years").
* **Legal hold** (set and cleared by the API or ``pacsd retention hold/release``, audited)
  vetoes any deletion, expired or not, even with ``enabled = false``.

DELETE (``IngestService.delete``) asks :func:`check_deletable` first: inside retention or
under hold it answers 409 with the reason. :class:`Purger` deletes expired studies as a
two-phase tombstone: *mark* (one transaction: re-check hold and expiry, remove the study
from the catalogue, record its blobs), *purge* (delete each blob from every copy unless
another instance or a kept version still uses it, ticking it off), *finalise*. Every step
is audited (event ``purge``); a run interrupted anywhere is completed by the next one
(FT-13). Times come from an injected clock (tests travel in time; FT-11: a clock step
never purges early because dates, not durations, decide).
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .. import errors
from ..config import RetentionSettings
from ..dicom import is_valid_uid
from ..index.lifecycle import Lifecycle
from .archive import Archive
from .audit import AuditTrail

log = logging.getLogger(__name__)

VISIT_CLASSES = ("outpatient", "inpatient")
ADMISSION_ID = "00380010"
DISCHARGE_DATE = "00380030"


class RetentionVeto(errors.Conflict):
    """The study is inside its retention period or under legal hold (R-A7)."""


def parse_date(value: Any) -> _dt.date | None:
    if not isinstance(value, str) or len(value) != 8 or not value.isdigit():
        return None
    try:
        return _dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def check_date(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if parse_date(value) is None:
        raise errors.BadRequest(f"{name} is a date YYYYMMDD")
    return value


def add_years(d: _dt.date, years: int) -> _dt.date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February -> 1 March ("at least")
        return _dt.date(d.year + years, 3, 1)


def _dicom_value(metadata: dict, tag: str) -> str | None:
    el = metadata.get(tag) or {}
    values = el.get("Value") or []
    v = values[0] if values else None
    return str(v).strip() if v not in (None, "") else None


@dataclass
class Decision:
    """The retention of one study. PHI-free: classes, dates, no names or IDs."""

    study_uid: str
    visit_class: str
    class_source: str            # "his" | "dicom" | "default"
    start: str                   # YYYYMMDD
    start_basis: str             # what the start date is
    years: int
    retain_until: str            # YYYYMMDD, last day inside retention
    expired: bool
    legal_hold: bool = False
    hold_reason: str = ""
    in_catalogue: bool = True

    @property
    def deletable(self) -> bool:
        return self.expired and not self.legal_hold

    def veto_reason(self) -> str:
        if self.legal_hold:
            return "the study is under legal hold" + (
                f" ({self.hold_reason})" if self.hold_reason else "")
        until = f"{self.retain_until[:4]}-{self.retain_until[4:6]}-{self.retain_until[6:]}"
        return (f"the study is inside its retention period until {until} "
                f"({self.visit_class}, {self.years} years from {self.start_basis}; R-A7)")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["deletable"] = self.deletable
        return d


class RetentionPolicy:
    """Judges studies by the ``[retention]`` rules over the catalogue (module docstring)."""

    def __init__(self, conf: RetentionSettings, lifecycle: Lifecycle,
                 clock: Callable[[], float] = time.time) -> None:
        self.conf = conf
        self.lifecycle = lifecycle
        self.clock = clock

    def today(self) -> _dt.date:
        return _dt.datetime.fromtimestamp(self.clock(), _dt.timezone.utc).date()

    def decide(self, study_uid: str) -> Decision:
        facts = self.lifecycle.study_facts(study_uid)
        row = self.lifecycle.retention_row(study_uid)
        if facts is None and row is None:
            raise errors.NotFound("no such study")
        return self.decide_from(study_uid, row, facts)

    def _default_class(self) -> str:
        c = self.conf.default_class
        if c == "longest":
            return ("inpatient" if self.conf.inpatient_years >= self.conf.outpatient_years
                    else "outpatient")
        return c

    def decide_from(self, study_uid: str, row: dict | None, facts: dict | None) -> Decision:
        row = row or {}
        facts = facts or {}
        meta = facts.get("metadata") or {}
        archived_ts = facts.get("archived_at") or self.clock()
        archived = _dt.datetime.fromtimestamp(archived_ts, _dt.timezone.utc).date()

        def dicom_date(value: Any) -> _dt.date | None:
            d = parse_date(value)
            return d if d is not None and d <= archived else None

        if row.get("visit_class") in VISIT_CLASSES:
            vclass, source = row["visit_class"], "his"
        elif _dicom_value(meta, ADMISSION_ID):
            vclass, source = "inpatient", "dicom"
        else:
            vclass, source = self._default_class(), "default"
        his_visit = parse_date(row.get("visit_date"))
        study_date = dicom_date(facts.get("study_date"))
        if vclass == "outpatient":
            if his_visit:
                start, basis = his_visit, "the visit date (HIS)"
            elif study_date:
                start, basis = study_date, "StudyDate"
            else:
                start, basis = archived, "the archive date"
            years = self.conf.outpatient_years
        else:
            his_discharge = parse_date(row.get("discharge_date"))
            dicom_discharge = dicom_date(_dicom_value(meta, DISCHARGE_DATE))
            if his_discharge:
                start, basis = his_discharge, "discharge (HIS)"
            elif dicom_discharge:
                start, basis = dicom_discharge, "DischargeDate"
            else:
                known = [(d, b) for d, b in ((his_visit, "the admission date (HIS)"),
                                             (study_date, "StudyDate")) if d]
                start, basis = max(known) if known else (archived, "the archive date")
                basis += " (no discharge date known)"
            years = self.conf.inpatient_years
        until = add_years(start, years)
        return Decision(
            study_uid=study_uid, visit_class=vclass, class_source=source,
            start=start.strftime("%Y%m%d"), start_basis=basis, years=years,
            retain_until=until.strftime("%Y%m%d"),
            expired=self.conf.enabled and self.today() > until,
            legal_hold=bool(row.get("legal_hold")), hold_reason=row.get("hold_reason") or "",
            in_catalogue=bool(facts))

    def check_deletable(self, study_uid: str) -> None:
        """RetentionVeto (409) unless the study may be deleted now."""
        facts = self.lifecycle.study_facts(study_uid)
        row = self.lifecycle.retention_row(study_uid)
        if facts is None and row is None:
            return  # nothing to protect: the delete itself answers 404
        d = self.decide_from(study_uid, row, facts)
        if d.legal_hold or (self.conf.enabled and not d.expired):
            raise RetentionVeto(d.veto_reason())


def policy_of(archive: Archive) -> RetentionPolicy:
    return RetentionPolicy(archive.settings.retention, Lifecycle(archive.catalogue),
                           getattr(archive, "clock", time.time))


def check_deletable(archive: Archive, study_uid: str) -> None:
    """The veto of ``IngestService.delete`` (blocking; run it on the worker pool)."""
    policy_of(archive).check_deletable(study_uid)


# --- HIS data and legal hold -------------------------------------------------------------

class RetentionService:
    """Record visit data and legal holds. ``audit``: when given, each change is written
    to it (the command line); the web adapter audits its requests itself."""

    def __init__(self, archive: Archive, audit: AuditTrail | None = None,
                 actor: Any = None) -> None:
        self.archive = archive
        self.policy = policy_of(archive)
        self.lifecycle = self.policy.lifecycle
        self.audit = audit
        self.actor = actor

    def _check_uid(self, study_uid: str) -> None:
        if not is_valid_uid(study_uid):
            raise errors.BadRequest("not a valid StudyInstanceUID")

    def decide(self, study_uid: str) -> Decision:
        self._check_uid(study_uid)
        return self.policy.decide(study_uid)

    def set_visit(self, study_uid: str, visit_class: Any, visit_date: Any = None,
                  discharge_date: Any = None, *, source: str = "api") -> Decision:
        self._check_uid(study_uid)
        if visit_class not in VISIT_CLASSES:
            raise errors.BadRequest("visit_class is outpatient or inpatient")
        visit_date = check_date(visit_date, "visit_date")
        discharge_date = check_date(discharge_date, "discharge_date")
        if visit_class == "outpatient" and discharge_date:
            raise errors.BadRequest("an outpatient visit has no discharge date")
        if visit_date and discharge_date and discharge_date < visit_date:
            raise errors.BadRequest("discharge_date is before visit_date")
        self.lifecycle.set_visit(study_uid, visit_class=visit_class, visit_date=visit_date,
                                 discharge_date=discharge_date, source=source,
                                 now=self.policy.clock())
        if self.audit is not None:
            self.audit.record("visit-data", actor=self.actor, study_uid=study_uid, detail={
                "visit_class": visit_class, "visit_date": visit_date,
                "discharge_date": discharge_date})
        return self.policy.decide(study_uid)

    def set_hold(self, study_uid: str, hold: bool, reason: Any) -> Decision:
        self._check_uid(study_uid)
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 200:
            raise errors.BadRequest("a reason (1-200 characters, no patient data) is required")
        self.lifecycle.set_hold(study_uid, hold, reason.strip(), self.policy.clock())
        if self.audit is not None:
            self.audit.record("legal-hold", actor=self.actor, study_uid=study_uid,
                              detail={"hold": hold, "reason": reason.strip()})
        return self.policy.decide(study_uid)


# --- purge -------------------------------------------------------------------------------

@dataclass
class PurgeReport:
    studies_checked: int = 0
    expired: int = 0
    held: int = 0                      # expired but under legal hold: kept
    marked: int = 0
    finalized: int = 0
    resumed: int = 0                   # tombstones left open by an earlier run
    blobs_deleted: int = 0
    blobs_shared: int = 0              # still used by another instance/version: kept
    errors: list[str] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)   # dry run: what would go
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> list[str]:
        lines = [f"studies checked: {self.studies_checked}",
                 f"expired: {self.expired} (under legal hold, kept: {self.held})"]
        if self.dry_run:
            lines.append(f"would purge: {len(self.candidates)} studies (dry run, "
                         "nothing changed)")
            lines += [f"  {c['study_uid']} {c['visit_class']} until {c['retain_until']}"
                      for c in self.candidates[:1000]]
        else:
            lines += [f"tombstones resumed from an earlier run: {self.resumed}",
                      f"marked: {self.marked}, finalised: {self.finalized}",
                      f"blobs deleted: {self.blobs_deleted} (kept, still in use: "
                      f"{self.blobs_shared})"]
        lines += [f"error: {e}" for e in self.errors]
        lines.append("result: OK" if self.ok else "result: PROBLEMS REMAIN")
        return lines


class Purger:
    """Delete studies whose retention has expired (module docstring)."""

    def __init__(self, archive: Archive, audit: AuditTrail, *, actor: Any = None,
                 progress: Callable[[str, int, "int | None"], None] | None = None) -> None:
        self.archive = archive
        self.policy = policy_of(archive)
        self.lifecycle = self.policy.lifecycle
        self.audit = audit
        self.actor = actor
        self.progress = progress

    def run(self, *, dry_run: bool = False, stop_after_mark: bool = False) -> PurgeReport:
        """``stop_after_mark`` (tests, FT-13): mark the first expired study and stop, as a
        crash between the two phases would."""
        if not self.archive.settings.retention.enabled:
            raise errors.Conflict("[retention] enabled is false: no rules to purge by")
        report = PurgeReport(dry_run=dry_run)
        if not dry_run:
            for tomb_pk, study_uid, _count in self.lifecycle.open_tombstones():
                report.resumed += 1
                self._purge_tombstone(tomb_pk, study_uid, report)
        total = self.archive.catalogue.counts()["studies"]
        for n, (_pk, uid) in enumerate(self.lifecycle.iter_study_uids(), 1):
            if self.progress is not None:
                self.progress("studies", n, total)
            report.studies_checked += 1
            d = self.policy.decide(uid)
            if not d.expired:
                continue
            report.expired += 1
            if d.legal_hold:
                report.held += 1
                continue
            if dry_run:
                report.candidates.append(d.as_dict())
                continue
            try:
                tomb = self._mark(uid, d)
            except errors.Conflict as e:  # a hold arrived meanwhile
                report.held += 1
                log.info("purge: study skipped: %s", e.reason)
                continue
            except errors.NotFound:  # deleted meanwhile (e.g. by a concurrent purge run)
                continue
            report.marked += 1
            if stop_after_mark:
                return report
            self._purge_tombstone(tomb, uid, report)
        return report

    def _mark(self, uid: str, d: Decision) -> int:
        facts = self.lifecycle.study_facts(uid)

        def still_allowed(row: dict | None) -> bool:
            return self.policy.decide_from(uid, row, facts).deletable

        reason = {"visit_class": d.visit_class, "class_source": d.class_source,
                  "retain_until": d.retain_until, "start_basis": d.start_basis}
        tomb = self.lifecycle.mark_for_purge(uid, reason, self.policy.clock(), still_allowed)
        count = len(self.lifecycle.pending_blobs(tomb))
        self.audit.record("purge", actor=self.actor, study_uid=uid, object_count=count,
                          detail={"phase": "marked", "tombstone": tomb, **reason})
        self.audit.flush_sync()  # the mark is on record before any blob goes
        return tomb

    def _purge_tombstone(self, tomb: int, uid: str, report: PurgeReport) -> None:
        store = self.archive.store
        failed = False
        for opk, sha in self.lifecycle.pending_blobs(tomb):
            if self.lifecycle.blob_still_referenced(sha):
                report.blobs_shared += 1
            else:
                try:
                    store.delete(sha)  # every copy; idempotent (a gone copy is fine)
                except errors.PacsdError as e:
                    failed = True
                    report.errors.append(f"tombstone {tomb}: blob {sha[:16]} not deleted "
                                         f"from every copy: {e.reason}")
                    continue
                report.blobs_deleted += 1
            self.lifecycle.blob_deleted(opk)
        if failed:
            return  # stays "marked": the next run retries (FT-13)
        self.lifecycle.finalize(tomb, self.policy.clock())
        report.finalized += 1
        self.audit.record("purge", actor=self.actor, study_uid=uid,
                          detail={"phase": "finalized", "tombstone": tomb})
        self.audit.flush_sync()


# --- command line (pacsd retention ...) ------------------------------------------------

def run_cli(archive: Archive, audit: AuditTrail, args, *, progress=None, out=print) -> int:
    from .security import LOCAL

    svc = RetentionService(archive, audit, LOCAL)
    if args.action == "show":
        d = svc.decide(args.study)
        for k, v in d.as_dict().items():
            out(f"{k}: {v}")
        return 0
    if args.action in ("hold", "release"):
        d = svc.set_hold(args.study, args.action == "hold", args.reason)
        out(f"legal hold {'set' if d.legal_hold else 'cleared'}; retained until "
            f"{d.retain_until}")
        return 0
    if args.action == "visit":
        d = svc.set_visit(args.study, args.visit_class, args.visit_date,
                          args.discharge_date, source="cli")
        out(f"{d.visit_class}: retained until {d.retain_until} (from {d.start_basis})")
        return 0
    report = Purger(archive, audit, actor=LOCAL, progress=progress).run(
        dry_run=args.dry_run)
    for line in report.summary():
        out(line)
    return 0 if report.ok else 1
