"""Catalogue writes: store one instance, delete a study/series/instance (one transaction each).

Functions here run inside a write transaction the :class:`~pacsd.index.catalogue.Catalogue`
opened (SQLite: ``BEGIN IMMEDIATE`` under the in-process writer lock; PostgreSQL: READ
COMMITTED, retried on deadlock/serialisation/FK races). Concurrency design (LD-6):

* The study row is read first with ``SELECT .. FOR UPDATE`` (a no-op on SQLite, where the
  whole database is write-locked), in one statement with the series row and any instance
  already stored under the SOP Instance UID (``lookup``). Only when the study is absent
  are the patient and the study created, with ``INSERT .. ON CONFLICT DO NOTHING``; a
  study created meanwhile by another writer runs the transaction again (:class:`Retry`),
  which then finds it, so two writers creating the same patient/study both end up with
  the one row. New rows are inserted with their counters and lists already counting the
  instance (issue 6: no update right after the insert).
* Holding the study lock serialises every change below one study: the counters,
  ModalitiesInStudy and SOPClassesInStudy are exact, and two writers of one SOP Instance
  UID never race on its insert. Locks are taken study -> series -> patient (the patient
  row is only updated last), so writers of different studies cannot form a cycle; the
  rare deadlock with a concurrent delete of a patient's last study is detected by
  PostgreSQL and the transaction retried.
* A row that vanished between our upsert and our select (a concurrent delete) raises
  :class:`Retry`; the caller runs the whole transaction again.
"""
from __future__ import annotations

import datetime as _dt
import functools
import zlib
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

from pacsd.errors import DuplicateInstance, HierarchyConflict, NotFound
from pacsd.index import names
from pacsd.index.lifecycle_schema import study_retention
from pacsd.index.schema import (
    INSTANCE_COLUMNS, INTEGER_KEYWORDS, PATIENT_COLUMNS, SERIES_COLUMNS, STUDY_COLUMNS,
    WORKLIST_COLUMNS, instances, patients, series, studies,
)
from pacsd.model import ParsedInstance, StoreOutcome


class Retry(Exception):
    """Internal: run the transaction again (a concurrent writer changed the hierarchy)."""


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _coerce(keyword: str, value: Any) -> Any:
    """Column value for an attribute: '' -> NULL; IS/US -> int (NULL if not an integer)."""
    if value is None or value == "":
        return None
    if keyword in INTEGER_KEYWORDS:
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    return str(value)


def _values(columns: dict[str, str], attrs: dict[str, Any]) -> dict[str, Any]:
    return {col: _coerce(kw, attrs.get(kw)) for kw, col in columns.items()}


def _pn_values(prefix: str, value: str | None) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in names.search_columns(value).items()}


def split_list(value: str | None) -> list[str]:
    return value.split("\\") if value else []


def join_list(items: set[str]) -> str | None:
    return "\\".join(sorted(items)) or None


# --- store -------------------------------------------------------------------------------

#: Patient columns copied from each instance (every PATIENT_COLUMNS column but the key,
#: plus the PN search columns of PatientName): see ``_patient_demographics``.
_DEMOGRAPHIC_COLUMNS = tuple(
    [c for c in PATIENT_COLUMNS.values() if c not in ("patient_id", "issuer_of_patient_id")]
    + list(f"patient_name_{k}" for k in names.search_columns("A^B")))

