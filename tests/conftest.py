"""Session-wide real services for tests in any folder: a fresh PostgreSQL database and a
real S3-protocol server (moto). Folders may define narrower fixtures of their own."""
from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator

import pytest

PG_ADMIN_URL = os.environ.get("PACSD_TEST_PG_URL",
                              "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards; its URL. Skips with the
    reason when no server answers on 127.0.0.1:5432."""
    import psycopg
    import sqlalchemy as sa

    admin_url = sa.engine.make_url(PG_ADMIN_URL).set(drivername="postgresql")
    try:
        admin = psycopg.connect(admin_url.render_as_string(hide_password=False),
                                autocommit=True, connect_timeout=3)
    except Exception as e:  # noqa: BLE001 - any failure means "no server here"
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(e).__name__}")
    name = f"pacsd_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database for this session (dropped at the end)."""
    with pg_database() as url:
        yield url


@pytest.fixture
def pg_fresh_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database for one test (dropped after it)."""
    with pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-protocol server on loopback with bucket ``pacsd-e2e``."""
    from s3server import s3_server

    with s3_server() as srv:
        srv.create_bucket("pacsd-e2e")
        yield srv
