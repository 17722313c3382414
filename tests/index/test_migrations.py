"""Schema and migration runner: idempotent, concurrent starters, upgrades, refusals."""
from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
import sqlalchemy as sa

from pacsd.errors import PacsdError
from pacsd.index import Catalogue, migrations
from pacsd.index.engine import normalise_url
from pacsd.index.schema import schema_version
from tests.conftest import PG_ADMIN_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request, tmp_path):
    """A brand-new, never-migrated database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    request.getfixturevalue("pg_url")  # skips when PostgreSQL is unreachable
    admin_url = sa.engine.make_url(PG_ADMIN_URL).set(drivername="postgresql")
    admin = psycopg.connect(admin_url.render_as_string(hide_password=False), autocommit=True)
    name = f"pacsd_test_mig_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def versions(cat) -> list[int]:
    with cat.engine.connect() as conn:
        return list(conn.scalars(sa.select(schema_version.c.version)
                                 .order_by(schema_version.c.version)))


def test_migrate_idempotent_and_creates_indexes(fresh_url):
    cat = Catalogue(fresh_url)
    assert cat.migrate() == migrations.LATEST
    assert cat.migrate() == migrations.LATEST
    assert versions(cat) == [m.version for m in migrations.MIGRATIONS]
    insp = sa.inspect(cat.engine)
    names = {ix["name"] for t in ("patients", "studies", "series", "instances")
             for ix in insp.get_indexes(t)}
    order_ix = "ix_studies_order_pg" if cat.dialect_name == "postgresql" else \
        "ix_studies_order_sqlite"
    for ix in (order_ix, "ix_studies_patient_fk", "ix_studies_patient_name_alpha",
               "ix_studies_patient_name_ideo", "ix_studies_accession_number",
               "ix_series_study_number", "ix_series_modality_number",
               "ix_instances_series_number", "ix_instances_study_sop_class"):
        assert ix in names
    for _table, ix in migrations.UNUSED_INDEXES:  # migrations 12 and 15
        assert ix not in names
    cat.close()


def test_concurrent_starters_migrate_once(fresh_url):
    cats = [Catalogue(fresh_url, busy_timeout_s=10) for _ in range(4)]
    barrier = threading.Barrier(len(cats))
    errors: list[BaseException] = []

    def start(cat):
        barrier.wait()
        try:
            cat.migrate()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=start, args=(c,)) for c in cats]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert versions(cats[0]) == [m.version for m in migrations.MIGRATIONS]
    for c in cats:
        c.close()


def test_upgrade_applies_only_missing_migrations(fresh_url, monkeypatch):
    cat = Catalogue(fresh_url)
    cat.migrate()
    applied = []

    def add_column(conn):
        applied.append(1)
        conn.execute(sa.text("ALTER TABLE studies ADD COLUMN test_extra TEXT"))

    head = migrations.LATEST
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS + (
        migrations.Migration(head + 1, "extra", add_column),))
    monkeypatch.setattr(migrations, "LATEST", head + 1)
    assert cat.migrate() == head + 1
    assert cat.migrate() == head + 1
    assert applied == [1]
    # Numbers need not be contiguous on a branch (each helper owns one): compare to the list.
    assert versions(cat) == sorted(m.version for m in migrations.MIGRATIONS)
    assert "test_extra" in {c["name"] for c in sa.inspect(cat.engine).get_columns("studies")}
    cat.close()


def test_newer_schema_refused(fresh_url):
    cat = Catalogue(fresh_url)
    cat.migrate()
    with cat.engine.connect() as conn, conn.begin():
        conn.execute(sa.insert(schema_version).values(
            version=999, description="future", applied_at=sa.func.now()))
    with pytest.raises(PacsdError, match="newer"):
        cat.migrate()
    cat.close()


def test_tables_without_version_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE studies (pk INTEGER PRIMARY KEY)")
    engine.dispose()
    cat = Catalogue(url)
    with pytest.raises(PacsdError, match="no schema version"):
        cat.migrate()
    cat.close()


def test_url_forms():
    assert normalise_url("postgresql://u@h:5/db").drivername == "postgresql+psycopg"
    assert normalise_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("sqlite:////tmp/x.db").drivername == "sqlite"
    with pytest.raises(PacsdError):
        normalise_url("mysql://u@h/db")


def test_sqlite_pragmas(tmp_path):
    cat = Catalogue(f"sqlite:///{tmp_path / 'p.db'}", busy_timeout_s=2.5)
    cat.migrate()
    with cat.engine.connect() as conn:
        pragma = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 2  # FULL
        assert pragma("foreign_keys") == 1
        assert pragma("busy_timeout") == 2500
    cat.close()


def test_memory_sqlite_works():
    cat = Catalogue("sqlite://")
    cat.migrate()
    assert cat.counts()["studies"] == 0
    cat.close()


def test_upgrade_from_version_5_adds_series_modality_index(fresh_url, monkeypatch):
    """Migration 8 (issue 6, R-H1): a version-5 catalogue with data gets the index
    series (modality, series_number, pk), rows intact; running it again changes nothing.
    Other helpers' migrations (6, 7, 9 ...) are left out so this tests 5 -> 8 alone."""
    from pacsd.index.schema import SERIES_MODALITY_ORDER, patients, series, studies
    cat = Catalogue(fresh_url)
    cat.migrate()
    now = sa.func.now()
    with cat.engine.begin() as conn:
        # Back to version 5: without the index and without the newer version rows.
        SERIES_MODALITY_ORDER.drop(conn)
        conn.execute(sa.delete(schema_version).where(schema_version.c.version > 5))
        conn.execute(sa.insert(patients).values(
            pk=1, patient_id="P1", issuer_of_patient_id="", num_studies=1, created_at=now,
            updated_at=now))
        conn.execute(sa.insert(studies).values(
            pk=1, patient_fk=1, study_instance_uid="1.2.3", num_series=1, num_instances=0,
            modalities_in_study="CT", study_json=b"{}", revision=0, created_at=now,
            updated_at=now))
        conn.execute(sa.insert(series).values(
            pk=1, series_instance_uid="1.2.3.4", study_fk=1, modality="CT", series_number=7,
            num_instances=0, series_json=b"{}", revision=0, created_at=now, updated_at=now))
    names = {i["name"] for i in sa.inspect(cat.engine).get_indexes("series")}
    assert "ix_series_modality_number" not in names
    mine = tuple(m for m in migrations.MIGRATIONS if m.version <= 5 or m.version == 8)
    monkeypatch.setattr(migrations, "MIGRATIONS", mine)
    monkeypatch.setattr(migrations, "LATEST", 8)
    assert cat.migrate() == 8
    assert cat.migrate() == 8
    assert versions(cat) == [1, 2, 3, 4, 5, 8]
    idx = {i["name"]: i for i in sa.inspect(cat.engine).get_indexes("series")}
    assert idx["ix_series_modality_number"]["column_names"] == [
        "modality", "series_number", "pk"]
    with cat.engine.connect() as conn:
        assert conn.execute(sa.select(series.c.series_number)).scalars().all() == [7]
    cat.close()


