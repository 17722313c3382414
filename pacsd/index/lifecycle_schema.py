"""Lifecycle tables: retention (R-A7), deletion tombstones (R-A7, FT-13) and instance
versions (R-A8). Created by migration 4 (``migrations.py``) on an existing archive, or
with the catalogue on a fresh one.

* ``study_retention``: per study, what HIS data (or an operator) said about the visit
  (class, visit date, discharge date) and the legal hold. Keyed by StudyInstanceUID text,
  not by ``studies.pk``, so a hold or HIS data may arrive before the images, and the
  record outlives a purge. Studies without a row are judged from DICOM attributes alone.
* ``purge_tombstones`` / ``purge_objects``: the two-phase deletion after expiry
  (reliability-matrix §7 item 3). Marking removes the study from the catalogue and, in
  the same transaction, records every blob to delete here; purging deletes the blobs
  from every copy and ticks them off; finalising closes the tombstone. A crash at any
  point resumes from these rows (FT-13); nothing is deleted twice or forgotten.
* ``compressed_objects``: objects compressed losslessly at ingest, for the space-saved
  report ([storage] compress, R-A5).
* ``instance_versions``: earlier versions of corrected instances (R-A8). The current
  version stays the ``instances`` row that QIDO/WADO read (hot paths unchanged); each
  correction copies the superseded row's blob reference here.

Times are POSIX seconds (``Float``) like the security tables: arithmetic with an
injectable clock, identical on SQLite and PostgreSQL.
"""
from __future__ import annotations

import sqlalchemy as sa

from pacsd.index.schema import Key, Text, metadata

Seconds = sa.Float()

study_retention = sa.Table(
    "study_retention", metadata,
    sa.Column("pk", Key, primary_key=True),
    sa.Column("study_instance_uid", Text, nullable=False, unique=True),
    sa.Column("visit_class", Text),          # "outpatient" | "inpatient" | NULL (unknown)
    sa.Column("visit_date", Text),           # YYYYMMDD (outpatient visit / admission)
    sa.Column("discharge_date", Text),       # YYYYMMDD (inpatient discharge)
    sa.Column("source", Text, nullable=False, server_default=""),  # "api" | "cli"
    sa.Column("legal_hold", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("hold_reason", Text, nullable=False, server_default=""),
    sa.Column("hold_set_at", Seconds),
    sa.Column("updated_at", Seconds, nullable=False),
)

purge_tombstones = sa.Table(
    "purge_tombstones", metadata,
    sa.Column("pk", Key, primary_key=True),
    sa.Column("study_instance_uid", Text, nullable=False, index=True),
    sa.Column("state", Text, nullable=False, index=True),  # "marked" | "finalized"
    sa.Column("object_count", sa.Integer, nullable=False),
    sa.Column("reason", Text, nullable=False, server_default="{}"),  # JSON, no PHI
    sa.Column("marked_at", Seconds, nullable=False),
    sa.Column("finalized_at", Seconds),
)

purge_objects = sa.Table(
    "purge_objects", metadata,
    sa.Column("pk", Key, primary_key=True),
    sa.Column("tombstone_fk", Key, sa.ForeignKey("purge_tombstones.pk"), nullable=False,
              index=True),
    sa.Column("sha256", Text, nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
)

instance_versions = sa.Table(
    "instance_versions", metadata,
    sa.Column("pk", Key, primary_key=True),
    sa.Column("study_instance_uid", Text, nullable=False, index=True),
    sa.Column("series_instance_uid", Text, nullable=False),
    sa.Column("sop_instance_uid", Text, nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),   # 1 = as first received
    sa.Column("sha256", Text, nullable=False, index=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("transfer_syntax_uid", Text, nullable=False),
    sa.Column("correction_fk", Key, sa.ForeignKey("corrections.pk")),  # that replaced it
    sa.Column("created_at", Seconds, nullable=False),   # when this version was stored
    sa.Column("superseded_at", Seconds, nullable=False),
    sa.UniqueConstraint("sop_instance_uid", "version", name="uq_instance_versions_sop_v"),
)

corrections = sa.Table(
    "corrections", metadata,
    sa.Column("pk", Key, primary_key=True),
    sa.Column("study_instance_uid", Text, nullable=False, index=True),
    sa.Column("reason", Text, nullable=False),
    sa.Column("changes", Text, nullable=False),          # JSON: keyword -> new value
    sa.Column("actor", Text, nullable=False, server_default=""),
    sa.Column("instance_count", sa.Integer, nullable=False),
    sa.Column("created_at", Seconds, nullable=False),
)

compressed_objects = sa.Table(
    # Lossless compression at ingest ([storage] compress, R-A5): one row per stored
    # object that was compressed, for the space-saved report (joined with the current
    # instances, so a row whose index commit failed never counts).
    "compressed_objects", metadata,
    sa.Column("pk", Key, primary_key=True),
    sa.Column("sha256", Text, nullable=False, unique=True),   # the stored (compressed) blob
    sa.Column("received_size", sa.BigInteger, nullable=False),
    sa.Column("stored_size", sa.BigInteger, nullable=False),
    sa.Column("transfer_syntax_uid", Text, nullable=False),
    sa.Column("created_at", Seconds, nullable=False),
)

scrub_schedule = sa.Table(
    # The scheduled scrub of the serve processes ([storage] scrub_every_days, R-A6): one
    # row (pk 1). A process holds the lease while it scrubs a slice, so of several
    # processes sharing one catalogue only one scrubs at a time; ``after_pk`` lets the
    # next slice (in any process, after any restart: FT-13) continue where this one
    # stopped.
    "scrub_schedule", metadata,
    sa.Column("pk", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("after_pk", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("in_progress", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("lease_owner", Text, nullable=False, server_default=""),
    sa.Column("lease_until", Seconds, nullable=False, server_default="0"),
    sa.Column("last_started_at", Seconds),
    sa.Column("last_completed_at", Seconds),
    sa.Column("last_result", Text, nullable=False, server_default="{}"),  # JSON, no PHI
    sa.Column("running", Text, nullable=False, server_default="{}"),  # totals so far
)

#: Dependency order (corrections before instance_versions).
LIFECYCLE_TABLES = (study_retention, purge_tombstones, purge_objects, corrections,
                    instance_versions, compressed_objects, scrub_schedule)
