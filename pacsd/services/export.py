"""Export and hand-back (R-A11): every stored object as a DICOM Part 10 file, a manifest
with SHA-256 sums and the index as a portable dump, to any fsspec URL (a directory,
``file://``, ``s3://`` with the S3 options of ``[storage]``), and a verifier that
re-checks an export against its manifest.

Layout (documented in docs/operations.md "Export and hand-back"; paths never contain raw
strings from the data — BI-6/SEC-15)::

    README.txt                     what is where (this layout)
    DICOM/<P…>/<Study>/<Series>/<SOP>.dcm (and <SOP>.v<N>.dcm: kept version N, R-A8)
                                   the stored objects, byte for byte; <P…> is "P" + the
                                   first 20 hex digits of SHA-256(issuer NUL PatientID)
                                   (no PHI in paths); UIDs are used as they are only
                                   when they are valid DICOM UIDs (digits and dots,
                                   at most 64), else "X" + a hash of them
    index/<table>.jsonl            the catalogue rows in scope, one JSON object a line
                                   (bytes as {"$b64": ...}); with an unfiltered export
                                   also the audit trail and the purge tombstones
    manifest.csv                   one line per object: path, sha256, size and UIDs
    manifest.json                  summary: counts, filter, and path/sha256/size of
                                   manifest.csv, README.txt and every index file

Streaming: one object at a time, read from the store in chunks (hash-checked; a bad copy
falls back to a good one, FT-6) and written in chunks; never a study in memory.

Resumable: progress is kept *at the target* in ``.pacsd-export/`` (``state.json`` plus
manifest parts of up to :data:`CHECKPOINT_EVERY` objects), so an interrupted run, even
from another machine, continues after the last checkpoint; objects already present with
the right SHA-256 are not written again. The set exported is fixed when a run starts
(instances with pk up to the then newest), so a busy archive does not make it endless;
run the export again later to add what arrived since (present objects are skipped).
An object without any valid copy (FT-8) stops the export before its checkpoint: repair
it (``pacsd verify --repair``) and resume.

Every exported object is written to the audit trail (event ``export``; no PHI).
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from .. import __version__
from ..errors import BadRequest, PacsdError
from ..index.lifecycle import ExportFilter, ExportRow, Lifecycle
from ..store.base import CHUNK
from .archive import Archive
from .audit import AuditTrail
from .export_target import Target, redacted

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 500
STATE_DIR = ".pacsd-export"
MANIFEST_COLUMNS = ("path", "sha256", "size", "study_instance_uid", "series_instance_uid",
                    "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid",
                    "patient_key", "version")
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")

#: progress(phase, done, total)
Progress = Callable[[str, int, "int | None"], None]

README = """pacsd export ({version})

DICOM/<patient key>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    Every exported object as DICOM Part 10, byte for byte as pacsd stored it.
    <SOPInstanceUID>.v<N>.dcm: earlier version N kept after a correction (1 = as first
    received; the file without .v<N> is the current version).
    The patient key is "P" + 20 hex digits of SHA-256(IssuerOfPatientID NUL PatientID);
    the patient's identity is inside the files and in index/patients.jsonl.
index/<table>.jsonl
    The catalogue rows of the exported studies, one JSON object per line; binary
    columns as {{"$b64": base64}}. Full exports add the audit trail.
manifest.csv
    path, sha256, size and UIDs of every exported object (UTF-8, header line).
manifest.json
    Summary, and sha256/size of manifest.csv, README.txt and each index file.