def test_upgrade_from_version_9_adds_instance_digest(fresh_url):
    """Migration 10 (R-H1): instances.digest (the fast read-time digest) is added to a
    version-9 catalogue, nullable (existing rows keep being verified by SHA-256)."""
    from pacsd.index.schema import instances
    cat = Catalogue(fresh_url)
    cat.migrate()
    with cat.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE instances DROP COLUMN digest"))
        conn.execute(sa.delete(schema_version).where(schema_version.c.version >= 10))
    assert "digest" not in {c["name"] for c in sa.inspect(cat.engine).get_columns("instances")}
    assert cat.migrate() == migrations.LATEST
    assert cat.migrate() == migrations.LATEST
    assert 10 in versions(cat)
    cols = {c["name"]: c for c in sa.inspect(cat.engine).get_columns("instances")}
    assert cols["digest"]["nullable"]
    assert instances.c.digest.nullable
    cat.close()


def test_upgrade_from_version_13_adds_the_qido_generation(fresh_url):
    """Migration 14 (R-H1): the qido_generation row, and on SQLite the triggers that bump
    it on every insert, update and delete of a studies or series row (a fresh database
    gets the same); on PostgreSQL the row stays 0 (kept pages are checked by their stamp)."""
    from pacsd.index.schema import qido_generation
    from tests.index.conftest import make_instance, store
    cat = Catalogue(fresh_url)
    cat.migrate()
    sqlite = cat.engine.dialect.name == "sqlite"

    def generation() -> int:
        with cat.engine.connect() as conn:
            return conn.scalar(sa.select(qido_generation.c.value))

    def triggers() -> int:
        with cat.engine.connect() as conn:
            return conn.scalar(sa.text(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'")) if sqlite else 0
    assert generation() == 0 and triggers() == (6 if sqlite else 0)
    with cat.engine.begin() as conn:
        for t in ("studies", "series"):
            for op in ("insert", "update", "delete"):
                if sqlite:
                    conn.execute(sa.text(f"DROP TRIGGER tr_{t}_{op}_generation"))
        conn.execute(sa.text("DROP TABLE qido_generation"))
        conn.execute(sa.delete(schema_version).where(schema_version.c.version >= 14))
    assert cat.migrate() == migrations.LATEST == cat.migrate()
    assert 14 in versions(cat) and triggers() == (6 if sqlite else 0)
    before = generation()
    store(cat, make_instance("5.1", "5.1.1", "5.1.1.1"))  # a study, a series
    store(cat, make_instance("5.1", "5.1.1", "5.1.1.2"))  # both updated
    moved = generation() - before
    assert moved >= 4 if sqlite else moved == 0
    cat.delete("5.1")
    assert (generation() > before + moved) == sqlite
    cat.close()


def test_upgrade_from_version_14_drops_ix_series_modality(fresh_url):
    """Migration 15 (R-H1): ix_series_modality, the leading column of
    ix_series_modality_number, is dropped from a version-14 catalogue; rows intact, the
    Modality query answers the same; running it again changes nothing."""
    from pacsd.index import parse_qido
    from tests.index.conftest import make_instance, store
    cat = Catalogue(fresh_url)
    cat.migrate()
    store(cat, make_instance("6.1", "6.1.1", "6.1.1.1"))
    with cat.engine.begin() as conn:
        conn.execute(sa.text("CREATE INDEX ix_series_modality ON series (modality)"))
        conn.execute(sa.delete(schema_version).where(schema_version.c.version >= 15))

    def series_indexes() -> set[str]:
        return {i["name"] for i in sa.inspect(cat.engine).get_indexes("series")}
    assert "ix_series_modality" in series_indexes()
    assert cat.migrate() == migrations.LATEST == cat.migrate()
    assert 15 in versions(cat)
    assert "ix_series_modality" not in series_indexes()
    assert "ix_series_modality_number" in series_indexes()
    found = cat.search(parse_qido("series", [("Modality", "CT")]))
    assert [i["0020000E"]["Value"][0] for i in found.items] == ["6.1.1"]
    cat.close()
