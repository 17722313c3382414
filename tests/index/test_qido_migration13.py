"""Migration 13 (R-H1, issue 6 item 3): ix_studies_order_* carries the three PatientName
search columns, so a name match that walks the study order (``Chen*`` at 1M instances)
takes its page's pks from the index alone. A version-12 catalogue with data gets the
wider index under the same name (rows intact, running it again changes nothing); the
walk's plan reads the index only (SQLite: covering index; PostgreSQL: Index Only Scan)
and answers as the name indexes do."""
from __future__ import annotations

import sqlalchemy as sa

from pacsd.index import Catalogue, migrations, parse_qido, qido_sql
from pacsd.index.schema import schema_version
from tests.index.conftest import bulk_store, make_instance
from tests.index.test_migrations import fresh_url, versions  # noqa: F401 (fixture)


def _order_index(conn) -> str:
    if conn.dialect.name == "postgresql":
        return conn.scalar(sa.text("SELECT indexdef FROM pg_indexes "
                                   "WHERE indexname = 'ix_studies_order_pg'"))
    return conn.scalar(sa.text("SELECT sql FROM sqlite_master "
                               "WHERE name = 'ix_studies_order_sqlite'"))


def test_upgrade_from_version_12_widens_the_study_order(fresh_url):  # noqa: F811
    cat = Catalogue(fresh_url)
    cat.migrate()
    bulk_store(cat, [make_instance(f"3.{i}", PatientName=f"Chen^N{i}",
                                   StudyDate=f"2024{1 + i % 12:02d}01") for i in range(30)])
    pg = cat.dialect_name == "postgresql"
    with cat.engine.begin() as conn:
        # Back to version 12: the order index as it was (no name columns).
        conn.execute(sa.text("DROP INDEX ix_studies_order_pg" if pg
                             else "DROP INDEX ix_studies_order_sqlite"))
        conn.execute(sa.text(
            "CREATE INDEX ix_studies_order_pg ON studies (study_date DESC NULLS LAST, "
            "study_time DESC NULLS LAST, pk DESC)" if pg else
            "CREATE INDEX ix_studies_order_sqlite ON studies (study_date, study_time, pk)"))
        conn.execute(sa.delete(schema_version).where(schema_version.c.version >= 13))
        assert "patient_name" not in _order_index(conn)
    assert cat.migrate() == migrations.LATEST
    with cat.engine.connect() as conn:
        wide = _order_index(conn)
    assert cat.migrate() == migrations.LATEST
    assert 13 in versions(cat)
    for col in ("patient_name_alpha", "patient_name_ideo", "patient_name_phon"):
        assert col in wide
    assert ("INCLUDE" in wide) if pg else ("study_date, study_time, pk, patient_name_alpha"
                                           in wide)
    with cat.engine.connect() as conn:
        assert _order_index(conn) == wide
    q = parse_qido("study", [("PatientName", "Chen*"), ("limit", "7"), ("offset", "3")])
    got = cat.search(q)
    assert got.total == 30 and len(got.items) == 7
    walk, _ = qido_sql.build(q, walk=True)
    with cat.engine.connect() as conn:
        rows = conn.execute(walk).all()
    assert [r.study_instance_uid for r in rows] == \
        [i["0020000D"]["Value"][0] for i in got.items]
    cat.close()


def test_the_walk_reads_the_order_index_alone(fresh_url):  # noqa: F811
    cat = Catalogue(fresh_url)
    cat.migrate()
    bulk_store(cat, [make_instance(f"4.{i}", PatientName=f"Chen^N{i}" if i % 3 else
                                   f"Li^N{i}", StudyDate=f"2024{1 + i % 12:02d}01")
                     for i in range(300)])
    q = parse_qido("study", [("PatientName", "Chen*"), ("limit", "5")])
    walk, _ = qido_sql.build(q, walk=True)
    pg = cat.dialect_name == "postgresql"
    if pg:  # the visibility map (index-only scans) and statistics, as autovacuum would
        with cat.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE studies")
    with cat.engine.connect() as conn:
        compiled = walk.compile(dialect=conn.dialect)
        if pg:
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = "\n".join(r[0] for r in conn.exec_driver_sql(
                "EXPLAIN " + str(compiled), compiled.params))
            assert "Index Only Scan using ix_studies_order_pg" in plan, plan
        else:
            args = tuple(compiled.params[k] for k in compiled.positiontup)
            plan = "\n".join(r[-1] for r in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + str(compiled), args))
            assert "SCAN studies USING COVERING INDEX ix_studies_order_sqlite" in plan, plan
        rows = conn.execute(walk).all()
    want = cat.search(q)
    assert [r.study_instance_uid for r in rows] == \
        [i["0020000D"]["Value"][0] for i in want.items]
    assert len(rows) == 5
    cat.close()