@functools.lru_cache(maxsize=None)
def _statements(dialect: str) -> dict[str, Any]:
    """Statements of the store path, built once per dialect and executed with parameter
    dicts: SQLAlchemy then reuses their compiled form (building and cache-keying a
    statement per call cost more than the SQL itself)."""
    ins = pg_dialect.insert if dialect == "postgresql" else sqlite_dialect.insert
    b = sa.bindparam
    hierarchy = instances.join(series, instances.c.series_fk == series.c.pk).join(
        studies, instances.c.study_fk == studies.c.pk)
    se, ex = series.alias("se"), instances.alias("ex")
    return {
        # The usual case in one statement (issue 6: fewer statements per instance): the
        # locked study row, the series row and an instance already stored under the SOP
        # Instance UID, if any (both outer-joined: absent -> NULL columns). No row: the
        # study is new (``_new_study``).
        "lookup": sa.select(
            studies.c.pk, studies.c.patient_fk, patients.c.patient_id,
            patients.c.issuer_of_patient_id, studies.c.modalities_in_study,
            studies.c.sop_classes_in_study, studies.c.body_parts_in_study,
            se.c.pk.label("series_pk"), se.c.study_fk.label("series_study_fk"),
            ex.c.sha256.label("ex_sha256"), ex.c.sop_class_uid.label("ex_sop_class_uid"),
            ex.c.series_fk.label("ex_series_fk"), ex.c.study_fk.label("ex_study_fk"))
        .select_from(studies.join(patients, studies.c.patient_fk == patients.c.pk)
                     .outerjoin(se, se.c.series_instance_uid == b("b_series"))
                     .outerjoin(ex, ex.c.sop_instance_uid == b("b_sop")))
        .where(studies.c.study_instance_uid == b("b_study")).with_for_update(of=studies),
        "existing": sa.select(instances.c.sha256, instances.c.sop_class_uid,
                              series.c.series_instance_uid, studies.c.study_instance_uid)
        .select_from(hierarchy).where(instances.c.sop_instance_uid == b("b_sop")),
        "series": sa.select(series.c.pk, series.c.study_fk)
        .where(series.c.series_instance_uid == b("b_series")),
        "patient": sa.select(patients.c.pk).where(
            patients.c.patient_id == b("b_pid"), patients.c.issuer_of_patient_id == b("b_iss")),
        "ins_patient": ins(patients).on_conflict_do_nothing(
            index_elements=["patient_id", "issuer_of_patient_id"]).returning(patients.c.pk),
        "ins_study": ins(studies).on_conflict_do_nothing(
            index_elements=["study_instance_uid"]).returning(studies.c.pk),
        "ins_series": ins(series).on_conflict_do_nothing(
            index_elements=["series_instance_uid"]).returning(series.c.pk),
        "ins_instance": ins(instances).on_conflict_do_nothing(
            index_elements=["sop_instance_uid"]).returning(instances.c.pk),
        "upd_series": sa.update(series).where(series.c.pk == b("b_pk")).values(
            num_instances=series.c.num_instances + 1, revision=series.c.revision + 1,
            updated_at=b("b_now")),
        # The newest study's demographics become the patient record's.
        "upd_patient": sa.update(patients).where(patients.c.pk == b("b_pk")).values(
            num_studies=patients.c.num_studies + 1, updated_at=b("b_now"),
            **{c: b(f"v_{c}") for c in _DEMOGRAPHIC_COLUMNS}),
        # HIS visit class recorded before the study arrived (retention, R-A7) wins over the
        # DICOM-derived visit type (R-D2); once per new study, not per instance.
        "his_visit": sa.update(studies).where(
            studies.c.pk == b("b_pk"), sa.exists().where(
                study_retention.c.study_instance_uid == b("b_study"),
                study_retention.c.visit_class.is_not(None))).values(
            visit_type=sa.select(study_retention.c.visit_class).where(
                study_retention.c.study_instance_uid == b("b_study")).scalar_subquery()),
        "upd_study": sa.update(studies).where(studies.c.pk == b("b_pk")).values(
            num_instances=studies.c.num_instances + 1,
            num_series=studies.c.num_series + b("b_new_series", type_=sa.Integer()),
            modalities_in_study=b("b_mods"), sop_classes_in_study=b("b_sops"),
            body_parts_in_study=b("b_parts"),
            revision=studies.c.revision + 1, updated_at=b("b_now")),
    }


_DRIVER_DIALECTS = {
    "sqlite": lambda: sqlite_dialect.dialect(paramstyle="named"),
    "postgresql": lambda: pg_psycopg.dialect(paramstyle="pyformat"),
}


