"""The persistent job queue table (R-B2: store-and-forward with a persistent queue).

One row per job, in the catalogue database (same engine, same backups), created by
migration 3 (``migrations.py``) or with the catalogue on a fresh database.

* ``state``: ``queued`` (waiting until ``run_at``), ``running`` (claimed under a lease until
  ``lease_until``), ``done``, ``dead`` (dead letter: ``max_attempts`` used up or a permanent
  error; ``last_error`` keeps why). A ``running`` job whose lease expired is claimable
  again, so work resumes after a crash or a restart.
* ``attempts`` counts claims, so a job that crashes its worker every time still ends in
  the dead-letter state instead of looping for ever.
* ``lease_token`` is random per claim: completing or failing a job whose lease was taken
  over by another worker changes nothing (the newer claim wins).
* ``dedupe_key``: at most one *queued* job per key (partial unique index on both
  databases). Enqueueing a key that is already queued returns the queued job instead;
  jobs that share a key must therefore be interchangeable (e.g. "send what study S still
  lacks to destination D").
* Times are POSIX seconds (Float), compared with an injectable clock (tests travel in
  time, as in ``security_schema.py``).
"""
from __future__ import annotations

import sqlalchemy as sa

from pacsd.index.schema import Key, Text, metadata

Seconds = sa.Float()

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("pk", Key, primary_key=True),
    sa.Column("kind", Text, nullable=False),
    sa.Column("payload", Text, nullable=False, server_default="{}"),  # JSON, no PHI
    sa.Column("dedupe_key", Text),
    sa.Column("state", Text, nullable=False),  # queued | running | done | dead
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("run_at", Seconds, nullable=False),
    sa.Column("lease_until", Seconds),
    sa.Column("lease_token", Text),
    sa.Column("leased_by", Text, nullable=False, server_default=""),
    sa.Column("created_at", Seconds, nullable=False),
    sa.Column("updated_at", Seconds, nullable=False),
    sa.Column("finished_at", Seconds),
    sa.Column("last_error", Text, nullable=False, server_default=""),
    # The claim query: due queued jobs and expired leases, oldest first.
    sa.Index("ix_jobs_state_run_at", "state", "run_at"),
    sa.Index("ix_jobs_kind_state", "kind", "state"),
    sa.Index("uq_jobs_queued_dedupe_key", "dedupe_key", unique=True,
             sqlite_where=sa.text("state = 'queued' AND dedupe_key IS NOT NULL"),
             postgresql_where=sa.text("state = 'queued' AND dedupe_key IS NOT NULL")),
)

#: Created by migration 3, or with the catalogue on a fresh database.
JOBS_TABLES = (jobs,)
