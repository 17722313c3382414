"""Migration 4 (lifecycle tables: retention, purge tombstones, versions; R-A7, R-A8)
brings a database created at schema version 2 to the current schema, and is idempotent."""
from __future__ import annotations

import datetime as _dt
import uuid

import pytest
import sqlalchemy as sa

from pacsd.index import Catalogue, lifecycle_schema, migrations, schema, security_schema


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """A database of its own (never the session's shared one)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'v2.db'}"
        return
    import psycopg

    from tests.conftest import PG_ADMIN_URL
    request.getfixturevalue("pg_server_url")  # skips when PostgreSQL is unreachable
    admin_url = sa.engine.make_url(PG_ADMIN_URL).set(drivername="postgresql")
    admin = psycopg.connect(admin_url.render_as_string(hide_password=False), autocommit=True)
    name = f"pacsd_test_life_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.set(drivername="postgresql+psycopg", database=name
                            ).render_as_string(hide_password=False)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_version_2_database_upgrades_to_lifecycle_tables(url):
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        # The schema as version 2 left it: catalogue + security tables, stamped 1 and 2.
        schema.metadata.create_all(conn, tables=[
            *schema.CATALOGUE_TABLES, *security_schema.SECURITY_TABLES,
            schema.schema_version])
        now = _dt.datetime.now(_dt.timezone.utc)
        conn.execute(sa.insert(schema.schema_version), [
            {"version": 1, "description": "initial", "applied_at": now},
            {"version": 2, "description": "security", "applied_at": now}])
    engine.dispose()
    cat = Catalogue(url)
    assert cat.migrate() == migrations.LATEST
    assert cat.migrate() == migrations.LATEST
    names = set(sa.inspect(cat.engine).get_table_names())
    assert {t.name for t in lifecycle_schema.LIFECYCLE_TABLES} <= names
    with cat.engine.connect() as conn:
        got = list(conn.scalars(sa.select(schema.schema_version.c.version)
                                .order_by(schema.schema_version.c.version)))
    assert 4 in got and got == sorted(set(got))
    cat.close()
