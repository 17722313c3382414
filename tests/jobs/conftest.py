"""Fixtures for the job queue and forwarding tests: a catalogue on SQLite and on the real
PostgreSQL (tests/conftest.py ``pg_server_url``), and a clock tests move by hand."""
from __future__ import annotations

import pytest
from jobhelpers import FakeClock, clear_queue_tables

from pacsd.index import Catalogue


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def pg_jobs_url(pg_server_url) -> str:
    cat = Catalogue(pg_server_url)
    cat.migrate()
    cat.close()
    return pg_server_url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """A migrated, empty catalogue database URL on SQLite or PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.db'}"
        cat = Catalogue(url)
        cat.migrate()
        cat.close()
        return url
    url = request.getfixturevalue("pg_jobs_url")
    clear_queue_tables(url)
    return url


@pytest.fixture
def catalogue(db_url):
    cat = Catalogue(db_url)
    yield cat
    cat.close()