@functools.lru_cache(maxsize=None)
def _driver_sql(dialect: str, name: str, keys: tuple[str, ...]) -> tuple[str, dict]:
    """(driver SQL with named parameters, constant parameters) of a store-path statement,
    compiled once per dialect and set of parameter names."""
    stmt = _statements(dialect)[name]
    compiled = stmt.compile(dialect=_DRIVER_DIALECTS[dialect](),
                            column_keys=list(keys) if isinstance(stmt, sa.Insert) else None)
    return str(compiled), {k: v for k, v in compiled.params.items() if k not in keys}


class _Row(tuple):
    """A fetched row of a store-path statement: a tuple with attribute access by column
    name (see :func:`_row_type`)."""

    __slots__ = ()


@functools.lru_cache(maxsize=None)
def _row_type(names: tuple[str, ...]) -> type:
    return type("_Row", (_Row,), {"__slots__": (), **{
        n: property(lambda self, i=i: self[i]) for i, n in enumerate(names)}})


class _Result:
    """What a store-path statement returns: its first row (``first``) or first value
    (``scalar``); the statements fetch one row at most."""

    __slots__ = ("row",)

    def __init__(self, row: _Row | None) -> None:
        self.row = row

    def first(self) -> _Row | None:
        return self.row

    def scalar(self) -> Any:
        return None if self.row is None else self.row[0]


_NO_ROW = _Result(None)
#: Row type of each store-path statement's SQL text (Sql.execute).
_ROW_TYPES: dict[str, type] = {}


class Sql:
    """Runs the store-path statements on the connection's DBAPI cursor: the statements
    are compiled once (:func:`_driver_sql`), so each execution skips SQLAlchemy's
    per-call compile-cache lookup, execution context, events and result objects — on the
    ingest hot path that was a third of the GIL time (issue 6 profiles, session 4).
    Parameter values must already be driver values: :meth:`stamp` gives the timestamp
    form of the dialect (SQLite: SQLAlchemy's text form). The transaction is still the
    SQLAlchemy connection's (``BEGIN`` / savepoints / ``COMMIT`` as before); a driver error
    is raised as SQLAlchemy's wrapper (``DBAPIError.instance``), so the retry rules and
    ``translate_errors`` see exactly what they saw before."""

    __slots__ = ("conn", "dialect", "cursor", "_error", "_sa_dialect", "_dbapi")

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name
        self.cursor = conn.connection.cursor()
        self._error = conn.dialect.loaded_dbapi.Error
        self._sa_dialect = conn.dialect
        self._dbapi = None

    @classmethod
    def on_dbapi(cls, dbapi_conn: Any, dialect: sa.Dialect) -> "Sql":
        """A :class:`Sql` on a DBAPI connection the caller holds outside SQLAlchemy's
        pool and transaction handling (the SQLite group commit's own writer connection,
        ``catalogue._RawWriter``): ``conn`` is None, errors are wrapped the same way."""
        self = cls.__new__(cls)
        self.conn = None
        self.dialect = dialect.name
        self.cursor = dbapi_conn.cursor()
        self._error = dialect.loaded_dbapi.Error
        self._sa_dialect = dialect
        self._dbapi = dbapi_conn
        return self

    def __call__(self, name: str, params: dict[str, Any]) -> _Result:
        sql, constants = _driver_sql(self.dialect, name, tuple(params))
        if constants:
            params = {**constants, **params}
        return self.execute(sql, params)

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> _Result:
        """Driver SQL on the cursor (e.g. ``SAVEPOINT x``); errors wrapped as above."""
        cur = self.cursor
        try:
            if params is None:
                cur.execute(sql)
            else:
                cur.execute(sql, params)
            description = cur.description
            if description is None:
                return _NO_ROW
            row = cur.fetchone()
            if row is not None:
                row_type = _ROW_TYPES.get(sql)
                if row_type is None:  # the statements are few: one row type per SQL text
                    row_type = _row_type(tuple(d[0] for d in description))
                    if len(_ROW_TYPES) < 256:
                        _ROW_TYPES[sql] = row_type
                row = row_type(row)
            if self.dialect == "sqlite":
                # Step the statement to its end: a RETURNING insert is only complete
                # then, and SQLite keeps no half-run statement open on the connection.
                cur.fetchall()
            return _Result(row)
        except self._error as e:
            raise sa.exc.DBAPIError.instance(
                sql, params or {}, e, self._error, hide_parameters=True,  # no PHI in messages
                connection_invalidated=self._sa_dialect.is_disconnect(
                    e, self._dbapi if self.conn is None
                    else self.conn.connection.dbapi_connection, cur)) from e

    def close(self) -> None:
        try:
            self.cursor.close()
        except Exception:  # noqa: BLE001 - closing a cursor of a failed transaction
            pass

    def stamp(self, t: _dt.datetime) -> Any:
        if self.dialect == "sqlite":  # as sa.DateTime stores it on SQLite
            if t.year >= 1000:  # isoformat: the same text, half strftime's cost
                return t.replace(tzinfo=None).isoformat(" ", "microseconds")
            return t.strftime("%Y-%m-%d %H:%M:%S.%f")
        return t


