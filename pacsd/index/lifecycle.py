"""Catalogue access for the lifecycle services: export (R-A11), retention and purge
(R-A7), kept apart from ``catalogue.py`` / ``writes.py`` so the hot ingest and read
paths stay as they are.

* Export scope: a study-level filter (StudyInstanceUID, PatientID, StudyDate range);
  objects are listed in ``instances.pk`` order by keyset pagination (no cursor or
  snapshot held for hours; a run resumes after the last pk it finished, FT-13 style),
  and every table can be dumped row by row as portable JSON values.
* Retention: the ``study_retention`` row (HIS data, legal hold) and the DICOM
  attributes the policy reads from a study's first instance.
* Purge: mark (catalogue rows out, blob list in, one transaction), tick blobs off,
  finalise (``lifecycle_schema`` docstring).
"""
from __future__ import annotations

import base64
import datetime as _dt
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from pacsd.errors import Conflict, NotFound
from pacsd.index import writes
from pacsd.index.catalogue import Catalogue
from pacsd.index.engine import translate_errors
from pacsd.index.lifecycle_schema import (corrections, instance_versions, purge_objects,
                                          purge_tombstones, study_retention)
from pacsd.index.schema import instances, patients, series, studies
from pacsd.index.audit_schema import audit_anchor
from pacsd.index.security_schema import audit_events

BATCH = 500


@dataclass(frozen=True)
class ExportFilter:
    """Which studies an export covers; all given conditions must hold. Dates YYYYMMDD."""

    study_uid: str | None = None
    patient_id: str | None = None
    date_from: str | None = None
    date_to: str | None = None

    @property
    def is_everything(self) -> bool:
        return not (self.study_uid or self.patient_id or self.date_from or self.date_to)

    def as_dict(self) -> dict[str, str | None]:
        # The PatientID is PHI: recorded only as "given" (manifest and audit are PHI-free).
        return {"study_uid": self.study_uid,
                "patient_id": "given" if self.patient_id else None,
                "date_from": self.date_from, "date_to": self.date_to}

    def study_clause(self) -> list[sa.ColumnElement]:
        cond: list[sa.ColumnElement] = []
        if self.study_uid:
            cond.append(studies.c.study_instance_uid == self.study_uid)
        if self.patient_id:
            cond.append(studies.c.patient_fk.in_(
                sa.select(patients.c.pk).where(patients.c.patient_id == self.patient_id)))
        if self.date_from:
            cond.append(studies.c.study_date >= self.date_from)
        if self.date_to:
            cond.append(studies.c.study_date <= self.date_to)
        return cond


@dataclass(frozen=True)
class ExportRow:
    pk: int
    sha256: str
    size: int
    patient_id: str
    issuer_of_patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    #: None: the current version; N: kept earlier version N (R-A8).
    version: int | None = None


