"""Migration 3 brings a version-2 catalogue (users and audit, no queue) to the job queue
and forwarding tables, keeping what was there (R-B2)."""
from __future__ import annotations

import sqlalchemy as sa

from pacsd.index import Catalogue, migrations, schema, security_schema
from pacsd.index.jobs import JobQueue


def test_version_2_database_upgrades_to_3(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'index.db'}"
    with monkeypatch.context() as m:  # pacsd as it was before this migration
        m.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])
        m.setattr(migrations, "LATEST", 2)
        m.setattr(migrations, "FRESH_TABLES",
                  schema.CATALOGUE_TABLES + security_schema.SECURITY_TABLES)
        old = Catalogue(url)
        assert old.migrate() == 2
        with old.engine.begin() as conn:
            conn.execute(sa.insert(security_schema.users).values(
                username="keep", roles="sysadmin", password_hash="x", created_at=1.0,
                password_changed_at=1.0))
        assert not sa.inspect(old.engine).has_table("jobs")
        old.close()
    cat = Catalogue(url)
    assert cat.migrate() == migrations.LATEST >= 3
    tables = set(sa.inspect(cat.engine).get_table_names())
    assert {"jobs", "forward_items", "forward_studies"} <= tables
    with cat.engine.connect() as conn:
        assert conn.scalar(sa.select(security_schema.users.c.username)) == "keep"
    q = JobQueue(cat)
    pk = q.enqueue("k", dedupe_key="d")
    assert q.enqueue("k", dedupe_key="d") == pk  # the partial unique index works
    cat.close()
