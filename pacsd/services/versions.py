"""Corrections keep history (R-A8): a correction of patient/study attributes makes a new
version of every instance of the study — new bytes, new blob, same SOP Instance UID —
while every earlier version stays stored, listed and retrievable.

Per correction (``POST /api/v1/studies/{uid}/corrections``):

1. validate the changes (``dicom.correct.check_changes``: patient and study attributes
   only, values checked against their VR) and the reason;
2. per instance, one at a time (never a study in memory): read the current version
   hash-checked, write the corrected Part 10 bytes (``dicom.correct.correct_instance``:
   same transfer syntax, Original Attributes Sequence with the old values, Pixel Data
   checked byte-identical) to a staging file, parse it as ingest does, check the per-frame
   CRC32 equal to the current version's (R-A5), and store it on every copy;
3. one catalogue transaction (``index/versions.py``) moves the current rows to the new
   blobs and records the superseded ones in ``instance_versions``.

If anything fails before step 3 nothing is changed (new blobs written so far are
unreferenced orphans that ``pacsd verify`` reports). WADO-RS, QIDO-RS and DIMSE serve the
current version from the same rows as before (no extra work on the hot paths); old
versions are read with ``GET .../instances/{sop}/versions/{n}``. Audited (``correction``;
reading an old version is ``study-read``).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
from typing import Any

from .. import errors
from ..dicom import is_valid_uid, parse_instance
from ..dicom.correct import check_changes, correct_instance
from ..index import versions as vindex
from ..store.crypto import key_scope
from .archive import Archive
from .ingest import encryption_scope

log = logging.getLogger(__name__)


class VersionService:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    @staticmethod
    def _check_uid(*uids: str) -> None:
        for uid in uids:
            if not is_valid_uid(uid):
                raise errors.BadRequest("not a valid UID")

    def correct(self, study_uid: str, changes: Any, reason: Any, *, actor: str = ""
                ) -> dict:
        """Blocking: run on the worker pool. Returns a PHI-free summary."""
        self._check_uid(study_uid)
        changes = check_changes(changes)
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 200:
            raise errors.BadRequest("a reason (1-200 characters, no patient data) is required")
        a = self.archive
        rows = list(a.catalogue.iter_instances(study_uid))
        if not rows:
            raise errors.NotFound("no such study")
        now = a.clock()
        when = _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
        prepared = []
        for row in rows:
            data = a.store.read(row.sha256, expected_size=row.size, digest=row.digest)
            new = correct_instance(data, changes, reason=reason, when=when)
            del data
            with a.store.new_staging_file() as w:
                w.write(new)
                path, sha, size = w.finish()
            try:
                parsed = parse_instance(path)
                old_crc = row.frames.crc32 if row.frames is not None else None
                new_crc = parsed.frames.crc32 if parsed.frames is not None else None
                if parsed.sop_instance_uid != row.sop_instance_uid or old_crc != new_crc:
                    raise errors.InvalidDicom("the corrected object does not keep its "
                                              "identity and pixel data; refused")
                with key_scope(encryption_scope(a, parsed)):  # R-G1: institution key
                    a.store.put_file(path, sha, size, move=True)
            finally:
                if os.path.exists(path):
                    os.unlink(path)
            if a.catalogue.visit_of is not None:  # R-D2: a corrected AdmissionID ...
                parsed = dataclasses.replace(parsed, worklist=a.catalogue.visit_of(parsed))
            prepared.append((row.sha256, parsed, sha, size))
        cpk, changed = a.catalogue.run_write(
            "correcting a study", lambda conn: vindex.apply_correction(
                conn, study_uid, prepared, reason=reason.strip(), changes=changes,
                actor=actor, now=now))
        return {"correction": cpk, "study_instance_uid": study_uid, "instances": changed,
                "keywords": sorted(changes), "reason": reason.strip()}

    def history(self, study_uid: str) -> dict:
        self._check_uid(study_uid)
        h = vindex.history(self.archive.catalogue.engine, study_uid)
        if not h["corrections"] and not self.archive.catalogue.metadata_etag(study_uid):
            raise errors.NotFound("no such study")
        current: dict[str, int] = {}
        for v in h["versions"]:
            current[v["sop_instance_uid"]] = max(current.get(v["sop_instance_uid"], 1),
                                                 v["version"] + 1)
        h["current_versions"] = current
        return h

    def version_bytes(self, study_uid: str, series_uid: str, sop_uid: str, version: int
                      ) -> bytes:
        """The Part 10 bytes of one version (hash-checked; any copy)."""
        self._check_uid(study_uid, series_uid, sop_uid)
        found = vindex.version_blob(self.archive.catalogue.engine, study_uid, series_uid,
                                    sop_uid, version)
        if found is None:
            raise errors.NotFound("no such version of this instance")
        sha, size, _ts = found
        return self.archive.store.read(sha, expected_size=size)


def _patient_key(value: Any, name: str) -> tuple[str, str]:
    if not isinstance(value, dict) or not isinstance(value.get("PatientID"), str) \
            or not value["PatientID"] or len(value["PatientID"]) > 64:
        raise errors.BadRequest(f'{name} is {{"PatientID": ..., "IssuerOfPatientID": ...}}')
    issuer = value.get("IssuerOfPatientID") or ""
    if not isinstance(issuer, str) or len(issuer) > 64:
        raise errors.BadRequest(f"{name}: IssuerOfPatientID is a string")
    return value["PatientID"], issuer


def merge_patients(service: VersionService, source: Any, target: Any, reason: Any, *,
                   actor: str = "") -> dict:
    """Patient merge (R-A8): every study of the ``source`` patient record is corrected
    to the ``target`` patient's identity and demographics — a new version of each
    instance, the old ones kept. Per study all or nothing; a merge stopped half-way is
    finished by running it again (merged studies no longer belong to the source)."""
    src, dst = _patient_key(source, "from"), _patient_key(target, "to")
    if src == dst:
        raise errors.BadRequest("from and to are the same patient")
    engine = service.archive.catalogue.engine
    found_dst = vindex.patient_and_studies(engine, *dst)
    found_src = vindex.patient_and_studies(engine, *src)
    if found_dst is None or found_src is None:
        raise errors.NotFound("no such patient record (from or to)")
    demographics, _ = found_dst
    changes: dict[str, Any] = {"PatientID": dst[0], "IssuerOfPatientID": dst[1] or None}
    changes.update({k: v for k, v in demographics.items() if v})
    merged = {}
    for study in found_src[1]:
        result = service.correct(study, changes, reason, actor=actor)
        merged[study] = result["instances"]
    return {"studies": merged, "reason": str(reason).strip()}


def drop_versions(archive: Archive, study: str, series: str | None, sop: str | None
                  ) -> list[str]:
    """DELETE after expiry (``IngestService.delete``): kept versions go too; returns
    their blobs (blocking; run on the worker pool)."""
    return archive.catalogue.run_write(
        "deleting versions", lambda conn: vindex.drop_versions(conn, study, series, sop))
