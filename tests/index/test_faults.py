"""FT-10: database locked / busy / read-only / unreachable -> clean OutOfResources (503,
C-STORE 0xA700) within the busy timeout; nothing half-written; recovery afterwards."""
from __future__ import annotations

import sqlite3
import time

import psycopg
import pytest

from pacsd.errors import OutOfResources
from pacsd.index import Catalogue, parse_qido
from tests.index.conftest import make_instance, store


def test_FT10_sqlite_exclusive_lock_times_out_cleanly(tmp_path):
    path = tmp_path / "index.db"
    cat = Catalogue(f"sqlite:///{path}", busy_timeout_s=0.3)
    cat.migrate()
    store(cat, make_instance("1.1"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        with pytest.raises(OutOfResources) as ei:
            store(cat, make_instance("2.2"))
        elapsed = time.monotonic() - t0
        assert 0.25 <= elapsed < 5
        assert ei.value.http_status == 503 and ei.value.dimse_status == 0xA700
        assert ei.value.headers["Retry-After"]
        with pytest.raises(OutOfResources):
            cat.delete("1.1")
        # WAL: readers are not blocked by the writer lock
        assert cat.get_instance("1.1", None, "1.1.1.1") is not None
        assert cat.search(parse_qido("study", [])).total == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store(cat, make_instance("2.2")).created  # recovers by itself
    assert cat.counts() == {"patients": 1, "studies": 2, "series": 2, "instances": 2}
    cat.close()


def test_FT10_sqlite_read_only_database(tmp_path):
    path = tmp_path / "index.db"
    rw = Catalogue(f"sqlite:///{path}")
    rw.migrate()
    store(rw, make_instance("1.1"))
    rw.close()
    ro = Catalogue(f"sqlite:///file:{path}?mode=ro&uri=true", busy_timeout_s=0.3)
    with pytest.raises(OutOfResources):
        store(ro, make_instance("2.2"))
    assert ro.counts()["instances"] == 1
    ro.close()


def test_FT10_postgres_lock_times_out_cleanly(pg_url):
    from tests.index.conftest import _truncate
    _truncate(pg_url)
    cat = Catalogue(pg_url, busy_timeout_s=0.5)
    store(cat, make_instance("1.1"))
    holder = psycopg.connect(pg_url.replace("+psycopg", ""))
    holder.execute("LOCK TABLE studies IN ACCESS EXCLUSIVE MODE")
    try:
        t0 = time.monotonic()
        with pytest.raises(OutOfResources):
            store(cat, make_instance("2.2"))
        assert time.monotonic() - t0 < 5
    finally:
        holder.rollback()
        holder.close()
    assert store(cat, make_instance("2.2")).created
    assert cat.counts()["instances"] == 2
    cat.close()


def test_FT10_postgres_unreachable():
    cat = Catalogue("postgresql://postgres@127.0.0.1:1/nothing", busy_timeout_s=1)
    for call in (cat.counts, lambda: store(cat, make_instance()),
                 lambda: cat.search(parse_qido("study", [])), cat.migrate):
        with pytest.raises(OutOfResources):
            call()
    cat.close()
