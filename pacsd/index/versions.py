"""Catalogue side of corrections and versions (R-A8).

The current version of an instance stays the ``instances`` row that QIDO-RS, WADO-RS and
DIMSE read, so the hot read paths do not change and do not get slower. A correction, in
one transaction per study: records a ``corrections`` row; for every instance whose bytes
changed, copies the superseded blob reference into ``instance_versions`` (version 1 = as
first received, 2 = after the first correction, ...) and points the ``instances`` row at
the new blob with its new metadata; rewrites the study row's attributes, JSON and patient
copy; moves the study to another patient record when PatientID/issuer changed; bumps
revisions (ETags of metadata change). An instance whose row changed since the caller read
it (a concurrent correction) makes the whole correction a Conflict: nothing is applied.
"""
from __future__ import annotations

import datetime as _dt
import zlib
from typing import Any

import orjson
import sqlalchemy as sa

from pacsd.errors import Conflict, NotFound
from pacsd.index import writes
from pacsd.index.engine import translate_errors
from pacsd.index.lifecycle_schema import corrections, instance_versions
from pacsd.index.schema import (INSTANCE_COLUMNS, STUDY_COLUMNS, WORKLIST_COLUMNS, instances,
                                patients, series, studies)
from pacsd.model import ParsedInstance


def _ts(value: Any) -> float:
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.timestamp()
    return float(value or 0)


def apply_correction(conn: sa.Connection, study_uid: str,
                     new: list[tuple[str, ParsedInstance, str, int]], *, reason: str,
                     changes: dict, actor: str, now: float) -> tuple[int, int]:
    """``new``: (previous sha256, parsed new version, new sha256, new size) per instance.
    Returns (correction pk, instances changed)."""
    study = conn.execute(sa.select(studies.c.pk, studies.c.patient_fk).where(
        studies.c.study_instance_uid == study_uid).with_for_update()).first()
    if study is None:
        raise NotFound("no such study")
    cpk = conn.scalar(sa.insert(corrections).values(
        study_instance_uid=study_uid, reason=reason, actor=actor,
        changes=orjson.dumps(changes, option=orjson.OPT_SORT_KEYS).decode(),
        instance_count=0, created_at=now).returning(corrections.c.pk))
    stamp = _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
    changed = 0
    for old_sha, p, sha, size in new:
        row = conn.execute(sa.select(
            instances.c.pk, instances.c.sha256, instances.c.size,
            instances.c.transfer_syntax_uid, instances.c.created_at,
            series.c.series_instance_uid)
            .select_from(instances.join(series, instances.c.series_fk == series.c.pk))
            .where(instances.c.sop_instance_uid == p.sop_instance_uid,
                   instances.c.study_fk == study.pk)).first()
        if row is None or row.sha256 != old_sha:
            raise Conflict("the study changed while it was being corrected; try again")
        if row.sha256 == sha:
            continue
        version = 1 + (conn.scalar(sa.select(sa.func.count()).select_from(instance_versions)
                                   .where(instance_versions.c.sop_instance_uid ==
                                          p.sop_instance_uid)) or 0)
        conn.execute(sa.insert(instance_versions).values(
            study_instance_uid=study_uid, series_instance_uid=row.series_instance_uid,
            sop_instance_uid=p.sop_instance_uid, version=version, sha256=row.sha256,
            size=row.size, transfer_syntax_uid=row.transfer_syntax_uid, correction_fk=cpk,
            created_at=_ts(row.created_at), superseded_at=now))
        conn.execute(sa.update(instances).where(instances.c.pk == row.pk).values(
            sha256=sha, digest=None, size=size, transfer_syntax_uid=p.transfer_syntax_uid,
            instance_json=p.instance_json, instance_cuts=p.instance_cuts,
            specific_character_set=p.specific_character_set,
            metadata=zlib.compress(p.metadata, 6),
            frames=p.frames.to_json() if p.frames is not None else None,
            bulk=orjson.dumps(p.bulk), created_at=stamp,
            **writes._values(INSTANCE_COLUMNS, p.instance)))
        changed += 1
    if new:
        p = new[0][1]
        vals = writes._values(STUDY_COLUMNS, p.study)
        vals.update(writes._pn_values("referring_physician_name",
                                      vals["referring_physician_name"]))
        vals.update(writes._patient_demographics(p))
        patient_fk = _relink_patient(conn, study.patient_fk, p, stamp)
        if p.worklist is not None:  # R-D2 visit columns of the corrected study
            vals.update({c: p.worklist.get(c) for c in WORKLIST_COLUMNS})
        conn.execute(sa.update(studies).where(studies.c.pk == study.pk).values(
            study_json=p.study_json, study_cuts=p.study_cuts, patient_fk=patient_fk, revision=studies.c.revision + 1,
            updated_at=stamp, **vals))
        if p.worklist is not None:  # a HIS visit class (retention, R-A7) still wins
            conn.execute(writes._statements(conn.dialect.name)["his_visit"],
                         {"b_pk": study.pk, "b_study": study_uid})
        conn.execute(sa.update(series).where(series.c.study_fk == study.pk).values(
            revision=series.c.revision + 1, updated_at=stamp))
    conn.execute(sa.update(corrections).where(corrections.c.pk == cpk)
                 .values(instance_count=changed))
    return int(cpk), changed


