"""De-identified research export (R-H3, R-E7, R-G2, MLPS 22): ``pacsd export --deidentify``.

Every object in the scope of the filter is read from the store (hash-checked, FT-6),
de-identified with :func:`pacsd.dicom.deid.deidentify` (PS3.15 Annex E Basic Application
Level Confidentiality Profile with the chosen options) and written to the target::

    README.txt                       what is where
    DICOM/<Study>/<Series>/<SOP>.dcm the de-identified objects; every UID in paths and
                                     files is a remapped ``2.25.`` UID
    manifest.csv                     path, sha256, size and the *new* UIDs of every object
    manifest.json                    summary: counts, profile and options (CID 7050 codes),
                                     authorization reference, sha256/size of the files

No original patient data anywhere in the output: no index dump, no filter values, no
original UID or PatientID in names, manifest or summary. The UID / pseudonym secret is
random per export and never stored, so the mapping cannot be reversed or linked to
another export (R-G2: a new set needs a new authorization).

An export needs an authorization record (``REF: reason``, e.g. the ethics committee
approval) — refused without one — and is audited: one ``research-export`` event per
original study (the access audit, R-E4) and one summary event with the authorization,
options, counts and target (docs/security.md). Instances that may show identifying text in
their pixels (BurnedInAnnotation) are skipped and counted, not exported, unless the
``allow-burned-in`` decision is given. Not resumable: an interrupted research export is
run again into an empty target (docs/operations.md).
"""
from __future__ import annotations

import csv
import io
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
import pydicom

from .. import __version__
from ..dicom.deid import OPTIONS, BurnedInAnnotationRefused, Profile, deidentify
from ..errors import BadRequest, PacsdError
from ..index.lifecycle import ExportFilter, Lifecycle
from .archive import Archive
from .audit import AuditTrail
from .export_target import Target, redacted

log = logging.getLogger(__name__)

ALLOW_BURNED_IN = "allow-burned-in"
COLUMNS = ("path", "sha256", "size", "study_instance_uid", "series_instance_uid",
           "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid")
_AUTH = re.compile(r"^\s*([^:\s][^:]{0,63}?)\s*:\s*(\S.{0,499}?)\s*$", re.S)

README = """pacsd de-identified research export ({version})

DICOM/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    Every exported object as DICOM Part 10, de-identified with the DICOM PS3.15 Annex E
    Basic Application Level Confidentiality Profile and the options listed in
    manifest.json (and in each object's (0012,0063) / (0012,0064)). All UIDs are
    replaced, consistently within this export. Pixel data is unchanged.
manifest.csv
    path, sha256, size and the (new) UIDs of every object.
manifest.json
    Summary: counts, profile and options, authorization reference, file checksums.
Check: `pacsd export --verify URL`.
"""


@dataclass(frozen=True)
class Authorization:
    reference: str
    reason: str

    @classmethod
    def parse(cls, text: str | None) -> "Authorization":
        m = _AUTH.match(text or "")
        if not m:
            raise BadRequest("a de-identified export needs an authorization record: "
                             "--authorization \"REFERENCE: reason\" (R-G2)")
        return cls(m[1].strip(), m[2].strip())


@dataclass
class ResearchReport:
    target: str
    total: int = 0
    written: int = 0
    skipped_burned_in: int = 0
    studies: int = 0
    bytes_written: int = 0
    complete: bool = False
    error: str = ""
    files: dict[str, dict] = field(default_factory=dict)

    def summary(self) -> list[str]:
        lines = [f"de-identified export to {self.target}",
                 f"objects: {self.written} written of {self.total} "
                 f"({self.studies} studies)", f"bytes written: {self.bytes_written}"]
        if self.skipped_burned_in:
            lines.append(f"skipped: {self.skipped_burned_in} (may have burned-in "
                         f"annotation; see --deid-option {ALLOW_BURNED_IN})")
        if self.error:
            lines.append(f"error: {self.error}")
        lines.append("result: COMPLETE" if self.complete else "result: INCOMPLETE")
        return lines


def parse_options(names: list[str] | None) -> tuple[frozenset[str], bool]:
    """(profile options, allow burned-in) from ``--deid-option`` values."""
    chosen = set(names or [])
    allow = ALLOW_BURNED_IN in chosen
    chosen.discard(ALLOW_BURNED_IN)
    unknown = chosen - set(OPTIONS)
    if unknown:
        raise BadRequest(f"unknown --deid-option {sorted(unknown)}; known: "
                         f"{sorted([*OPTIONS, ALLOW_BURNED_IN])}")
    return frozenset(chosen), allow


