"""Engine creation and database-error translation for the catalogue.

SQLite (embedded default) and PostgreSQL go through the same SQLAlchemy Core code; what
differs is set up here once:

* SQLite: WAL (readers never block the writer), ``synchronous=FULL`` (a committed index row
  survives power loss: "never say stored before the index row is durable"),
  ``foreign_keys=ON``, ``busy_timeout``, ``case_sensitive_like=ON`` (PS3.4 matching of
  non-PN text is case-sensitive). The sqlite3 module's own transaction handling is switched
  off and SQLAlchemy emits ``BEGIN`` itself, ``BEGIN IMMEDIATE`` for writers (execution
  option ``pacsd_write``), so a writer takes the write lock up front instead of failing
  on a lock upgrade halfway through.
* PostgreSQL: ``postgresql://`` is rewritten to the psycopg 3 driver; pooled connections
  are pinged before use so a restarted server costs one failed request, not many;
  ``lock_timeout`` and ``connect_timeout`` follow ``busy_timeout_s``.

:func:`translate_errors` maps database failures to :mod:`pacsd.errors` at this boundary:
busy/locked/unavailable/read-only/disk full -> :class:`OutOfResources` (503 + Retry-After,
C-STORE 0xA700; FT-10); anything else -> a PHI-free :class:`PacsdError` (500).
"""
from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.pool import StaticPool

from pacsd.errors import OutOfResources, PacsdError

#: SQLSTATEs after which the whole PostgreSQL transaction is simply run again:
#: serialization failure, deadlock, and the FK/unique races a concurrent delete can cause.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "23503", "23505"})


def normalise_url(url: str) -> sa.engine.URL:
    """Parse ``url``; ``postgresql://`` / ``postgres://`` become ``postgresql+psycopg://``."""
    u = sa.engine.make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() not in ("sqlite", "postgresql"):
        raise PacsdError("unsupported catalogue database (use sqlite or postgresql)")
    return u


def create_engine(url: str, *, busy_timeout_s: float = 10.0) -> sa.Engine:
    """An engine configured for the catalogue (see module docstring)."""
    u = normalise_url(url)
    if u.get_backend_name() == "postgresql":
        # lock_timeout plays SQLite's busy_timeout (FT-10): a writer queued behind a lock
        # for longer gets 55P03 -> OutOfResources instead of hanging a request forever.
        ms = max(1, int(busy_timeout_s * 1000))
        return sa.create_engine(
            u, pool_pre_ping=True, pool_size=10, max_overflow=30, pool_timeout=busy_timeout_s,
            connect_args={"connect_timeout": max(1, round(busy_timeout_s)),
                          "options": f"-c lock_timeout={ms}"})
    memory = u.database in (None, "", ":memory:")
    kwargs: dict = {"connect_args": {"timeout": busy_timeout_s, "check_same_thread": False}}
    if memory:
        kwargs["poolclass"] = StaticPool  # one shared connection, or each sees its own DB
    else:
        kwargs.update(pool_size=8, max_overflow=32, pool_timeout=busy_timeout_s)
    engine = sa.create_engine(u, **kwargs)
    busy_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # pragma: no branch - trivial
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
            if not memory:
                _ensure_wal(cur, busy_timeout_s)
            cur.execute("PRAGMA synchronous = FULL")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.execute("PRAGMA case_sensitive_like = ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        write = conn.get_execution_options().get("pacsd_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _ensure_wal(cur, timeout_s: float) -> None:
    """Switch a new database file to WAL (persistent in the file). SQLite answers
    "database is locked" at once, without its busy handler, when another connection holds
    a lock while the mode changes (several processes or threads opening a fresh index
    together), so that case is retried here until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def sqlstate(err: BaseException) -> str | None:
    """SQLSTATE of a wrapped DBAPI error (psycopg), else None."""
    return getattr(getattr(err, "orig", None), "sqlstate", None)


@contextlib.contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Re-raise database exceptions as pacsd errors; ``action`` is a PHI-free phrase."""
    try:
        yield
    except PacsdError:
        raise
    except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError) as e:
        # SQLite: database is locked/busy, disk I/O error, read-only database, disk full,
        # unable to open. PostgreSQL: connection lost/refused, admin shutdown, disk full,
        # too many connections, a deadlock we gave up retrying. Nothing was acknowledged.
        raise OutOfResources(f"index unavailable while {action}") from e
    except exc.DBAPIError as e:
        if e.connection_invalidated:
            raise OutOfResources(f"index connection lost while {action}") from e
        raise PacsdError(f"index error while {action}") from e