def portable(value: Any) -> Any:
    """A column value as JSON: bytes as {"$b64": ...}, datetimes as ISO 8601 text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    return value


class Lifecycle:
    """Lifecycle reads and writes over one :class:`Catalogue`."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.engine = catalogue.engine

    # --- export ---------------------------------------------------------------------------

    def iter_export(self, flt: ExportFilter, after_pk: int = 0, *, upto_pk: int | None = None,
                    batch: int = BATCH) -> Iterator[ExportRow]:
        j = (instances.join(series, instances.c.series_fk == series.c.pk)
             .join(studies, instances.c.study_fk == studies.c.pk)
             .join(patients, studies.c.patient_fk == patients.c.pk))
        cond = [instances.c.pk > sa.bindparam("last"), *flt.study_clause()]
        if upto_pk is not None:
            cond.append(instances.c.pk <= upto_pk)
        stmt = (sa.select(instances.c.pk, instances.c.sha256, instances.c.size,
                          patients.c.patient_id, patients.c.issuer_of_patient_id,
                          studies.c.study_instance_uid, series.c.series_instance_uid,
                          instances.c.sop_instance_uid, instances.c.sop_class_uid,
                          instances.c.transfer_syntax_uid)
                .select_from(j).where(*cond).order_by(instances.c.pk).limit(batch))
        last = after_pk
        while True:
            with translate_errors("listing objects to export"), self.engine.connect() as c:
                rows = c.execute(stmt, {"last": last}).all()
            for r in rows:
                yield ExportRow(int(r.pk), r.sha256, int(r.size), r.patient_id,
                                r.issuer_of_patient_id, r.study_instance_uid,
                                r.series_instance_uid, r.sop_instance_uid, r.sop_class_uid,
                                r.transfer_syntax_uid)
            if len(rows) < batch:
                return
            last = rows[-1].pk

    def iter_export_versions(self, flt: ExportFilter, after_pk: int = 0, *,
                             upto_pk: int | None = None, batch: int = BATCH
                             ) -> Iterator[ExportRow]:
        """Kept earlier versions (R-A8) of the studies in scope, in pk order."""
        v = instance_versions
        j = (v.join(studies, v.c.study_instance_uid == studies.c.study_instance_uid)
             .join(patients, studies.c.patient_fk == patients.c.pk)
             .join(instances, instances.c.sop_instance_uid == v.c.sop_instance_uid))
        cond = [v.c.pk > sa.bindparam("last"), *flt.study_clause()]
        if upto_pk is not None:
            cond.append(v.c.pk <= upto_pk)
        stmt = (sa.select(v.c.pk, v.c.sha256, v.c.size, patients.c.patient_id,
                          patients.c.issuer_of_patient_id, v.c.study_instance_uid,
                          v.c.series_instance_uid, v.c.sop_instance_uid,
                          instances.c.sop_class_uid, v.c.transfer_syntax_uid, v.c.version)
                .select_from(j).where(*cond).order_by(v.c.pk).limit(batch))
        last = after_pk
        while True:
            with translate_errors("listing versions to export"), self.engine.connect() as c:
                rows = c.execute(stmt, {"last": last}).all()
            for r in rows:
                yield ExportRow(int(r.pk), r.sha256, int(r.size), r.patient_id,
                                r.issuer_of_patient_id, r.study_instance_uid,
                                r.series_instance_uid, r.sop_instance_uid, r.sop_class_uid,
                                r.transfer_syntax_uid, int(r.version))
            if len(rows) < batch:
                return
            last = rows[-1].pk

    def max_version_pk(self) -> int:
        with translate_errors("reading the catalogue"), self.engine.connect() as c:
            return int(c.scalar(sa.select(sa.func.max(instance_versions.c.pk))) or 0)

    def count_export_versions(self, flt: ExportFilter, upto_pk: int) -> int:
        v = instance_versions
        stmt = (sa.select(sa.func.count()).select_from(
            v.join(studies, v.c.study_instance_uid == studies.c.study_instance_uid))
            .where(v.c.pk <= upto_pk, *flt.study_clause()))
        with translate_errors("counting versions to export"), self.engine.connect() as c:
            return int(c.scalar(stmt) or 0)

    def max_instance_pk(self) -> int:
        with translate_errors("reading the catalogue"), self.engine.connect() as c:
            return int(c.scalar(sa.select(sa.func.max(instances.c.pk))) or 0)

    def count_export(self, flt: ExportFilter, upto_pk: int | None = None) -> int:
        cond = flt.study_clause()
        if upto_pk is not None:
            cond.append(instances.c.pk <= upto_pk)
        stmt = (sa.select(sa.func.count()).select_from(
            instances.join(studies, instances.c.study_fk == studies.c.pk)).where(*cond))
        with translate_errors("counting objects to export"), self.engine.connect() as c:
            return int(c.scalar(stmt) or 0)

    def dump_tables(self, flt: ExportFilter) -> dict[str, sa.Select]:
        """The portable index dump of the scope: table name -> select (docs/operations.md
        "Export"). The audit trail and tombstones only with an unfiltered export."""
        scope = sa.select(studies.c.pk).where(*flt.study_clause())
        uids = sa.select(studies.c.study_instance_uid).where(*flt.study_clause())
        out = {
            "patients": sa.select(patients).where(patients.c.pk.in_(
                sa.select(studies.c.patient_fk).where(*flt.study_clause())))
            .order_by(patients.c.pk),
            "studies": sa.select(studies).where(studies.c.pk.in_(scope))
            .order_by(studies.c.pk),
            "series": sa.select(series).where(series.c.study_fk.in_(scope))
            .order_by(series.c.pk),
            "instances": sa.select(instances).where(instances.c.study_fk.in_(scope))
            .order_by(instances.c.pk),
            "study_retention": sa.select(study_retention).where(
                study_retention.c.study_instance_uid.in_(uids)).order_by(study_retention.c.pk),
            "corrections": sa.select(corrections).where(
                corrections.c.study_instance_uid.in_(uids)).order_by(corrections.c.pk),
            "instance_versions": sa.select(instance_versions).where(
                instance_versions.c.study_instance_uid.in_(uids))
            .order_by(instance_versions.c.pk),
        }
        if flt.is_everything:
            out["audit_events"] = sa.select(audit_events).order_by(audit_events.c.seq)
            # Where the exported chain starts after retention pruning (migration 7).
            out["audit_anchor"] = sa.select(audit_anchor)
            out["purge_tombstones"] = sa.select(purge_tombstones).order_by(purge_tombstones.c.pk)
        return out

    def iter_dump(self, stmt: sa.Select) -> Iterator[bytes]:
        """Rows of ``stmt`` as JSON lines (bytes, newline-terminated), streamed."""
        with translate_errors("dumping the index"), self.engine.connect() as c:
            result = c.execution_options(stream_results=True, yield_per=BATCH).execute(stmt)
            for row in result.mappings():
                yield orjson.dumps({str(k): portable(v) for k, v in row.items()}) + b"\n"

    def iter_version_blobs(self, after_pk: int = 0, batch: int = BATCH
                           ) -> Iterator[tuple[int, str, int]]:
        """(pk, sha256, size) of every kept earlier version (R-A8), keyset-paginated: the
        scrubber verifies them like current objects."""
        stmt = (sa.select(instance_versions.c.pk, instance_versions.c.sha256,
                          instance_versions.c.size)
                .where(instance_versions.c.pk > sa.bindparam("last"))
                .order_by(instance_versions.c.pk).limit(batch))
        last = after_pk
        while True:
            with translate_errors("listing kept versions"), self.engine.connect() as c:
                rows = c.execute(stmt, {"last": last}).all()
            for r in rows:
                yield int(r.pk), r.sha256, int(r.size)
            if len(rows) < batch:
                return
            last = rows[-1].pk

    # --- retention ------------------------------------------------------------------------

    def retention_row(self, study_uid: str) -> dict | None:
        with translate_errors("reading retention"), self.engine.connect() as c:
            row = c.execute(sa.select(study_retention).where(
                study_retention.c.study_instance_uid == study_uid)).mappings().first()
        return dict(row) if row is not None else None

    def study_facts(self, study_uid: str) -> dict | None:
        """What retention reads from the catalogue for one study: StudyDate, the time it
        was archived and the first instance's DICOM JSON (for AdmissionID etc.); None
        when the study is not in the catalogue."""
        with translate_errors("reading a study"), self.engine.connect() as c:
            st = c.execute(sa.select(studies.c.pk, studies.c.study_date, studies.c.created_at)
                           .where(studies.c.study_instance_uid == study_uid)).first()
            if st is None:
                return None
            meta = c.scalar(sa.select(instances.c.metadata)
                            .where(instances.c.study_fk == st.pk)
                            .order_by(instances.c.pk).limit(1))
        created = st.created_at
        if created is not None and created.tzinfo is None:
            created = created.replace(tzinfo=_dt.timezone.utc)
        return {"study_date": st.study_date,
                "archived_at": created.timestamp() if created is not None else None,
                "metadata": orjson.loads(zlib.decompress(meta)) if meta is not None else {}}

    def iter_study_uids(self, after_pk: int = 0, batch: int = BATCH
                        ) -> Iterator[tuple[int, str]]:
        stmt = (sa.select(studies.c.pk, studies.c.study_instance_uid)
                .where(studies.c.pk > sa.bindparam("last")).order_by(studies.c.pk)
                .limit(batch))
        last = after_pk
        while True:
            with translate_errors("listing studies"), self.engine.connect() as c:
                rows = c.execute(stmt, {"last": last}).all()
            for r in rows:
                yield int(r.pk), r.study_instance_uid
            if len(rows) < batch:
                return
            last = rows[-1].pk

    def set_visit(self, study_uid: str, *, visit_class: str | None, visit_date: str | None,
                  discharge_date: str | None, source: str, now: float) -> None:
        def tx(conn: sa.Connection) -> None:
            vals = {"visit_class": visit_class, "visit_date": visit_date,
                    "discharge_date": discharge_date, "source": source, "updated_at": now}
            if not conn.execute(sa.update(study_retention).where(
                    study_retention.c.study_instance_uid == study_uid).values(**vals)).rowcount:
                conn.execute(sa.insert(study_retention).values(
                    study_instance_uid=study_uid, **vals))
            # HIS data wins for the worklist's visit type too (R-D2, services/visit.py).
            if visit_class is not None:
                conn.execute(sa.update(studies).where(
                    studies.c.study_instance_uid == study_uid).values(visit_type=visit_class))
        self.catalogue.run_write("recording visit data", tx)

    def set_hold(self, study_uid: str, hold: bool, reason: str, now: float) -> None:
        def tx(conn: sa.Connection) -> None:
            vals = {"legal_hold": hold, "hold_reason": reason if hold else "",
                    "hold_set_at": now if hold else None, "updated_at": now}
            if not conn.execute(sa.update(study_retention).where(
                    study_retention.c.study_instance_uid == study_uid).values(**vals)).rowcount:
                conn.execute(sa.insert(study_retention).values(
                    study_instance_uid=study_uid, source="", **vals))
        self.catalogue.run_write("setting a legal hold", tx)

    # --- purge (two-phase tombstone) ------------------------------------------------------

    def mark_for_purge(self, study_uid: str, reason: dict, now: float,
                       still_allowed) -> int:
        """Phase 1, one transaction: re-check ``still_allowed(retention_row)`` (a legal
        hold set meanwhile wins), remove the study from the catalogue and record its blobs
        in a new tombstone; returns the tombstone pk."""
        def tx(conn: sa.Connection) -> int:
            row = conn.execute(sa.select(study_retention).where(
                study_retention.c.study_instance_uid == study_uid)).mappings().first()
            if not still_allowed(dict(row) if row else None):
                raise Conflict("the study may no longer be purged (legal hold)")
            shas = writes.delete(conn, study_uid, None, None)
            # Kept earlier versions (R-A8) go with the study.
            shas += list(conn.scalars(sa.select(instance_versions.c.sha256).where(
                instance_versions.c.study_instance_uid == study_uid)))
            conn.execute(sa.delete(instance_versions).where(
                instance_versions.c.study_instance_uid == study_uid))
            shas = list(dict.fromkeys(shas))
            pk = conn.scalar(sa.insert(purge_tombstones).values(
                study_instance_uid=study_uid, state="marked", object_count=len(shas),
                reason=orjson.dumps(reason).decode(), marked_at=now)
                .returning(purge_tombstones.c.pk))
            if shas:
                conn.execute(sa.insert(purge_objects), [
                    {"tombstone_fk": pk, "sha256": s, "deleted": False} for s in shas])
            return int(pk)
        return self.catalogue.run_write("marking a study for purge", tx)

    def open_tombstones(self) -> list[tuple[int, str, int]]:
        with translate_errors("listing tombstones"), self.engine.connect() as c:
            return [(int(r.pk), r.study_instance_uid, int(r.object_count)) for r in c.execute(
                sa.select(purge_tombstones.c.pk, purge_tombstones.c.study_instance_uid,
                          purge_tombstones.c.object_count)
                .where(purge_tombstones.c.state == "marked").order_by(purge_tombstones.c.pk))]

    def pending_blobs(self, tombstone_pk: int) -> list[tuple[int, str]]:
        with translate_errors("listing blobs to purge"), self.engine.connect() as c:
            return [(int(r.pk), r.sha256) for r in c.execute(
                sa.select(purge_objects.c.pk, purge_objects.c.sha256).where(
                    purge_objects.c.tombstone_fk == tombstone_pk,
                    purge_objects.c.deleted.is_(False)).order_by(purge_objects.c.pk))]

    def blob_still_referenced(self, sha256: str) -> bool:
        """True when a current instance or a kept version still needs this blob
        (content addressing: identical bytes are one blob)."""
        with translate_errors("checking a blob"), self.engine.connect() as c:
            return c.scalar(sa.select(sa.literal(1)).where(sa.or_(
                sa.exists().where(instances.c.sha256 == sha256),
                sa.exists().where(instance_versions.c.sha256 == sha256)))) is not None

    def blob_deleted(self, purge_object_pk: int) -> None:
        self.catalogue.run_write("recording a purged blob", lambda conn: conn.execute(
            sa.update(purge_objects).where(purge_objects.c.pk == purge_object_pk)
            .values(deleted=True)))

    def finalize(self, tombstone_pk: int, now: float) -> None:
        self.catalogue.run_write("finalising a purge", lambda conn: conn.execute(
            sa.update(purge_tombstones).where(purge_tombstones.c.pk == tombstone_pk)
            .values(state="finalized", finalized_at=now)))

    def tombstones(self, study_uid: str | None = None) -> list[dict]:
        stmt = sa.select(purge_tombstones).order_by(purge_tombstones.c.pk)
        if study_uid:
            stmt = stmt.where(purge_tombstones.c.study_instance_uid == study_uid)
        with translate_errors("listing tombstones"), self.engine.connect() as c:
            return [dict(r) for r in c.execute(stmt).mappings()]


