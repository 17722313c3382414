"""Worklist columns of ``studies`` (R-D2): migration 6 and the reindex of stored studies.

Migration 6 adds ``visit_number``, ``card_number``, ``ordering_department``,
``visit_type`` (services/visit.py) and ``body_parts_in_study`` with one index each, and
backfills ``body_parts_in_study`` from the series rows (plain SQL). The visit columns of
studies stored before it stay NULL until ``pacsd worklist reindex`` fills them from each
study's stored instance metadata with the current ``[worklist]`` settings (they depend on
the settings, which a migration does not read); run it again after changing them.

The visit class recorded from HIS for retention (``study_retention.visit_class``,
``pacsd retention visit`` / the API; R-A7) wins over the DICOM-derived visit type: at
ingest (writes.py ``his_visit``, once per new study), when it is recorded
(lifecycle.py ``set_visit``) and in the reindex.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from pacsd.index.lifecycle_schema import study_retention
from pacsd.index.schema import WORKLIST_COLUMNS, instances, studies

#: Columns migration 6 adds where missing.
ADDED = (*WORKLIST_COLUMNS, "body_parts_in_study")


def migrate_worklist(conn: sa.Connection) -> None:
    """Migration 6 (module docstring)."""
    insp = sa.inspect(conn)
    pg = conn.dialect.name == "postgresql"
    have = {c["name"] for c in insp.get_columns("studies")}
    typ = 'TEXT COLLATE "C"' if pg else "TEXT"
    for column in ADDED:
        if column not in have:
            conn.execute(sa.text(f"ALTER TABLE studies ADD COLUMN {column} {typ}"))
    indexes = {i["name"] for i in insp.get_indexes("studies")}
    for index in studies.indexes:
        cols = [c.name for c in index.columns]
        if len(cols) == 1 and cols[0] in ADDED and index.name not in indexes:
            index.create(conn)
    if pg:
        agg = ("(SELECT string_agg(DISTINCT s.body_part_examined, '\\' ORDER BY "
               "s.body_part_examined) FROM series s WHERE s.study_fk = studies.pk)")
    else:  # the ordered subquery fixes group_concat's order on SQLite
        agg = ("(SELECT group_concat(b, '\\') FROM (SELECT DISTINCT s.body_part_examined b "
               "FROM series s WHERE s.study_fk = studies.pk AND s.body_part_examined IS NOT "
               "NULL ORDER BY b))")
    conn.execute(sa.text(f"UPDATE studies SET body_parts_in_study = {agg}"))


def reindex(engine: sa.Engine, columns_of: Callable[[bytes], dict[str, Any]], *,
            batch: int = 500, progress: Callable[[int], None] | None = None) -> int:
    """Recompute the visit columns of every study from one stored instance's metadata
    (the study's first, by pk), in keyset batches of short transactions; returns the
    number of studies updated. ``columns_of``: services/visit.columns_from_metadata."""
    done = 0
    last = 0
    first_instance = (sa.select(instances.c.metadata)
                      .where(instances.c.study_fk == studies.c.pk)
                      .order_by(instances.c.pk).limit(1).scalar_subquery())
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(studies.c.pk, first_instance.label("meta"),
                          study_retention.c.visit_class)
                .select_from(studies.outerjoin(
                    study_retention,
                    study_retention.c.study_instance_uid == studies.c.study_instance_uid))
                .where(studies.c.pk > last).order_by(studies.c.pk).limit(batch)).all()
        if not rows:
            return done
        with engine.connect() as conn:
            conn = conn.execution_options(pacsd_write=True)
            with conn.begin():
                for row in rows:
                    if row.meta is None:
                        continue
                    values = columns_of(zlib.decompress(row.meta))
                    if row.visit_class:  # HIS data (retention) wins, as at ingest
                        values["visit_type"] = row.visit_class
                    conn.execute(sa.update(studies).where(studies.c.pk == row.pk)
                                 .values(**values))
                    done += 1
        last = rows[-1].pk
        if progress is not None:
            progress(done)