def _existing_outcome(conn: sa.Connection, stmts: Sql, p: ParsedInstance, sha256: str
                      ) -> StoreOutcome | None:
    """BI-25/26/27 for an SOP Instance UID already in the catalogue, else None."""
    row = stmts("existing", {"b_sop": p.sop_instance_uid}).first()
    if row is None:
        return None
    if (row.study_instance_uid != p.study_instance_uid
            or row.series_instance_uid != p.series_instance_uid):
        # BI-27: never move an instance between series/studies silently.
        raise HierarchyConflict("SOPInstanceUID already stored under another series or study")
    if row.sha256 != sha256:
        # BI-26: never overwrite; the stored original stays as it is.
        raise DuplicateInstance("SOPInstanceUID already stored with different content")
    return StoreOutcome(False, p.study_instance_uid, p.series_instance_uid,
                        p.sop_instance_uid, row.sop_class_uid)


def _patient_key(p: ParsedInstance) -> tuple[str, str]:
    """(PatientID, IssuerOfPatientID); absent values are '' (a usable unique key)."""
    return (_coerce("PatientID", p.patient.get("PatientID")) or "",
            _coerce("IssuerOfPatientID", p.patient.get("IssuerOfPatientID")) or "")


def _patient_demographics(p: ParsedInstance) -> dict[str, Any]:
    vals = _values(PATIENT_COLUMNS, p.patient)
    del vals["patient_id"], vals["issuer_of_patient_id"]
    vals.update(_pn_values("patient_name", vals["patient_name"]))
    return vals


def _patient(stmts: Sql, p: ParsedInstance, now: Any) -> tuple[int, bool]:
    """(pk, created) of the patient record of a new study. A record created here
    already counts the study (``num_studies`` 1): the caller creates the study in the
    same transaction or retries it whole (``_new_study``)."""
    pid, issuer = _patient_key(p)
    pk = stmts("patient", {"b_pid": pid, "b_iss": issuer}).scalar()
    if pk is not None:
        return pk, False
    pk = stmts("ins_patient", {
        "patient_id": pid, "issuer_of_patient_id": issuer, "num_studies": 1,
        "created_at": now, "updated_at": now, **_patient_demographics(p)}).scalar()
    if pk is not None:
        return pk, True
    # Inserted meanwhile by a concurrent transaction (PostgreSQL): use that one.
    pk = stmts("patient", {"b_pid": pid, "b_iss": issuer}).scalar()
    if pk is None:
        raise Retry()  # deleted by a concurrent transaction since its insert
    return pk, False