class ResearchExporter:
    def __init__(self, archive: Archive, target: Target, *, authorization: Authorization,
                 options: frozenset[str] = frozenset(), allow_burned_in: bool = False,
                 audit: AuditTrail | None = None, actor: Any = None,
                 secret: bytes | None = None,
                 progress: Callable[[str, int, "int | None"], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.archive = archive
        self.target = target
        self.lifecycle = Lifecycle(archive.catalogue)
        self.audit = audit if audit is not None else AuditTrail(archive.catalogue)
        self.actor = actor
        self.authorization = authorization
        self.profile = Profile(secret=secret or os.urandom(32), options=options,
                               allow_burned_in=allow_burned_in)
        self.progress = progress
        self.clock = clock
        self.location = redacted(target.url)

    def _detail(self, report: ResearchReport, flt: ExportFilter) -> dict:
        return {"authorization": {"reference": self.authorization.reference,
                                  "reason": self.authorization.reason},
                "profile": [code for code, _ in self.profile.codes()],
                "options": sorted(self.profile.options),
                "allow_burned_in": self.profile.allow_burned_in,
                "objects": report.written, "skipped_burned_in": report.skipped_burned_in,
                "studies": report.studies, "complete": report.complete,
                "filter": flt.as_dict()}

    def run(self, flt: ExportFilter = ExportFilter()) -> ResearchReport:
        report = ResearchReport(self.location)
        upto = self.lifecycle.max_instance_pk()
        report.total = self.lifecycle.count_export(flt, upto_pk=upto)
        rows: list[dict] = []
        per_study: dict[str, int] = {}
        started = self.clock()
        try:
            if self.target.read_bytes("manifest.json") is not None or \
                    self.target.list_dir("DICOM"):
                raise BadRequest("the target already holds an export; use an empty target")
            for n, row in enumerate(self.lifecycle.iter_export(flt, 0, upto_pk=upto), 1):
                data = self.archive.store.read(row.sha256, expected_size=row.size)
                out = self._one(data, report)
                if out is not None:
                    rows.append(out)
                    per_study[row.study_instance_uid] = \
                        per_study.get(row.study_instance_uid, 0) + 1
                if self.progress is not None:
                    self.progress("objects", n, report.total)
            report.studies = len(per_study)
            self._finish(rows, report, started)
        except PacsdError as e:
            report.error = e.reason
            log.error("de-identified export stopped: %s", e.reason)
        for study_uid, count in per_study.items():   # access audit: which exams left
            self.audit.record("research-export", actor=self.actor, study_uid=study_uid,
                              object_count=count, location=self.location,
                              detail={"authorization_reference":
                                      self.authorization.reference})
        self.audit.record("research-export", actor=self.actor,
                          outcome="success" if report.complete else "failure",
                          object_count=report.written, location=self.location,
                          detail=self._detail(report, flt))
        self.audit.flush_sync()
        return report

    def _one(self, data: bytes, report: ResearchReport) -> dict | None:
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as e:  # the archive validated it on ingest: never expected
            raise PacsdError(f"a stored object could not be parsed ({type(e).__name__})")
        tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        try:
            deidentify(ds, self.profile)
        except BurnedInAnnotationRefused:
            report.skipped_burned_in += 1
            return None
        if tsyntax:
            ds.file_meta.TransferSyntaxUID = tsyntax
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        rel = "/".join(("DICOM", str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                        str(ds.SOPInstanceUID) + ".dcm"))
        sha, size = self.target.write_bytes(rel, buf.getvalue())
        report.written += 1
        report.bytes_written += size
        return {"path": rel, "sha256": sha, "size": size,
                "study_instance_uid": str(ds.StudyInstanceUID),
                "series_instance_uid": str(ds.SeriesInstanceUID),
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "sop_class_uid": str(ds.get("SOPClassUID", "")),
                "transfer_syntax_uid": str(tsyntax or "")}

    def _finish(self, rows: list[dict], report: ResearchReport, started: float) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        files = {}
        sha, size = self.target.write_bytes("manifest.csv", buf.getvalue().encode())
        files["manifest.csv"] = {"sha256": sha, "size": size}
        sha, size = self.target.write_bytes("README.txt",
                                            README.format(version=__version__).encode())
        files["README.txt"] = {"sha256": sha, "size": size}
        summary = {"format": "pacsd-research-export/1", "pacsd_version": __version__,
                   "created_at": self.clock(), "started_at": started,
                   "objects": report.written, "bytes": report.bytes_written,
                   "skipped_burned_in": report.skipped_burned_in,
                   "studies": report.studies,
                   "deidentification": {
                       "profile": "DICOM PS3.15 E.1 Basic Application Level "
                                  "Confidentiality Profile",
                       "codes": [{"code": c, "scheme": "DCM", "meaning": m}
                                 for c, m in self.profile.codes()],
                       "options": sorted(self.profile.options)},
                   "authorization_reference": self.authorization.reference,
                   "files": files}
        self.target.write_bytes("manifest.json", orjson.dumps(
            summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        report.files = files
        report.complete = True
