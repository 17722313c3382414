"""A tiny schema migration runner for the catalogue.

``schema_version`` holds one row per applied migration. :func:`migrate` runs in ONE
transaction that first serialises concurrent starters (PostgreSQL:
``pg_advisory_xact_lock``; SQLite: ``BEGIN IMMEDIATE``), so two pacsd processes starting
together against one database neither race nor half-apply; DDL is transactional on both
databases, so a failed migration leaves the previous version intact.

* Fresh database: create the *current* schema from ``schema.py`` and record every known
  version ("stamp head"), so migration functions never need frozen copies of old tables.
* Older database: apply, in order, each migration newer than the recorded version.
* Newer database than this code knows: refuse to run (an old binary must not write a
  schema it does not understand).

To change the schema: edit ``schema.py`` *and* append a migration that brings an existing
database of the previous version to the same state (``op_add_column`` style DDL via
``conn.execute(sa.text(...))`` or ``sa.schema.*``), with a test that upgrades a database
created at the previous version.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from pacsd.errors import PacsdError
from pacsd.index import (access_schema, audit_schema, forward_schema, jobs_schema,
                         lifecycle_schema, oidc_schema, schema, security_schema,
                         worklist)

#: Arbitrary constant key of the advisory lock ("pacsdidx" as a 63-bit integer).
ADVISORY_LOCK_KEY = 0x7061637364696478 & 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[sa.Connection], None]


def _initial(conn: sa.Connection) -> None:
    schema.metadata.create_all(conn, tables=list(schema.CATALOGUE_TABLES))


def _security(conn: sa.Connection) -> None:
    # Users, API tokens, sessions and the hash-chained audit trail (R-E1, R-E3, R-E4).
    # Only new tables: nothing existing changes. Should a later migration alter one of
    # them, freeze the version-2 definitions here first (this creates the current ones).
    schema.metadata.create_all(conn, tables=list(security_schema.SECURITY_TABLES))


def _jobs_forward(conn: sa.Connection) -> None:
    # The persistent job queue and the store-and-forward log (R-B2, R-B3, R-A9). Only new
    # tables; freeze the version-3 definitions here first should a later migration alter
    # them.
    schema.metadata.create_all(
        conn, tables=list(jobs_schema.JOBS_TABLES + forward_schema.FORWARD_TABLES))


def _lifecycle(conn: sa.Connection) -> None:
    # Retention, deletion tombstones and instance versions (R-A7, R-A8): new tables only.
    schema.metadata.create_all(conn, tables=list(lifecycle_schema.LIFECYCLE_TABLES))


def _series_modality_order(conn: sa.Connection) -> None:
    # Indexes only (issue 6): series by Modality in QIDO order. Fresh databases get it
    # from schema.py.
    if schema.SERIES_MODALITY_ORDER.name not in {
            i["name"] for i in sa.inspect(conn).get_indexes("series")}:
        schema.SERIES_MODALITY_ORDER.create(conn)


def _instance_digest(conn: sa.Connection) -> None:
    # The fast read-time digest (R-H1): a nullable column; rows without it are verified
    # by their SHA-256 as before (the scrubber may fill it in).
    if "digest" not in {c["name"] for c in sa.inspect(conn).get_columns("instances")}:
        conn.execute(sa.text("ALTER TABLE instances ADD COLUMN digest TEXT"))


def _qido_cuts(conn: sa.Connection) -> None:
    # Where QIDO-RS splices its computed attributes into the stored level JSON (R-H1,
    # issue 6): nullable columns, filled at ingest; rows without them (stored before) are
    # answered by decoding their JSON as before. Blob is BLOB / BYTEA.
    blob = "BYTEA" if conn.dialect.name == "postgresql" else "BLOB"
    for table, column in (("studies", "study_cuts"), ("series", "series_cuts"),
                          ("instances", "instance_cuts")):
        if column not in {c["name"] for c in sa.inspect(conn).get_columns(table)}:
            conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {blob}"))


#: Indexes no query reads (issue 6, R-H1): each costs every stored instance an index
#: write, and on PostgreSQL an index on a column every instance updates forbids HOT
#: updates of the row (a new index entry in every index of the table instead).
#: ix_series_modality is the leading column of ix_series_modality_number (migration 8),
#: which serves every Modality match, series level and ModalitiesInStudy alike.
UNUSED_INDEXES = (("studies", "ix_studies_updated_at"), ("series", "ix_series_modality"))


def _drop_unused_indexes(conn: sa.Connection) -> None:
    # Fresh databases never get them (schema.py).
    insp = sa.inspect(conn)
    for table, name in UNUSED_INDEXES:
        if name in {i["name"] for i in insp.get_indexes(table)}:
            conn.execute(sa.text(f"DROP INDEX {name}"))


def _study_order_names(conn: sa.Connection) -> None:
    # The study-order index carries the PatientName search columns (R-H1, issue 6 item 3:
    # the ``Chen*`` walk at 1M instances read ~1,300 table rows for a page of 25). Same
    # name, wider definition: dropped and built again (fresh databases get it from
    # schema.py). A one-off index build over the studies table.
    index = schema.STUDY_ORDER[conn.dialect.name]
    if conn.dialect.name == "postgresql":
        wide = conn.scalar(sa.text(
            "SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": index.name})
        done = wide is not None and "INCLUDE" in wide
    else:
        found = {i["name"]: i["column_names"] for i in sa.inspect(conn).get_indexes("studies")}
        done = found.get(index.name) == [c.name for c in index.columns]
    if done:
        return
    conn.execute(sa.text(f"DROP INDEX IF EXISTS {index.name}"))
    index.create(conn)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial catalogue schema", _initial),
    Migration(2, "security: users, api_tokens, sessions, audit_events", _security),
    Migration(3, "jobs queue, forward_studies, forward_items", _jobs_forward),
    Migration(4, "lifecycle: retention, purge tombstones, instance versions", _lifecycle),
    Migration(5, "access scoping: studies.institution, user/token institutions, "
                 "clearances, study_labels", access_schema.migrate_access),
    Migration(6, "worklist: studies visit_number, card_number, ordering_department, "
                 "visit_type, body_parts_in_study (R-D2)", worklist.migrate_worklist),
    Migration(7, "audit trail: prune anchor, export cursors (syslog)",
              audit_schema.migrate_audit),
    Migration(8, "perf: index series (modality, series_number, pk)", _series_modality_order),
    Migration(9, "OIDC login: oidc_links, oidc_logins (R-E1)", oidc_schema.migrate_oidc),
    Migration(10, "instances.digest: fast read-time digest (R-H1)", _instance_digest),
    Migration(11, "studies/series/instances *_cuts: QIDO-RS items spliced from stored "
                  "JSON (R-H1)", _qido_cuts),
    Migration(12, "perf: drop ix_studies_updated_at, read by no query (R-H1)",
              _drop_unused_indexes),
    Migration(13, "perf: ix_studies_order_* carries the PatientName search columns "
                  "(R-H1)", _study_order_names),
    Migration(14, "perf: qido_generation, bumped by triggers on studies and series "
                  "(SQLite; R-H1)", schema.install_generation),
    Migration(15, "perf: drop ix_series_modality, the prefix of ix_series_modality_number "
                  "(R-H1)", _drop_unused_indexes),
)
#: What a fresh database gets (the current schema of every module), in dependency order.
FRESH_TABLES = (schema.CATALOGUE_TABLES + security_schema.SECURITY_TABLES
                + access_schema.ACCESS_TABLES)
FRESH_TABLES += jobs_schema.JOBS_TABLES + forward_schema.FORWARD_TABLES
FRESH_TABLES += lifecycle_schema.LIFECYCLE_TABLES
FRESH_TABLES += oidc_schema.OIDC_TABLES
FRESH_TABLES += audit_schema.AUDIT_TABLES  # migration 7 (audit retention, syslog)
FRESH_TABLES += (schema.qido_generation,)  # migration 14 (install_generation: its row)
# max, not the last entry: a migration may be merged after a higher-numbered one.
LATEST = max(m.version for m in MIGRATIONS)


def current_version(conn: sa.Connection) -> int | None:
    """The recorded schema version, or None when the database has none."""
    if not sa.inspect(conn).has_table("schema_version"):
        return None
    return conn.scalar(sa.select(sa.func.max(schema.schema_version.c.version)))


def migrate(engine: sa.Engine) -> int:
    """Bring the catalogue schema to :data:`LATEST`; idempotent; returns the version."""
    now = _dt.datetime.now(_dt.timezone.utc)
    with engine.connect() as conn:
        conn = conn.execution_options(pacsd_write=True)  # SQLite: BEGIN IMMEDIATE
        with conn.begin():
            if conn.dialect.name == "postgresql":
                # A starter waits as long as another one migrates (no busy timeout here).
                conn.execute(sa.text("SET LOCAL lock_timeout = 0"))
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"),
                             {"k": ADVISORY_LOCK_KEY})
            current = current_version(conn)
            if current is not None and current > LATEST:
                raise PacsdError("index schema is newer than this pacsd; upgrade pacsd")
            if current == LATEST:
                return LATEST
            schema.schema_version.create(conn, checkfirst=True)
            if current is None:
                if sa.inspect(conn).has_table("studies"):
                    raise PacsdError("index database has tables but no schema version")
                schema.metadata.create_all(conn, tables=list(FRESH_TABLES))
                schema.install_generation(conn)  # its row and triggers
                pending = MIGRATIONS
            else:
                pending = tuple(sorted((m for m in MIGRATIONS if m.version > current),
                                       key=lambda m: m.version))
                for m in pending:
                    m.apply(conn)
            conn.execute(sa.insert(schema.schema_version), [
                {"version": m.version, "description": m.description, "applied_at": now}
                for m in pending
            ])
    return LATEST