def _lists(p: ParsedInstance, study: Any | None, new_series: bool
           ) -> tuple[str | None, str | None, str | None]:
    """ModalitiesInStudy, SOPClassesInStudy and the study's body parts after storing
    ``p`` (``study``: the study row before it, None for a new study)."""
    modalities = set(split_list(study.modalities_in_study)) if study is not None else set()
    sop_classes = set(split_list(study.sop_classes_in_study)) if study is not None else set()
    body_parts = set(split_list(study.body_parts_in_study)) if study is not None else set()
    sop_classes.add(p.sop_class_uid)
    if new_series:
        modality = _coerce("Modality", p.series.get("Modality"))
        if modality:
            modalities.add(modality)
        body_part = _coerce("BodyPartExamined", p.series.get("BodyPartExamined"))
        if body_part:
            body_parts.add(body_part)
    return join_list(modalities), join_list(sop_classes), join_list(body_parts)


def _insert_series(stmts: Sql, p: ParsedInstance, study_pk: int, now: Any) -> int | None:
    """Create the series row already counting this instance (the instance is inserted
    next in the same transaction); None when the UID exists (inserted meanwhile)."""
    return stmts("ins_series", {
        "series_instance_uid": p.series_instance_uid, "study_fk": study_pk,
        "series_json": p.series_json, "series_cuts": p.series_cuts,
        "num_instances": 1, "revision": 1,
        "created_at": now, "updated_at": now, **_values(SERIES_COLUMNS, p.series)}).scalar()


def _other_series(stmts: Sql, p: ParsedInstance, study_pk: int) -> int:
    """The pk of a series row that exists although our lookup did not see it (another
    writer inserted it meanwhile); HierarchyConflict when it is another study's."""
    row = stmts("series", {"b_series": p.series_instance_uid}).first()
    if row is None:
        raise Retry()
    if row.study_fk != study_pk:
        raise HierarchyConflict("SeriesInstanceUID already stored under another study")
    return row.pk


def _insert_instance(conn: sa.Connection, stmts: Sql, p: ParsedInstance, sha256: str,
                     size: int, digest: str | None, series_pk: int, study_pk: int,
                     now: Any) -> bool:
    """Insert the instance row; False when the SOP Instance UID exists already."""
    return stmts("ins_instance", {
        "sop_instance_uid": p.sop_instance_uid, "series_fk": series_pk,
        "study_fk": study_pk, "sop_class_uid": p.sop_class_uid,
        "transfer_syntax_uid": p.transfer_syntax_uid, "instance_json": p.instance_json,
        "instance_cuts": p.instance_cuts,
        "specific_character_set": p.specific_character_set, "sha256": sha256,
        "digest": digest, "size": size, "metadata": zlib.compress(p.metadata, 6),
        "frames": p.frames.to_json() if p.frames is not None else None,
        "bulk": orjson.dumps(p.bulk), "created_at": now,
        **_values(INSTANCE_COLUMNS, p.instance)}).scalar() is not None


def _lost_race(conn: sa.Connection, stmts: Sql, p: ParsedInstance, sha256: str
               ) -> StoreOutcome:
    """The instance insert found the SOP Instance UID taken: another writer of it
    committed while we waited for the study lock (or under another study). Same rules
    as if it had been there before; raising rolls back what this call wrote."""
    outcome = _existing_outcome(conn, stmts, p, sha256)
    if outcome is None:
        raise Retry()
    return outcome


def store_instance(conn: sa.Connection, p: ParsedInstance, sha256: str, size: int,
                   stmts: Sql | None = None, *, digest: str | None = None) -> StoreOutcome:
    """Commit one instance (module docstring); the caller owns the transaction.
    Usual case, a new instance of a known series: four statements (lookup, instance
    insert, series and study counters). ``stmts``: the caller's :class:`Sql` on
    ``conn`` (the group commit's), else one is made here. ``digest``: the fast
    read-time digest of the object (``store.base.fast_digest``), or None."""
    if stmts is not None:
        return _store(conn, stmts, p, sha256, size, digest)
    stmts = Sql(conn)
    try:
        return _store(conn, stmts, p, sha256, size, digest)
    finally:
        stmts.close()


