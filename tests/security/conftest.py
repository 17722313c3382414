"""Fixtures for the security tests: the real app and database (SQLite, and the real
PostgreSQL of tests/conftest.py's ``pg_server_url``), an injectable clock instead of sleeps,
cheap argon2 parameters (the production parameters are exercised once, in
test_identity.py). Helpers live in sechelpers.py."""
from __future__ import annotations

import pytest
from sechelpers import FakeClock, make_service, make_settings, pg_empty, start_api


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty catalogue database on each backend (PostgreSQL: the session's database,
    emptied; skipped with the reason when no server answers)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    return pg_empty(request.getfixturevalue("pg_server_url"))


@pytest.fixture
def service(tmp_path, db_url, clock):
    """A SecurityService over a real catalogue (no web app); audit written at once."""
    svc, cat = make_service(make_settings(tmp_path, db_url), clock)
    try:
        yield svc
    finally:
        cat.close()


@pytest.fixture
async def api(aiohttp_client, tmp_path, clock):
    """The real app with [security] enabled on SQLite."""
    return await start_api(aiohttp_client, make_settings(tmp_path), clock)


@pytest.fixture
async def api_db(aiohttp_client, tmp_path, clock, db_url):
    """The real app with [security] enabled, on SQLite and on PostgreSQL."""
    return await start_api(aiohttp_client, make_settings(tmp_path, db_url), clock)