def _relink_patient(conn: sa.Connection, old_fk: int, p: ParsedInstance,
                    now: _dt.datetime) -> int:
    """The patient record of the corrected study: the same one unless PatientID/issuer
    changed (then the study moves; an emptied old record is removed)."""
    pid, issuer = writes._patient_key(p)
    old = conn.execute(sa.select(patients.c.patient_id, patients.c.issuer_of_patient_id)
                       .where(patients.c.pk == old_fk)).first()
    demographics = writes._patient_demographics(p)
    if old is not None and (old.patient_id, old.issuer_of_patient_id) == (pid, issuer):
        conn.execute(sa.update(patients).where(patients.c.pk == old_fk).values(
            updated_at=now, **demographics))
        return old_fk
    stmts = writes._statements(conn.dialect.name)
    conn.execute(stmts["ins_patient"], {
        "patient_id": pid, "issuer_of_patient_id": issuer, "num_studies": 0,
        "created_at": now, "updated_at": now, **demographics})
    new_fk = conn.scalar(stmts["patient"], {"b_pid": pid, "b_iss": issuer})
    conn.execute(sa.update(patients).where(patients.c.pk == new_fk).values(
        num_studies=patients.c.num_studies + 1, updated_at=now, **demographics))
    left = conn.scalar(sa.update(patients).where(patients.c.pk == old_fk).values(
        num_studies=patients.c.num_studies - 1, updated_at=now)
        .returning(patients.c.num_studies))
    if left is not None and left <= 0:
        # The study row still points at it until the caller's update: move it first.
        conn.execute(sa.update(studies).where(studies.c.patient_fk == old_fk)
                     .values(patient_fk=new_fk))
        conn.execute(sa.delete(patients).where(patients.c.pk == old_fk,
                                               patients.c.num_studies <= 0))
    return int(new_fk)


def history(engine: sa.Engine, study_uid: str) -> dict:
    with translate_errors("reading versions"), engine.connect() as c:
        corr = [{str(k): v for k, v in r.items()} for r in c.execute(sa.select(corrections).where(
            corrections.c.study_instance_uid == study_uid).order_by(corrections.c.pk))
            .mappings()]
        vers = [{str(k): v for k, v in r.items()} for r in c.execute(sa.select(instance_versions).where(
            instance_versions.c.study_instance_uid == study_uid)
            .order_by(instance_versions.c.sop_instance_uid, instance_versions.c.version))
            .mappings()]
    for item in corr:
        item["changes"] = orjson.loads(item["changes"])
    return {"corrections": corr, "versions": vers}


def version_blob(engine: sa.Engine, study_uid: str, series_uid: str, sop_uid: str,
                 version: int) -> tuple[str, int, str] | None:
    """(sha256, size, transfer syntax) of one kept version, or of the current one when
    ``version`` is the newest; None when there is no such version."""
    with translate_errors("reading a version"), engine.connect() as c:
        row = c.execute(sa.select(instance_versions.c.sha256, instance_versions.c.size,
                                  instance_versions.c.transfer_syntax_uid).where(
            instance_versions.c.study_instance_uid == study_uid,
            instance_versions.c.series_instance_uid == series_uid,
            instance_versions.c.sop_instance_uid == sop_uid,
            instance_versions.c.version == version)).first()
        if row is not None:
            return row.sha256, int(row.size), row.transfer_syntax_uid
        kept = c.scalar(sa.select(sa.func.count()).select_from(instance_versions).where(
            instance_versions.c.sop_instance_uid == sop_uid)) or 0
        if version != kept + 1:
            return None
        cur = c.execute(sa.select(instances.c.sha256, instances.c.size,
                                  instances.c.transfer_syntax_uid)
                        .select_from(instances.join(series, instances.c.series_fk == series.c.pk)
                                     .join(studies, instances.c.study_fk == studies.c.pk))
                        .where(studies.c.study_instance_uid == study_uid,
                               series.c.series_instance_uid == series_uid,
                               instances.c.sop_instance_uid == sop_uid)).first()
    return (cur.sha256, int(cur.size), cur.transfer_syntax_uid) if cur is not None else None


def drop_versions(conn: sa.Connection, study_uid: str, series_uid: str | None,
                  sop_uid: str | None) -> list[str]:
    """Remove kept versions with their instances (DELETE after expiry); returns their
    sha256 for blob deletion."""
    cond = [instance_versions.c.study_instance_uid == study_uid]
    if series_uid is not None:
        cond.append(instance_versions.c.series_instance_uid == series_uid)
    if sop_uid is not None:
        cond.append(instance_versions.c.sop_instance_uid == sop_uid)
    shas = list(conn.scalars(sa.select(instance_versions.c.sha256).where(*cond)))
    conn.execute(sa.delete(instance_versions).where(*cond))
    return shas


def patient_and_studies(engine: sa.Engine, patient_id: str, issuer: str
                        ) -> tuple[dict, list[str]] | None:
    """A patient record's demographics and the StudyInstanceUIDs filed under it (patient
    merge), or None when there is no such record."""
    with translate_errors("reading a patient"), engine.connect() as c:
        row = c.execute(sa.select(patients.c.pk, patients.c.patient_name,
                                  patients.c.patient_birth_date, patients.c.patient_sex)
                        .where(patients.c.patient_id == patient_id,
                               patients.c.issuer_of_patient_id == issuer)).first()
        if row is None:
            return None
        uids = list(c.scalars(sa.select(studies.c.study_instance_uid)
                              .where(studies.c.patient_fk == row.pk)
                              .order_by(studies.c.pk)))
    return {"PatientName": row.patient_name, "PatientBirthDate": row.patient_birth_date,
            "PatientSex": row.patient_sex}, uids