def _store(conn: sa.Connection, stmts: Sql, p: ParsedInstance, sha256: str, size: int,
           digest: str | None = None) -> StoreOutcome:
    study = stmts("lookup", {"b_study": p.study_instance_uid,
                             "b_series": p.series_instance_uid,
                             "b_sop": p.sop_instance_uid}).first()
    now = stmts.stamp(_now())
    if study is None:
        return _new_study(conn, stmts, p, sha256, size, digest, now)
    if (study.patient_id, study.issuer_of_patient_id) != _patient_key(p):
        # BI-27 (dcm4chee A779-like): the study is filed under another PatientID/issuer.
        raise HierarchyConflict("StudyInstanceUID already stored for another PatientID")
    if study.ex_sha256 is not None:
        if (study.ex_study_fk != study.pk or study.series_pk is None
                or study.ex_series_fk != study.series_pk):
            # BI-27: never move an instance between series/studies silently.
            raise HierarchyConflict(
                "SOPInstanceUID already stored under another series or study")
        if study.ex_sha256 != sha256:
            # BI-26: never overwrite; the stored original stays as it is.
            raise DuplicateInstance("SOPInstanceUID already stored with different content")
        return StoreOutcome(False, p.study_instance_uid, p.series_instance_uid,
                            p.sop_instance_uid, study.ex_sop_class_uid)
    series_pk, series_created = study.series_pk, False
    if series_pk is None:
        series_pk = _insert_series(stmts, p, study.pk, now)
        series_created = series_pk is not None
        if not series_created:
            series_pk = _other_series(stmts, p, study.pk)
    elif study.series_study_fk != study.pk:
        raise HierarchyConflict("SeriesInstanceUID already stored under another study")
    if not _insert_instance(conn, stmts, p, sha256, size, digest, series_pk, study.pk, now):
        return _lost_race(conn, stmts, p, sha256)
    if not series_created:
        stmts("upd_series", {"b_pk": series_pk, "b_now": now})
    mods, sops, parts = _lists(p, study, series_created)
    stmts("upd_study", {
        "b_pk": study.pk, "b_now": now, "b_new_series": 1 if series_created else 0,
        "b_mods": mods, "b_sops": sops, "b_parts": parts})
    return StoreOutcome(True, p.study_instance_uid, p.series_instance_uid,
                        p.sop_instance_uid, p.sop_class_uid)


def _new_study(conn: sa.Connection, stmts: Sql, p: ParsedInstance, sha256: str,
               size: int, digest: str | None, now: Any) -> StoreOutcome:
    """The first instance of a study: patient (found or created), study, series and
    instance rows, each created with its counters and lists already counting this
    instance (no update after the insert)."""
    outcome = _existing_outcome(conn, stmts, p, sha256)
    if outcome is not None:  # pragma: no cover - an instance row implies its study row
        return outcome
    patient_pk, patient_created = _patient(stmts, p, now)
    vals = _values(STUDY_COLUMNS, p.study)
    vals.update(_pn_values("referring_physician_name", vals["referring_physician_name"]))
    vals.update(_patient_demographics(p))  # the study's own copy (schema docstring)
    vals["institution"] = p.institution  # R-A12 data scoping (access_schema.py)
    # R-D2 worklist visit columns (services/visit.py), precomputed by the catalogue.
    vals.update({c: (p.worklist or {}).get(c) for c in WORKLIST_COLUMNS})
    mods, sops, parts = _lists(p, None, True)
    study_pk = stmts("ins_study", {
        "study_instance_uid": p.study_instance_uid, "patient_fk": patient_pk,
        "study_json": p.study_json, "study_cuts": p.study_cuts,
        "num_series": 1, "num_instances": 1, "modalities_in_study": mods,
        "sop_classes_in_study": sops, "body_parts_in_study": parts,
        "revision": 1, "created_at": now, "updated_at": now, **vals}).scalar()
    if study_pk is None:
        # Created meanwhile by a concurrent transaction (PostgreSQL): run the whole
        # transaction again, which then finds it (and leaves no patient record behind).
        raise Retry()
    stmts("his_visit", {"b_pk": study_pk, "b_study": p.study_instance_uid})
    series_pk = _insert_series(stmts, p, study_pk, now)
    if series_pk is None:
        _other_series(stmts, p, study_pk)  # raises: another study's series
        raise Retry()  # pragma: no cover - a series of a study created just now
    if not _insert_instance(conn, stmts, p, sha256, size, digest, series_pk, study_pk, now):
        return _lost_race(conn, stmts, p, sha256)
    if not patient_created:
        # The newest study's demographics become the patient record's (informational;
        # QIDO matches each study's own copy).
        stmts("upd_patient", {"b_pk": patient_pk, "b_now": now, **{
            f"v_{k}": v for k, v in _patient_demographics(p).items()}})
    return StoreOutcome(True, p.study_instance_uid, p.series_instance_uid,
                        p.sop_instance_uid, p.sop_class_uid)


