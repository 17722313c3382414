"""Storage verification ("scrub"): every copy of every indexed object, hash-checked
(R-A6; reliability-matrix §3 target 3, FT-5..FT-9, FT-13, §7 items 4 and 6).

Pass 1 walks the *catalogue* (never a bucket listing: S3-compatible stores may list
eventually, §7 item 4) in pk order, and for each object classifies each copy with
:func:`pacsd.store.verification.check_copy`: OK, MISSING, DIFFERING_SIZE (size differs from
the index), DIFFERING_CHECKSUM (hash differs) or UNREACHABLE (backend down; never called
corrupt). With ``repair=True`` a bad copy is rewritten from a copy whose SHA-256 matches
the index — the hash decides, never a majority (FT-7) — and checked again. When no copy
is valid the object is reported unrepairable (FT-8); the read path already refuses to
serve it (503), so nothing else is marked.

Pass 2 lists each copy and reports *orphans*: objects no instance row refers to and older
than ``orphan_grace_s`` (younger ones may belong to an upload whose index commit is still
to come, §7 item 2). Orphans are reported only, never deleted or adopted here: deleting
inside retention is forbidden (FT-9) and adoption (re-indexing from the object) is a
later step. They come from refused or partially failed writes (see the write policy in
``store/replicated.py``) or from restoring an older index backup. They do not count as
problems for :attr:`ScrubReport.ok`, because nothing acknowledged is at risk.

Resumable (FT-13): :meth:`Scrubber.run` takes ``after_pk`` and calls ``checkpoint(pk)``
as it goes; a run stopped at pk N continues with ``after_pk=N``. Repairs are idempotent
(content-addressed writes), so re-checking a few objects after a restart is harmless.
Logs name objects by hash prefix and copies by URL only (no patient data, SEC-23).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import DataUnavailable, NotFound, OutOfResources, PacsdError
from ..index import Catalogue
from ..store import BlobStore
from ..store.base import digest_of_chunks
from ..store.replicated import copies_of
from ..store.verification import CopyState, check_copy, copy_object, object_mtime

log = logging.getLogger(__name__)

#: Pseudo-state of a pass-2 finding.
ORPHAN = "ORPHAN"
#: Objects between two checkpoint calls.
CHECKPOINT_EVERY = 100
#: Keys looked up in the catalogue at once in pass 2.
ORPHAN_BATCH = 500


@dataclass
class Finding:
    """One copy of one object that is not OK (or an orphan). No patient data."""

    sha256: str
    copy_url: str
    state: str                  # a CopyState value or ORPHAN
    repaired: bool = False
    detail: str = ""

    def line(self) -> str:
        fixed = " (repaired)" if self.repaired else ""
        extra = f": {self.detail}" if self.detail else ""
        return f"{self.state:<18} {self.sha256} {self.copy_url}{fixed}{extra}"


@dataclass
class ScrubReport:
    """What a scrub found and did. ``counts`` is per (object, copy) state as found (before
    repair); ``remaining`` counts the copies still not OK afterwards."""

    copies: list[str] = field(default_factory=list)
    objects: int = 0
    counts: Counter = field(default_factory=Counter)
    repairs: int = 0
    repair_failures: int = 0
    unrepairable: int = 0       # objects without any valid copy (FT-8)
    remaining: int = 0
    orphans: int = 0
    orphans_recent: int = 0     # unreferenced but inside the grace period
    errors: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    findings_dropped: int = 0
    last_pk: int = 0
    complete: bool = False
    digests: int = 0            # fast read-time digests recorded (backfill, R-H1)

    @property
    def ok(self) -> bool:
        """True when every copy of every object checked is OK after the run."""
        return self.complete and self.remaining == 0 and not self.errors

    def add(self, finding: Finding, limit: int) -> None:
        if len(self.findings) < limit:
            self.findings.append(finding)
        else:
            self.findings_dropped += 1

    def summary(self) -> list[str]:
        lines = [f"objects checked: {self.objects} on {len(self.copies)} "
                 f"cop{'y' if len(self.copies) == 1 else 'ies'}"]
        for state in CopyState:
            lines.append(f"  {state.value:<18} {self.counts.get(state.value, 0)}")
        lines.append(f"repairs: {self.repairs} done, {self.repair_failures} failed")
        lines.append(f"objects without any valid copy: {self.unrepairable}")
        lines.append(f"copies still not OK: {self.remaining}")
        lines.append(f"orphans (not in the index, older than the grace period): "
                     f"{self.orphans}" + (f" (+{self.orphans_recent} recent, not counted)"
                                         if self.orphans_recent else ""))
        lines += [f"error: {e}" for e in self.errors]
        if not self.complete:
            lines.append(f"incomplete: stopped after pk {self.last_pk}")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {"copies": self.copies, "objects": self.objects, "counts": dict(self.counts),
                "repairs": self.repairs, "repair_failures": self.repair_failures,
                "unrepairable": self.unrepairable, "remaining": self.remaining,
                "orphans": self.orphans, "orphans_recent": self.orphans_recent,
                "errors": self.errors, "last_pk": self.last_pk, "complete": self.complete,
                "digests": self.digests,
                "ok": self.ok, "findings": [f.__dict__ for f in self.findings]}


#: progress(phase, done, total): phase "objects" (total from the index, may drift while
#: ingest goes on) or "orphans" (total None).
Progress = Callable[[str, int, "int | None"], None]


class Scrubber:
    """Verify (and with ``repair``, fix) every copy of ``store`` against ``catalogue``."""

    def __init__(self, store: BlobStore, catalogue: Catalogue, *, repair: bool = False,
                 orphans: bool = True, orphan_grace_s: float = 24 * 3600.0,
                 max_findings: int = 1000, progress: Progress | None = None) -> None:
        self.store = store
        self.copies = copies_of(store)
        self.catalogue = catalogue
        self.repair = repair
        self.orphans = orphans
        self.orphan_grace_s = orphan_grace_s
        self.max_findings = max_findings
        self.progress = progress

    def run(self, after_pk: int = 0, *, checkpoint: Callable[[int], None] | None = None,
            limit: int | None = None) -> ScrubReport:
        """Pass 1 from ``after_pk`` (at most ``limit`` objects), then pass 2 when pass 1
        reached the end. ``checkpoint(pk)`` is called every few objects and at the end."""
        report = ScrubReport(copies=[c.url for c in self.copies], last_pk=after_pk)
        total = self.catalogue.counts()["instances"]
        self._tick("objects", 0, total)
        stopped = False
        for pk, sha256, size in self.catalogue.iter_blobs(after_pk):
            if limit is not None and report.objects >= limit:
                stopped = True
                break
            self._check_object(sha256, size, report)
            report.objects += 1
            report.last_pk = pk
            if report.objects % CHECKPOINT_EVERY == 0 and checkpoint is not None:
                checkpoint(pk)
            self._tick("objects", report.objects, total)
        if checkpoint is not None:
            checkpoint(report.last_pk)
        if stopped:
            return report
        self._backfill_digests(report)
        # Kept earlier versions (R-A8, services/versions.py) are stored objects too.
        from ..index.lifecycle import Lifecycle
        for _pk, sha256, size in Lifecycle(self.catalogue).iter_version_blobs():
            self._check_object(sha256, size, report)
            report.objects += 1
        if self.orphans:
            self._orphan_pass(report)
        report.complete = True
        return report

    def _backfill_digests(self, report: ScrubReport) -> None:
        """Instances stored before migration 10 have no fast read-time digest, so every
        read of them re-hashes with SHA-256 (R-H1). Read each such object once more from a
        good copy, SHA-256-checked as it streams, hash XXH3-128 over the same bytes and
        record it. An object without a good copy is skipped (pass 1 reported it)."""
        for _pk, sha256, _size in self.catalogue.iter_blobs(missing_digest=True):
            try:
                digest = digest_of_chunks(self.store.open_verified(sha256), sha256)
            except (NotFound, DataUnavailable, OutOfResources):
                continue
            try:
                report.digests += bool(self.catalogue.set_digest(sha256, digest))
            except PacsdError as e:
                report.errors.append(f"recording digests: {e.reason}")
                return

    def _tick(self, phase: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(phase, done, total)

    # --- pass 1 ---------------------------------------------------------------------------

    def _check_object(self, sha256: str, size: int, report: ScrubReport) -> None:
        states = [check_copy(c, sha256, size) for c in self.copies]
        report.counts.update(s.value for s in states)
        good = [i for i, s in enumerate(states) if s is CopyState.OK]
        for i, state in enumerate(states):
            if state is CopyState.OK:
                continue
            finding = Finding(sha256, self.copies[i].url, state.value)
            if not good:
                finding.detail = "no valid copy to repair from"
            elif self.repair and state.repairable:
                finding.repaired, finding.detail = self._repair(sha256, size, good[0], i)
                if finding.repaired:
                    report.repairs += 1
                else:
                    report.repair_failures += 1
            if not finding.repaired:
                report.remaining += 1
            report.add(finding, self.max_findings)
            log.warning("scrub: object %s copy %s: %s%s", sha256[:16], self.copies[i].url,
                        state.value, " (repaired)" if finding.repaired else "")
        if not good:
            report.unrepairable += 1
            log.error("scrub: object %s has no valid copy (FT-8)", sha256[:16])

    def _repair(self, sha256: str, size: int, source: int, target: int) -> tuple[bool, str]:
        """Rewrite copy ``target`` from hash-valid copy ``source``, then check it again."""
        try:
            copy_object(self.copies[source], self.copies[target], sha256, size,
                        self.store.staging_dir())
        except PacsdError as e:
            return False, f"repair failed: {e.reason}"
        after = check_copy(self.copies[target], sha256, size)
        if after is not CopyState.OK:
            return False, f"still {after.value} after repair"
        return True, f"rewritten from {self.copies[source].url}"

    # --- pass 2 ---------------------------------------------------------------------------

    def _orphan_pass(self, report: ScrubReport) -> None:
        now = time.time()
        done = 0
        for copy in self.copies:
            batch: list[str] = []
            try:
                for key in copy.iter_keys():
                    batch.append(key)
                    if len(batch) >= ORPHAN_BATCH:
                        self._orphans_in(copy, batch, now, report)
                        done += len(batch)
                        batch = []
                        self._tick("orphans", done, None)
                self._orphans_in(copy, batch, now, report)
                done += len(batch)
                self._tick("orphans", done, None)
            except PacsdError as e:
                report.errors.append(f"could not list {copy.url}: {e.reason}")

    def _orphans_in(self, copy: BlobStore, keys: list[str], now: float,
                    report: ScrubReport) -> None:
        if not keys:
            return
        known = self.catalogue.known_sha256(keys)
        for key in keys:
            if key in known:
                continue
            mtime = object_mtime(copy, key)
            if mtime is not None and now - mtime < self.orphan_grace_s:
                report.orphans_recent += 1
                continue
            report.orphans += 1
            report.add(Finding(key, copy.url, ORPHAN, detail="not referenced by the index"),
                       self.max_findings)
            log.info("scrub: orphan object %s on %s (reported, not deleted)", key[:16],
                     copy.url)
