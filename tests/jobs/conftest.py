"""Fixtures for the job queue and forwarding tests: a catalogue on SQLite and on the real
PostgreSQL (tests/conftest.py ``pg_server_url``), and a clock tests move by hand."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from pacsd.index import Catalogue
from pacsd.index.forward_schema import FORWARD_TABLES
from pacsd.index.jobs_schema import jobs


class FakeClock:
    """POSIX seconds that only move when a test says so (no sleeps, no timing asserts)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def clear_queue_tables(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for t in (jobs, *FORWARD_TABLES):
            conn.execute(sa.delete(t))
    engine.dispose()


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
