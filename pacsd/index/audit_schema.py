"""Audit trail bookkeeping tables (migration 7; R-E3, R-E4, MLPS 11, 13).

* ``audit_anchor`` (one row, ``id`` = 1): where the hash chain starts after old events were
  pruned (retention, MLPS 13). ``seq`` / ``hash`` are those of the last pruned event, so
  ``pacsd audit verify`` checks the remaining rows from there: the first kept row's
  ``prev_hash`` must equal the anchor's ``hash``. No row = nothing pruned (the chain starts
  at seq 1 from 64 zeros). ``pruned_before`` is the ``event_time`` bound of the last prune,
  ``pruned_rows`` how many rows were removed in all.
* ``audit_cursors``: per export sink (``syslog`` ...), the ``seq`` of the last event
  delivered, so a sink that was down resumes where it stopped (at-least-once delivery).

Like ``audit_events``, no patient data in either. Migration 7 also indexes
``audit_events`` by ``study_uid`` and ``actor`` for the auditor's filters (the page, the
exports); ``event_time`` and ``event_type`` were indexed from the start.
"""
from __future__ import annotations

import sqlalchemy as sa

from pacsd.index.schema import Key, Text, metadata
from pacsd.index.security_schema import audit_events

audit_anchor = sa.Table(
    "audit_anchor", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),  # always 1
    sa.Column("seq", Key, nullable=False),            # last pruned event
    sa.Column("hash", Text, nullable=False),          # its hash: the chain's new start
    sa.Column("pruned_before", Text, nullable=False),  # event_time bound (ISO 8601 UTC)
    sa.Column("pruned_rows", Key, nullable=False),
    sa.Column("pruned_at", Text, nullable=False),
)

audit_cursors = sa.Table(
    "audit_cursors", metadata,
    sa.Column("sink", Text, primary_key=True),
    sa.Column("last_seq", Key, nullable=False),
    sa.Column("updated_at", Text, nullable=False),
)

#: Created by migration 7, or with the catalogue on a fresh database.
AUDIT_TABLES = (audit_anchor, audit_cursors)
#: Filters of the auditor's page: part of ``audit_events`` on a fresh database.
AUDIT_INDEXES = (sa.Index("ix_audit_events_study_uid", audit_events.c.study_uid),
                 sa.Index("ix_audit_events_actor", audit_events.c.actor))


def migrate_audit(conn: sa.Connection) -> None:
    """Migration 7: the two tables and the two indexes (idempotent)."""
    metadata.create_all(conn, tables=list(AUDIT_TABLES))
    for index in AUDIT_INDEXES:
        index.create(conn, checkfirst=True)