Check an export: sha256sum the files against manifest.csv, or `pacsd export --verify URL`.
"""


def safe_uid(uid: str) -> str:
    """A path component for a UID: the UID itself when it is a valid DICOM UID (digits
    and dots, at most 64 characters), otherwise "X" + 40 hex digits of its hash."""
    if len(uid) <= 64 and _UID_RE.fullmatch(uid):
        return uid
    return "X" + hashlib.sha256(uid.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def patient_key(patient_id: str, issuer: str) -> str:
    return "P" + hashlib.sha256(f"{issuer}\0{patient_id}".encode(
        "utf-8", "surrogatepass")).hexdigest()[:20]


def object_path(row: ExportRow) -> str:
    """``<SOP>.dcm`` for the current version, ``<SOP>.v<N>.dcm`` for kept version N."""
    suffix = ".dcm" if row.version is None else f".v{int(row.version)}.dcm"
    return "/".join(("DICOM", patient_key(row.patient_id, row.issuer_of_patient_id),
                     safe_uid(row.study_instance_uid), safe_uid(row.series_instance_uid),
                     safe_uid(row.sop_instance_uid) + suffix))


# --- export ------------------------------------------------------------------------------

@dataclass
class ExportReport:
    target: str
    total: int = 0
    written: int = 0
    present: int = 0             # already at the target with the right hash (resume)
    bytes_written: int = 0
    resumed_after_pk: int = 0
    complete: bool = False
    error: str = ""
    files: dict[str, dict] = field(default_factory=dict)

    def summary(self) -> list[str]:
        lines = [f"export to {self.target}",
                 f"objects: {self.written} written, {self.present} already present "
                 f"(of {self.total})", f"bytes written: {self.bytes_written}"]
        if self.resumed_after_pk:
            lines.append(f"resumed after pk {self.resumed_after_pk}")
        if self.error:
            lines.append(f"error: {self.error}")
        lines.append("result: COMPLETE" if self.complete else "result: INCOMPLETE")
        return lines


class Exporter:
    def __init__(self, archive: Archive, target: Target, *, audit: AuditTrail | None = None,
                 actor: Any = None, progress: Progress | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.archive = archive
        self.target = target
        self.lifecycle = Lifecycle(archive.catalogue)
        self.audit = audit if audit is not None else AuditTrail(archive.catalogue)
        self.actor = actor
        self.progress = progress
        self.clock = clock
        self.location = redacted(target.url)

    def _tick(self, phase: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(phase, done, total)

    def _load_state(self, flt: ExportFilter) -> dict | None:
        raw = self.target.read_bytes(f"{STATE_DIR}/state.json")
        if raw is None:
            return None
        state = orjson.loads(raw)
        if state.get("filter") != flt.as_dict() or state.get("patient_id_hash") != \
                _pid_hash(flt):
            raise BadRequest("the target holds an unfinished export with another filter; "
                             "use another target or remove its .pacsd-export folder")
        return state

    def _save_state(self, state: dict) -> None:
        self.target.write_bytes(f"{STATE_DIR}/state.json", orjson.dumps(state))

    def run(self, flt: ExportFilter = ExportFilter(), *, limit: int | None = None
            ) -> ExportReport:
        """Export (or continue exporting) the scope of ``flt``. ``limit`` stops after that
        many objects (tests: an interrupted run)."""
        report = ExportReport(self.location)
        state = self._load_state(flt)
        if state is None:
            state = {"filter": flt.as_dict(), "patient_id_hash": _pid_hash(flt),
                     "upto_pk": self.lifecycle.max_instance_pk(), "after_pk": 0,
                     "version_upto_pk": self.lifecycle.max_version_pk(),
                     "version_after_pk": 0, "phase": "objects", "parts": 0,
                     "started_at": self.clock(), "objects": 0, "bytes": 0}
            self._save_state(state)
        else:
            report.resumed_after_pk = state["after_pk"]
        report.total = (self.lifecycle.count_export(flt, upto_pk=state["upto_pk"])
                        + self.lifecycle.count_export_versions(flt, state["version_upto_pk"]))
        batch: list[dict] = []
        self._tick("objects", state["objects"], report.total)
        try:
            # Phase 1 the current objects, phase 2 kept earlier versions (R-A8).
            phases = [("objects", "after_pk", self.lifecycle.iter_export, "upto_pk"),
                      ("versions", "version_after_pk", self.lifecycle.iter_export_versions,
                       "version_upto_pk")]
            if state["phase"] == "versions":
                phases = phases[1:]
            for phase, after_key, rows, upto_key in phases:
                state["phase"] = phase
                for row in rows(flt, state[after_key], upto_pk=state[upto_key]):
                    if limit is not None and report.written + report.present >= limit:
                        self._checkpoint(state, batch)
                        return report
                    batch.append(self._export_one(row, report))
                    state[after_key] = row.pk
                    self._tick("objects", state["objects"] + len(batch), report.total)
                    if len(batch) >= CHECKPOINT_EVERY:
                        self._checkpoint(state, batch)
                        batch = []
                self._checkpoint(state, batch)
                batch = []
            self._finish(flt, state, report)
        except PacsdError as e:
            # Stops before the failed object's checkpoint: a resumed run retries it.
            report.error = e.reason
            log.error("export stopped: %s", e.reason)
            self._flush_audit()
        return report

    def _export_one(self, row: ExportRow, report: ExportReport) -> dict:
        rel = object_path(row)
        action = "present"
        existing = self.target.size(rel)
        if existing != row.size or self.target.hash(rel) != (row.sha256, row.size):
            # Read hash-checked from the store (a bad copy falls back to a good one).
            chunks = self.archive.store.open_verified(row.sha256, CHUNK)
            sha, size = self.target.write(rel, chunks)
            if (sha, size) != (row.sha256, row.size):  # store verified: never expected
                self.target.remove(rel)
                raise PacsdError("an exported object did not match its hash")
            action = "written"
            report.written += 1
            report.bytes_written += size
        else:
            report.present += 1
        self.audit.record("export", actor=self.actor, study_uid=row.study_instance_uid,
                          object_count=1, location=self.location,
                          detail={"sop_instance_uid": row.sop_instance_uid,
                                  "sha256": row.sha256, "action": action,
                                  "version": row.version})
        return {"path": rel, "sha256": row.sha256, "size": row.size,
                "study_instance_uid": row.study_instance_uid,
                "series_instance_uid": row.series_instance_uid,
                "sop_instance_uid": row.sop_instance_uid, "sop_class_uid": row.sop_class_uid,
                "transfer_syntax_uid": row.transfer_syntax_uid,
                "patient_key": patient_key(row.patient_id, row.issuer_of_patient_id),
                "version": "" if row.version is None else row.version}

    def _checkpoint(self, state: dict, batch: list[dict]) -> None:
        """Manifest part first, then the state that points past it (a crash between the
        two re-exports one batch, found present by hash)."""
        if batch:
            state["parts"] += 1
            self.target.write_bytes(f"{STATE_DIR}/part-{state['parts']:06d}.csv",
                                    _csv(batch, header=False))
            state["objects"] += len(batch)
            state["bytes"] += sum(int(r["size"]) for r in batch)
        self._save_state(state)
        self._flush_audit()

    def _flush_audit(self) -> None:
        try:
            self.audit.flush_sync()
        except PacsdError:
            log.error("ALARM: export audit records could not be written; %d queued",
                      self.audit.pending)
            raise

    def _finish(self, flt: ExportFilter, state: dict, report: ExportReport) -> None:
        files: dict[str, dict] = {}
        # manifest.csv: the parts, in order, streamed into one file.
        parts = [p for p in self.target.list_dir(STATE_DIR) if p.startswith("part-")]

        def manifest_chunks():
            yield _csv([], header=True)
            for p in sorted(parts):
                data = self.target.read_bytes(f"{STATE_DIR}/{p}")
                if data:
                    yield data
        count = state["objects"]
        sha, size = self.target.write("manifest.csv", manifest_chunks())
        files["manifest.csv"] = {"sha256": sha, "size": size}
        sha, size = self.target.write_bytes("README.txt",
                                            README.format(version=__version__).encode())
        files["README.txt"] = {"sha256": sha, "size": size}
        tables = self.lifecycle.dump_tables(flt)
        for n, (name, stmt) in enumerate(tables.items(), 1):
            self._tick("index", n, len(tables))
            sha, size = self.target.write(f"index/{name}.jsonl",
                                          self.lifecycle.iter_dump(stmt))
            files[f"index/{name}.jsonl"] = {"sha256": sha, "size": size}
        summary = {"format": "pacsd-export/1", "pacsd_version": __version__,
                   "created_at": self.clock(), "started_at": state["started_at"],
                   "filter": flt.as_dict(), "objects": count,
                   "bytes": state["bytes"], "files": files}
        self.target.write_bytes("manifest.json", orjson.dumps(
            summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        self.audit.record("export", actor=self.actor, object_count=count,
                          location=self.location,
                          detail={"complete": True, "filter": flt.as_dict()})
        self._flush_audit()
        for p in parts:
            self.target.remove(f"{STATE_DIR}/{p}")
        self.target.remove(f"{STATE_DIR}/state.json")
        report.files = files
        report.complete = True


def _pid_hash(flt: ExportFilter) -> str | None:
    if not flt.patient_id:
        return None
    return hashlib.sha256(flt.patient_id.encode()).hexdigest()


def _csv(rows: list[dict], *, header: bool) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


# --- verify ------------------------------------------------------------------------------

@dataclass
class VerifyExportReport:
    target: str
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> list[str]:
        return ([f"export at {self.target}: {self.checked} files checked",
                 *self.problems[:1000],
                 *([f"... and {len(self.problems) - 1000} more"]
                   if len(self.problems) > 1000 else []),
                 "result: OK" if self.ok else "result: PROBLEMS FOUND"])


def verify_export(target: Target, progress: Progress | None = None) -> VerifyExportReport:
    """Re-read every file of an export and compare it with its manifest (R-A11)."""
    report = VerifyExportReport(redacted(target.url))
    raw = target.read_bytes("manifest.json")
    if raw is None:
        report.problems.append("MISSING            manifest.json (not a complete export)")
        return report
    summary = orjson.loads(raw)

    def check(rel: str, sha: str, size: int) -> None:
        got = target.hash(rel)
        report.checked += 1
        if got is None:
            report.problems.append(f"MISSING            {rel}")
        elif got[1] != size:
            report.problems.append(f"DIFFERING_SIZE     {rel}")
        elif got[0] != sha:
            report.problems.append(f"DIFFERING_CHECKSUM {rel}")

    for rel, meta in sorted(summary.get("files", {}).items()):
        check(rel, meta["sha256"], int(meta["size"]))
    if any(p.endswith(" manifest.csv") for p in report.problems):
        return report  # the object list itself cannot be trusted
    total = int(summary.get("objects") or 0)
    with target.open_read("manifest.csv") as fh:
        reader = csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8", newline=""))
        for n, row in enumerate(reader, 1):
            rel = row["path"]
            if rel.startswith("/") or ".." in rel.split("/"):
                report.problems.append(f"BAD_PATH           {rel[:200]}")
                continue
            check(rel, row["sha256"], int(row["size"]))
            if progress is not None:
                progress("verify", n, total)
    return report