def import_history(catalogue: Catalogue, retention_rows: list[dict],
                   correction_rows: list[dict], version_rows: list[dict]) -> int:
    """Import of an export (services/export.py ``import_export``): visit data and legal
    holds, corrections and kept versions of the imported studies, in one transaction;
    rows already present (same SOP Instance UID and version; same study's retention) are
    kept. Returns the number of versions added."""
    keep_r = ("visit_class", "visit_date", "discharge_date", "source", "legal_hold",
              "hold_reason", "hold_set_at", "updated_at")
    keep_c = ("study_instance_uid", "reason", "changes", "actor", "instance_count",
              "created_at")
    keep_v = ("study_instance_uid", "series_instance_uid", "sop_instance_uid", "version",
              "sha256", "size", "transfer_syntax_uid", "created_at", "superseded_at")

    def tx(conn: sa.Connection) -> int:
        for r in retention_rows:
            if conn.scalar(sa.select(study_retention.c.pk).where(
                    study_retention.c.study_instance_uid == r["study_instance_uid"])) is None:
                conn.execute(sa.insert(study_retention).values(
                    study_instance_uid=r["study_instance_uid"], **{k: r.get(k) for k in keep_r}))
        mapping: dict[int, int] = {}
        for c in correction_rows:
            pk = conn.scalar(sa.select(corrections.c.pk).where(  # a re-run finds it
                corrections.c.study_instance_uid == c["study_instance_uid"],
                corrections.c.created_at == c["created_at"],
                corrections.c.reason == c["reason"]))
            if pk is None:
                pk = conn.scalar(sa.insert(corrections).values(
                    **{k: c.get(k) for k in keep_c}).returning(corrections.c.pk))
            mapping[int(c["pk"])] = pk
        added = 0
        for v in version_rows:
            if conn.scalar(sa.select(instance_versions.c.pk).where(
                    instance_versions.c.sop_instance_uid == v["sop_instance_uid"],
                    instance_versions.c.version == v["version"])) is not None:
                continue
            conn.execute(sa.insert(instance_versions).values(
                correction_fk=mapping.get(v.get("correction_fk") or -1),
                **{k: v.get(k) for k in keep_v}))
            added += 1
        return added
    return catalogue.run_write("importing history", tx)


def require_study(facts: dict | None) -> dict:
    if facts is None:
        raise NotFound("no such study")
    return facts
