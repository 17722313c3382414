"""Data-scoping tables and columns (R-A12, MLPS 7, 8): institutions and sensitivity labels.

Created by migration 5 (``migrations.py``) on an existing archive, or with the catalogue
on a fresh one. What it adds:

* ``studies.institution`` (in ``schema.py``): the hospital / campus code of a study,
  captured once when the study row is created at ingest (from ``[security]
  institution_attribute``, default InstitutionName, mapped by ``institution_map``).
  Indexed with the default QIDO order (``schema.INSTITUTION_ORDER``): it is AND-ed into
  every query of a scoped actor (a bound-parameter ``IN``).
* ``users.institutions`` / ``users.clearances`` and ``api_tokens.institutions`` (in
  ``security_schema.py``): comma-separated codes and labels. A user's NULL institutions
  mean ``[security] default_institutions``; a token's NULL means its user's.
* ``users.totp_secret`` / ``users.totp_last_step``: the TOTP second factor of an
  administrator (MLPS 4; ``services/totp.py``) and the last time step used (replay).
* ``users.password_history`` (JSON list of previous argon2 hashes), ``must_change_password``
  (forced change at the next login) and ``reactivated_at`` (inactivity clock restart):
  MLPS 1, 5.
* ``departments`` (R-E1: create / edit / delete) and ``users.department`` (its name).
* ``study_labels``: sensitivity labels (``VIP``, ``psychiatry`` ...) keyed by the
  StudyInstanceUID text, not the study row, so a label survives a delete and re-ingest
  and can be set before the study arrives (a VIP's exam is labelled when it is booked).
  The primary key (study UID, label) serves the correlated ``NOT EXISTS`` of the scope.
"""
from __future__ import annotations

import sqlalchemy as sa

from pacsd.index.schema import INSTITUTION_ORDER, Text, metadata

study_labels = sa.Table(
    "study_labels", metadata,
    sa.Column("study_instance_uid", Text, primary_key=True),
    sa.Column("label", Text, primary_key=True),
    sa.Column("set_at", sa.Float(), nullable=False),
    sa.Column("set_by", Text, nullable=False, server_default=""),
)

departments = sa.Table(
    "departments", metadata,
    sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("name", Text, nullable=False, unique=True),
    sa.Column("description", Text, nullable=False, server_default=""),
    sa.Column("created_at", sa.Float(), nullable=False),
)

#: Created by migration 5, or with the catalogue on a fresh database.
ACCESS_TABLES = (study_labels, departments)

#: (table, column, DDL type, extra DDL) added by migration 5 where missing.
ADDED_COLUMNS = (
    ("studies", "institution", "TEXT", "NOT NULL DEFAULT ''"),
    ("users", "institutions", "TEXT", ""),
    ("users", "clearances", "TEXT", "NOT NULL DEFAULT ''"),
    ("api_tokens", "institutions", "TEXT", ""),
    ("users", "totp_secret", "TEXT", ""),
    ("users", "totp_last_step", "BIGINT", ""),
    ("users", "department", "TEXT", ""),
    ("users", "password_history", "TEXT", "NOT NULL DEFAULT '[]'"),
    ("users", "must_change_password", "BOOLEAN", "NOT NULL DEFAULT FALSE"),
    ("users", "reactivated_at", "DOUBLE PRECISION", ""),
)


def migrate_access(conn: sa.Connection) -> None:
    """Migration 5: add the columns (where an earlier migration, which creates the current
    table definitions, did not already), index and backfill ``studies.institution`` from
    the series' InstitutionName, and create ``study_labels``."""
    insp = sa.inspect(conn)
    pg = conn.dialect.name == "postgresql"
    for table, column, typ, extra in ADDED_COLUMNS:
        if not insp.has_table(table):
            continue
        if column in {c["name"] for c in insp.get_columns(table)}:
            continue
        typ = 'TEXT COLLATE "C"' if pg and typ == "TEXT" else typ
        conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {typ} {extra}"))
        if (table, column) == ("studies", "institution"):
            conn.execute(sa.text(
                "UPDATE studies SET institution = COALESCE((SELECT MIN(s.institution_name) "
                "FROM series s WHERE s.study_fk = studies.pk), '')"))
    index = INSTITUTION_ORDER.get(conn.dialect.name)
    if index is not None and index.name not in {i["name"] for i in insp.get_indexes("studies")}:
        index.create(conn)
    metadata.create_all(conn, tables=list(ACCESS_TABLES))