# --- delete ------------------------------------------------------------------------------

def delete(conn: sa.Connection, study_uid: str, series_uid: str | None,
           sop_uid: str | None) -> list[str]:
    """Remove the matching instances and every parent left empty; fix counters and lists
    of the study; return the sha256 of each removed instance. NotFound if none matched."""
    study = conn.execute(
        sa.select(studies.c.pk, studies.c.patient_fk)
        .where(studies.c.study_instance_uid == study_uid).with_for_update()).first()
    if study is None:
        raise NotFound("no such study")
    cond = [instances.c.study_fk == study.pk]
    if series_uid is not None:
        series_pk = conn.scalar(sa.select(series.c.pk).where(
            series.c.series_instance_uid == series_uid, series.c.study_fk == study.pk))
        if series_pk is None:
            raise NotFound("no such series in this study")
        cond.append(instances.c.series_fk == series_pk)
    if sop_uid is not None:
        cond.append(instances.c.sop_instance_uid == sop_uid)
    removed = conn.execute(sa.select(instances.c.sha256, instances.c.series_fk)
                           .where(*cond)).all()
    if not removed:
        raise NotFound("no such instance" if sop_uid is not None else "nothing to delete")
    conn.execute(sa.delete(instances).where(*cond))
    now = _now()
    for series_pk in sorted({r.series_fk for r in removed}):
        left = conn.scalar(sa.select(sa.func.count()).select_from(instances)
                           .where(instances.c.series_fk == series_pk))
        if left:
            conn.execute(sa.update(series).where(series.c.pk == series_pk).values(
                num_instances=left, revision=series.c.revision + 1, updated_at=now))
        else:
            conn.execute(sa.delete(series).where(series.c.pk == series_pk))
    modalities = set(conn.scalars(sa.select(series.c.modality).distinct().where(
        series.c.study_fk == study.pk, series.c.modality.is_not(None))))
    body_parts = set(conn.scalars(sa.select(series.c.body_part_examined).distinct().where(
        series.c.study_fk == study.pk, series.c.body_part_examined.is_not(None))))
    num_series = conn.scalar(sa.select(sa.func.count()).select_from(series)
                             .where(series.c.study_fk == study.pk))
    if num_series:
        conn.execute(sa.update(studies).where(studies.c.pk == study.pk).values(
            num_series=num_series,
            num_instances=sa.select(sa.func.count()).select_from(instances)
            .where(instances.c.study_fk == study.pk).scalar_subquery(),
            modalities_in_study=join_list(modalities),
            body_parts_in_study=join_list(body_parts),
            sop_classes_in_study=join_list(set(conn.scalars(
                sa.select(instances.c.sop_class_uid).distinct()
                .where(instances.c.study_fk == study.pk)))),
            revision=studies.c.revision + 1, updated_at=now))
    else:
        conn.execute(sa.delete(studies).where(studies.c.pk == study.pk))
        left = conn.scalar(
            sa.update(patients).where(patients.c.pk == study.patient_fk)
            .values(num_studies=patients.c.num_studies - 1, updated_at=now)
            .returning(patients.c.num_studies))
        if left is not None and left <= 0:
            conn.execute(sa.delete(patients).where(patients.c.pk == study.patient_fk,
                                                   patients.c.num_studies <= 0))
    return [r.sha256 for r in removed]
