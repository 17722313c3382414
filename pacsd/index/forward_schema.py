"""Store-and-forward tables: the send/receive log and each study's upload clock
(R-B2, R-B3, R-A9). Created by migration 3 with the job queue (``jobs_schema.py``).

* ``forward_items``: one row per (destination, instance) routed by a forwarding rule —
  when and from which calling AE it was received, whether and when it was sent, the
  attempts and the last error. It is the send / receive log, and the work list of the
  forwarding jobs (a job sends the ``pending`` rows of its study and destination).
* ``forward_studies``: one row per (destination, study): the upload clock from the first
  arrival to the confirmed delivery of every routed instance (``delivered_at``; reset to
  NULL when a new instance arrives later), and ``alerted_at`` once the study went over
  ``[forward] sla_minutes`` undelivered (R-A9).

No patient data: UIDs, AE titles, times, counts and PHI-free error reasons only.
"""
from __future__ import annotations

import sqlalchemy as sa

from pacsd.index.schema import Key, Text, metadata

Seconds = sa.Float()

forward_studies = sa.Table(
    "forward_studies", metadata,
    sa.Column("pk", Key, primary_key=True),
    sa.Column("destination", Text, nullable=False),
    sa.Column("study_uid", Text, nullable=False),
    sa.Column("first_received_at", Seconds, nullable=False),
    sa.Column("last_received_at", Seconds, nullable=False),
    sa.Column("delivered_at", Seconds),
    sa.Column("alerted_at", Seconds),
    sa.Column("last_error", Text, nullable=False, server_default=""),
    sa.UniqueConstraint("destination", "study_uid", name="uq_forward_studies_dest_study"),
    sa.Index("ix_forward_studies_open", "delivered_at", "first_received_at"),
)

forward_items = sa.Table(
    "forward_items", metadata,
    sa.Column("pk", Key, primary_key=True),
    sa.Column("destination", Text, nullable=False),
    sa.Column("study_uid", Text, nullable=False),
    sa.Column("series_uid", Text, nullable=False),
    sa.Column("sop_uid", Text, nullable=False),
    sa.Column("sop_class_uid", Text, nullable=False),
    sa.Column("calling_aet", Text, nullable=False, server_default=""),
    sa.Column("received_at", Seconds, nullable=False),
    sa.Column("state", Text, nullable=False),  # pending | sent | gone (see the data dictionary)
    sa.Column("sent_at", Seconds),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", Text, nullable=False, server_default=""),
    sa.UniqueConstraint("destination", "sop_uid", name="uq_forward_items_dest_sop"),
    sa.Index("ix_forward_items_work", "destination", "study_uid", "state"),
    sa.Index("ix_forward_items_received", "received_at"),
)

#: Created by migration 3 (with the job queue) or with the catalogue on a fresh database.
FORWARD_TABLES = (forward_studies, forward_items)
