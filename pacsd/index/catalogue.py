"""The catalogue: pacsd's index of stored instances (SQLite embedded default, PostgreSQL).

:class:`Catalogue` is synchronous; the service layer calls it from a thread pool. Every
write is one transaction (``writes.py``): an instance is either fully indexed with its
counters updated, or not at all. Writers are serialised on SQLite by an in-process lock
plus ``BEGIN IMMEDIATE`` (other processes wait up to ``busy_timeout_s``); on PostgreSQL by
the study row lock, and a transaction that hits a deadlock, a serialisation failure or a
concurrent-delete race is simply run again (a few times, then 503).

Group commit (SQLite, the hot ingest path): instances stored by concurrent threads are
committed together. Each caller queues its write and takes the writer lock; whoever gets
it first (the leader) runs every queued write in ONE transaction, commits once (one WAL
fsync for the group) and wakes the others, who find their write done. When one write of
the group is refused, the transaction is rolled back and the group run again with each
write inside its own ``SAVEPOINT`` (a refused instance rolls back only its own rows). Nobody is answered
before the commit that holds their row, so "stored only after the index row is durable"
still holds, while N concurrent stores cost one commit instead of N.

Any database failure surfaces as :class:`pacsd.errors.OutOfResources` (busy, locked,
read-only, disk full, server gone: FT-10) or :class:`pacsd.errors.PacsdError`; the
caller acknowledges nothing in that case.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson
import sqlalchemy as sa

from pacsd import failpoints
from pacsd.errors import NotFound, OutOfResources, WriteDenied
from pacsd.index import migrations, qido_dbapi, qido_sql, writes
from pacsd.index.access import scope_clause
from pacsd.index.engine import RETRYABLE_SQLSTATES, create_engine, sqlstate, translate_errors
from pacsd.index.qido import QidoQuery, QidoResult
from pacsd.index.schema import instances, patients, series, studies
from pacsd.model import FrameIndex, InstanceRow, ParsedInstance, StoreOutcome

#: PostgreSQL transaction attempts before giving up with 503.
MAX_ATTEMPTS = 6
#: Rows fetched per round trip when streaming instance lists.
STREAM_BATCH = 500
#: Most writes one group commit takes (bounds the leader's extra latency).
GROUP_MAX = 64


#: Sleeps between attempts at another process's writer lock: from the first to the
#: longest (see :class:`_ProcessWriterLock`).
PROCESS_LOCK_POLL_S = (0.00005, 0.0005)


class _ProcessWriterLock:
    """The SQLite writer's turn among the processes sharing one index file (``pacsd serve
    --workers N``): an exclusive ``flock`` on ``<index>.writer``, taken (after this
    process's writer lock) before ``BEGIN IMMEDIATE`` and given back after the commit.

    Without it a worker that finds the other one writing waits in SQLite's busy
    handler, which sleeps 1, 2, 5, 10, 15, 20, 25, 50 and 100 ms between attempts
    whatever the holder does: measured during a two-worker STOW at c=16 (issue 6,
    session 6), a quarter of those sleeps were 15-100 ms for transactions of ~1-2 ms.
    Here the waiter polls the lock every 50-500 us until ``busy_timeout_s`` (then 503,
    FT-10, as before). The kernel drops the lock of a process that dies. It only
    orders pacsd's own writers: SQLite's lock still guards the database (another
    program, or a process that cannot open the lock file, simply goes without)."""

    def __init__(self, db_path: str) -> None:
        self.path = db_path + ".writer"
        self._fd: int | None = None
        self._pid = 0

    def _open(self) -> int | None:
        if self._fd is not None and self._pid == os.getpid():
            return self._fd
        # A descriptor inherited over fork shares its lock with the parent: reopen.
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            self._fd = None
        self._pid = os.getpid()
        return self._fd

    def acquire(self, timeout_s: float) -> bool:
        fd = self._open()
        if fd is None:
            return True
        deadline = time.monotonic() + timeout_s
        delay, longest = PROCESS_LOCK_POLL_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            except OSError:
                return True  # no flock here: SQLite's own locking alone
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, longest)

    def release(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError:
                pass

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


class _Refused(Exception):
    """Internal: the only write of a group was refused; roll its transaction back."""


class _Queued:
    """One write waiting for a group commit (module docstring)."""

    __slots__ = ("fn", "done", "result", "error", "raw")

    def __init__(self, fn: Callable[[sa.Connection], Any]) -> None:
        self.fn = fn
        #: Set (under Catalogue._done) once a leader committed or refused it; a plain
        #: flag and one condition per catalogue instead of an Event per write (an
        #: Event is a Condition and a lock: ~3 % of a tiny instance's ingest CPU).
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        #: ``fn`` needs no SQLAlchemy connection (called as ``fn(None, sql)``): it can
        #: run on the writer's own DBAPI connection (:class:`_RawWriter`).
        self.raw = getattr(fn, "pacsd_raw", False)


class _RawWriter:
    """The SQLite writer's own DBAPI connection, kept out of the pool for the life of
    the catalogue, and its transactions run on it directly (``BEGIN IMMEDIATE`` /
    ``COMMIT`` / ``ROLLBACK`` on its cursor). A group commit made through SQLAlchemy
    paid a pool checkout and checkin (with its reset), a ``Connection``, the ``begin``
    event's statement and the transaction objects: ~0.14 ms of the ~0.8 ms of CPU of a
    tiny instance stored alone (issue 6, session 8 profile). Only the writer lock's
    holder uses it; a connection that failed is dropped and the next group opens a new
    one; a process forked with it open opens its own (the parent's is never touched)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._fairy: Any = None
        self._pid = 0
        self._inherited: list = []  # a parent's connection, kept alive and untouched

    def connection(self) -> Any:
        if self._fairy is None or self._pid != os.getpid():
            if self._fairy is not None:
                self._inherited.append(self._fairy)
            self._fairy = self._engine.raw_connection()
            self._pid = os.getpid()
        return self._fairy.dbapi_connection

    def drop(self) -> None:
        """Close a connection that failed (BEGIN, COMMIT or ROLLBACK raised)."""
        fairy, self._fairy = self._fairy, None
        if fairy is not None and self._pid == os.getpid():
            try:
                fairy.invalidate()
            except Exception:  # noqa: BLE001 - it is being thrown away
                pass

    def close(self) -> None:
        fairy, self._fairy = self._fairy, None
        if fairy is not None and self._pid == os.getpid():
            try:
                fairy.close()
            except Exception:  # noqa: BLE001 - closing at shutdown
                pass


class _RawTransaction:
    """``with _RawTransaction(writer, dialect) as sql:`` one write transaction on the
    writer's DBAPI connection: committed when the block ends normally, rolled back when
    it raises (the exception propagates); driver errors are SQLAlchemy's wrappers, as
    :class:`writes.Sql` raises them, so ``translate_errors`` answers as before."""

    __slots__ = ("writer", "dialect", "sql", "dbapi")

    def __init__(self, writer: _RawWriter, dialect: sa.Dialect) -> None:
        self.writer = writer
        self.dialect = dialect

    def __enter__(self) -> writes.Sql:
        error = self.dialect.loaded_dbapi.Error
        try:
            self.dbapi = self.writer.connection()
            self.sql = writes.Sql.on_dbapi(self.dbapi, self.dialect)
        except error as e:  # e.g. closed behind our back: the next group opens anew
            self.writer.drop()
            raise sa.exc.DBAPIError.instance(
                "BEGIN IMMEDIATE", {}, e, error, hide_parameters=True,
                connection_invalidated=True) from e
        try:
            self.sql.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.sql.close()
            self._abort()
            raise
        return self.sql

    def _abort(self) -> None:
        try:
            if self.dbapi.in_transaction:
                self.sql.execute("ROLLBACK")
        except BaseException:  # noqa: BLE001 - the original error is what counts
            self.writer.drop()

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                try:
                    self.sql.execute("COMMIT")
                except BaseException:
                    self._abort()
                    raise
            else:
                self._abort()
        finally:
            self.sql.close()
        return False

_ROW_COLS = (studies.c.study_instance_uid, series.c.series_instance_uid,
             instances.c.sop_instance_uid, instances.c.sop_class_uid,
             instances.c.transfer_syntax_uid, instances.c.sha256, instances.c.size,
             instances.c.frames, instances.c.bulk, instances.c.instance_number,
             instances.c.digest)
_HIERARCHY = instances.join(series, instances.c.series_fk == series.c.pk).join(
    studies, instances.c.study_fk == studies.c.pk)


#: The unscoped instance lookup of WADO-RS frames/rendered/bulk data (study, series and
#: SOP Instance UID given), built once: building and cache-keying the statement per
#: request cost more than the SQL (issue 6 frames profile). Scoped lookups build theirs.
_GET_INSTANCE = (sa.select(*_ROW_COLS).select_from(_HIERARCHY).where(
    studies.c.study_instance_uid == sa.bindparam("b_study"),
    series.c.series_instance_uid == sa.bindparam("b_series"),
    instances.c.sop_instance_uid == sa.bindparam("b_sop")))


#: What a whole-object answer (WADO-RS study/series, C-GET, C-MOVE) needs of each
#: instance: no frame index or bulk data offsets, whose JSON parsing was a fifth of the
#: GIL time of a 100-instance study answer at c=8 (issue 6, session 6 profile).
_FILE_COLS = (studies.c.study_instance_uid, series.c.series_instance_uid,
              instances.c.sop_instance_uid, instances.c.sop_class_uid,
              instances.c.transfer_syntax_uid, instances.c.sha256, instances.c.size,
              instances.c.instance_number, instances.c.digest)


#: The unscoped series metadata ETag (the first read of every series metadata request).
_SERIES_ETAG = (sa.select(sa.literal("s"), series.c.pk, series.c.revision,
                          series.c.num_instances, series.c.updated_at)
                .select_from(series.join(studies, series.c.study_fk == studies.c.pk))
                .where(studies.c.study_instance_uid == sa.bindparam("b_study"),
                       series.c.series_instance_uid == sa.bindparam("b_series")))


def _instance_row(row: sa.Row) -> InstanceRow:
    return InstanceRow(
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        sop_instance_uid=row.sop_instance_uid, sop_class_uid=row.sop_class_uid,
        transfer_syntax_uid=row.transfer_syntax_uid, sha256=row.sha256, size=row.size,
        frames=FrameIndex.from_json(row.frames) if row.frames is not None else None,
        bulk={k: (int(v[0]), int(v[1])) for k, v in orjson.loads(row.bulk).items()},
        instance_number=row.instance_number, digest=row.digest,
    )


def _scope(study_uid: str, series_uid: str | None, sop_uid: str | None,
           access: Iterable | None = None) -> list[sa.ColumnElement]:
    """SEC-3: each given parent must match; a child of another parent is not found.
    ``access``: the actor's data scope (``access.py``, R-A12): a study outside it is
    not found either, exactly like a missing one."""
    cond = [studies.c.study_instance_uid == study_uid]
    extra = scope_clause(access)
    if extra is not None:
        cond.append(extra)
    if series_uid is not None:
        cond.append(series.c.series_instance_uid == series_uid)
    if sop_uid is not None:
        cond.append(instances.c.sop_instance_uid == sop_uid)
    return cond


def _with_fields(p: ParsedInstance, changes: dict) -> ParsedInstance:
    """``dataclasses.replace(p, **changes)`` for fields without validation: a shallow copy
    of the frozen instance's attributes (``replace`` re-ran ``__init__`` over its 25
    fields: ~3 % of a tiny instance's ingest CPU, issue 6)."""
    if type(p) is not ParsedInstance:
        return dataclasses.replace(p, **changes)
    q = object.__new__(ParsedInstance)
    q.__dict__.update(p.__dict__)
    q.__dict__.update(changes)
    return q


class Catalogue:
    """The index. ``url``: ``sqlite:////abs/path/index.db`` or
    ``postgresql[+psycopg]://user@host:port/db``."""

    def __init__(self, url: str, *, busy_timeout_s: float = 10.0) -> None:
        self._busy_timeout_s = busy_timeout_s
        self._engine = create_engine(url, busy_timeout_s=busy_timeout_s)
        self.dialect_name: str = self._engine.dialect.name
        # SQLite allows one writer; queueing writers here (not in SQLite's busy loop)
        # keeps them fair and lets the timeout produce a clean 503 (FT-10).
        self._write_lock = threading.Lock() if self.dialect_name == "sqlite" else None
        database = self._engine.url.database
        self._process_lock = (_ProcessWriterLock(os.path.abspath(database))
                              if self._write_lock is not None and database
                              and database != ":memory:" else None)
        # The group commit's own connection (file SQLite only: an in-memory database
        # is one connection shared through the pool).
        self._raw_writer = (_RawWriter(self._engine) if self._process_lock is not None
                            else None)
        self._queue: list[_Queued] = []
        self._queue_lock = threading.Lock()
        self._done = threading.Condition(threading.Lock())  # _Queued.done turned True
        #: Group commits run and writes they carried (statistics; tests use them).
        self.group_stats = {"groups": 0, "writes": 0}
        #: ParsedInstance -> institution code of a new study (R-A12); set by the service
        #: layer from ``[security] institution_attribute`` (services/scoping.py).
        self.institution_of: Callable[[ParsedInstance], str] | None = None
        #: ParsedInstance -> the study's worklist visit columns (R-D2); set by the service
        #: layer from [worklist] (services/visit.py).
        self.visit_of: Callable[[ParsedInstance], dict] | None = None

    @property
    def engine(self) -> sa.Engine:
        """For other index modules (versions, change feed) and tests."""
        return self._engine

    def migrate(self) -> int:
        """Create or upgrade the schema (idempotent, safe for concurrent starters)."""
        with translate_errors("migrating the schema"):
            return migrations.migrate(self._engine)

    def close(self) -> None:
        if self._raw_writer is not None:
            self._raw_writer.close()
        self._engine.dispose()
        if self._process_lock is not None:
            self._process_lock.close()

    # --- writes ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write_lock_held(self) -> Iterator[None]:
        if self._write_lock is None:
            yield
            return
        if not self._write_lock.acquire(timeout=self._busy_timeout_s):
            raise OutOfResources("index busy")
        try:
            with self._process_turn():
                yield
        finally:
            self._write_lock.release()

    @contextlib.contextmanager
    def _process_turn(self) -> Iterator[None]:
        """This process's turn at the SQLite writer (:class:`_ProcessWriterLock`); the
        caller holds ``_write_lock``."""
        lock = self._process_lock
        if lock is None:
            yield
            return
        if not lock.acquire(self._busy_timeout_s):
            raise OutOfResources("index busy")
        try:
            yield
        finally:
            lock.release()

    def _write(self, action: str, fn):
        """Run ``fn(conn)`` in one write transaction, retrying races (module docstring)."""
        with translate_errors(action), self._write_lock_held():
            return self._transaction(action, fn)

    def _transaction(self, action: str, fn):
        """``fn(conn)`` in one write transaction, retried on races; lock already held."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                with self._engine.connect() as conn:
                    conn = conn.execution_options(pacsd_write=True)
                    with conn.begin():
                        return fn(conn)
            except writes.Retry:
                pass
            except sa.exc.DBAPIError as e:
                if sqlstate(e) not in RETRYABLE_SQLSTATES or attempt == MAX_ATTEMPTS - 1:
                    raise
            time.sleep(0.005 * (2 ** attempt))
        raise OutOfResources(f"index contention while {action}")

    def _write_grouped(self, action: str, fn: Callable[[sa.Connection], Any]) -> Any:
        """Like :meth:`_write`, committed together with concurrent grouped writes on SQLite
        (module docstring). ``fn`` must be safe to run in a savepoint of a shared
        transaction: raise to refuse, never commit or roll back itself. It is called as
        ``fn(conn, sql)`` in a group (``sql``: the group's :class:`writes.Sql` on
        ``conn``, one cursor for the whole group) and as ``fn(conn)`` on its own."""
        if self._write_lock is None:
            return self._write(action, fn)  # PostgreSQL: row locks; the server groups commits
        job = _Queued(fn)
        with self._queue_lock:
            self._queue.append(job)
        with translate_errors(action):
            if not self._write_lock.acquire(timeout=self._busy_timeout_s):
                with self._queue_lock:
                    if job in self._queue:  # no leader took it: give up cleanly (FT-10)
                        self._queue.remove(job)
                        raise OutOfResources("index busy")
                self._wait_done([job])  # a leader is committing it right now
            else:
                try:
                    while not job.done:
                        self._commit_group()
                finally:
                    self._write_lock.release()
            if job.error is not None:
                raise job.error
            return job.result

    def _write_grouped_many(self, action: str, fns: list[Callable]) -> list[_Queued]:
        """:meth:`_write_grouped` for several writes queued at once (SQLite only): the
        jobs, each done with its result or its error (translated like a single write's)."""
        jobs = [_Queued(fn) for fn in fns]
        with self._queue_lock:
            self._queue.extend(jobs)
        if not self._write_lock.acquire(timeout=self._busy_timeout_s):
            with self._queue_lock:
                for job in jobs:
                    if job in self._queue:  # no leader took it: give up cleanly (FT-10)
                        self._queue.remove(job)
                        job.error = OutOfResources("index busy")
                        job.done = True
        else:
            try:
                while not all(job.done for job in jobs):
                    self._commit_group()
            finally:
                self._write_lock.release()
        self._wait_done(jobs)  # a leader may be committing them right now
        for job in jobs:
            if job.error is not None:
                try:
                    with translate_errors(action):
                        raise job.error
                except Exception as e:  # noqa: BLE001 - answered per job
                    job.error = e
        return jobs

    def _set_done(self, batch: list[_Queued]) -> None:
        with self._done:
            for job in batch:
                job.done = True
            self._done.notify_all()

    def _wait_done(self, jobs: list[_Queued]) -> None:
        with self._done:
            while not all(job.done for job in jobs):
                self._done.wait()

    def _take_batch(self) -> list[_Queued]:
        with self._queue_lock:
            batch = self._queue[:GROUP_MAX]
            del self._queue[:GROUP_MAX]
        return batch

    def _commit_group(self) -> None:
        """Commit the queued writes (at most GROUP_MAX) in one transaction (module
        docstring); always sets every job it took done (with its result or its error).
        Caller holds the writer lock. The batch is taken once this process has its
        turn at the SQLite writer: writes queued while another worker process was
        committing join this group instead of waiting for the next (issue 6)."""
        retry: list[_Queued] = []
        lock = self._process_lock  # _process_turn, without a generator per group
        if lock is not None and not lock.acquire(self._busy_timeout_s):
            # another process kept the writer: nothing stored
            e = OutOfResources("index busy")
            batch = self._take_batch()
            for job in batch:
                job.result, job.error = None, e
            self._set_done(batch)
            return
        try:
            batch = self._take_batch()
            self._run_group(batch, retry)
        finally:
            if lock is not None:
                lock.release()
        self.group_stats["groups"] += 1
        self.group_stats["writes"] += len(batch)
        self._set_done(batch)

    def _run_group(self, batch: list[_Queued], retry: list[_Queued]) -> None:
        # A group of one needs no savepoint: a refusal rolls the whole transaction back
        # (two statements less per instance when writers come one at a time). A larger
        # group is first tried the same way, all or nothing; only when one of its writes
        # is refused does it run again, each write in its own savepoint (refusals are
        # rare: two statements less per instance in the usual group, issue 6).
        if len(batch) > 1 and self._run_group_whole(batch):
            return
        single = len(batch) == 1
        try:
            if self._raw_writer is not None and all(job.raw for job in batch):
                with _RawTransaction(self._raw_writer, self._engine.dialect) as sql:
                    self._run_jobs(batch, retry, None, sql, single)
            else:
                with self._engine.connect() as conn:
                    conn = conn.execution_options(pacsd_write=True)
                    with conn.begin():
                        sql = writes.Sql(conn)  # savepoints on the driver cursor
                        try:
                            self._run_jobs(batch, retry, conn, sql, single)
                        finally:
                            sql.close()
        except _Refused:
            pass  # the one job's error (or retry) is recorded; nothing was committed
        except BaseException as e:  # BEGIN or COMMIT failed: nothing of the group is stored
            for job in batch:
                job.result, job.error = None, e
        for job in retry:  # not expected on SQLite (one writer); run it on its own
            try:
                job.result = self._transaction("storing", job.fn)
            except BaseException as e:
                job.error = e

    @staticmethod
    def _run_jobs(batch: list[_Queued], retry: list[_Queued], conn: sa.Connection | None,
                  sql: writes.Sql, single: bool) -> None:
        """The jobs of :meth:`_run_group` in its transaction, each in its own savepoint
        unless it is the only one (then a refusal raises _Refused)."""
        for job in batch:
            if not single:
                sql.execute("SAVEPOINT pacsd_group")
            try:
                job.result = job.fn(conn, sql)
            except writes.Retry:
                retry.append(job)
            except Exception as e:  # refused: only this job's rows go
                job.error = e
            else:
                if not single:
                    sql.execute("RELEASE pacsd_group")
                continue
            if single:
                raise _Refused()  # roll the transaction back
            sql.execute("ROLLBACK TO pacsd_group")
            sql.execute("RELEASE pacsd_group")

    def _run_group_whole(self, batch: list[_Queued]) -> bool:
        """``batch`` in one transaction without savepoints. False, with nothing
        committed and no job's result kept, when a write was refused (or asked to be
        retried): the caller then runs the group with savepoints."""
        try:
            if self._raw_writer is not None and all(job.raw for job in batch):
                with _RawTransaction(self._raw_writer, self._engine.dialect) as sql:
                    self._run_whole(batch, None, sql)
            else:
                with self._engine.connect() as conn:
                    conn = conn.execution_options(pacsd_write=True)
                    with conn.begin():
                        sql = writes.Sql(conn)
                        try:
                            self._run_whole(batch, conn, sql)
                        finally:
                            sql.close()
        except _Refused:
            for job in batch:
                job.result = None
            return False
        except BaseException as e:  # BEGIN or COMMIT failed: nothing of the group is stored
            for job in batch:
                job.result, job.error = None, e
        return True

    @staticmethod
    def _run_whole(batch: list[_Queued], conn: sa.Connection | None, sql: writes.Sql
                   ) -> None:
        for job in batch:
            try:
                job.result = job.fn(conn, sql)
            except Exception:  # refused, or writes.Retry
                raise _Refused() from None  # roll the transaction back

    def run_write(self, action: str, fn):
        """``fn(conn)`` in one write transaction of this catalogue (the writer lock, retries
        and error translation of every catalogue write), for the other index modules
        (``accounts.py``, ``audit_log.py``). ``action`` is a PHI-free phrase."""
        return self._write(action, fn)

    def store_instance(self, p: ParsedInstance, *, sha256: str, size: int,
                       scope: Iterable | None = None, institution: str | None = None,
                       digest: str | None = None) -> StoreOutcome:
        """Index one instance in one transaction (BI-25 idempotent, BI-26 DuplicateInstance,
        BI-27 HierarchyConflict; see ``writes.store_instance``). With a write ``scope``
        (R-A12) the study, as it stands after this write (an existing study's recorded
        institution and labels; a new study's computed institution and any labels set in
        advance), must satisfy it, checked in the same transaction; otherwise WriteDenied
        and nothing of the instance is kept (same answer whether the study existed).
        ``institution``: the code ``institution_of(p)`` gives, when the caller has it
        already (ingest computes it once for encryption at rest). ``digest``: the fast
        read-time digest of the object, checked by retrieval instead of its SHA-256."""
        outcome = self._write_grouped("storing an instance", self._store_job(
            p, sha256, size, scope, institution, digest))
        failpoints.hit("index.after_commit")
        return outcome

    def store_instances(self, items: list[tuple[ParsedInstance, str, int, str | None,
                                                 str | None]],
                        scope: Iterable | None = None) -> list[StoreOutcome | Exception]:
        """:meth:`store_instance` for several instances at once, ``items`` as
        ``(parsed, sha256, size, institution, digest)``: each instance is accepted or
        refused on its own (a refusal is its exception in the answer, at its place), and
        on SQLite they are queued together so they commit in one group (one WAL commit
        for a STOW-RS request's parts, issue 6). Database failures are answered per
        instance too (OutOfResources)."""
        jobs = [self._store_job(p, sha, size, scope, institution, digest)
                for p, sha, size, institution, digest in items]
        out: list[StoreOutcome | Exception] = []
        if self._write_lock is None:  # PostgreSQL: one transaction each (row locks)
            for fn in jobs:
                try:
                    out.append(self._write_grouped("storing an instance", fn))
                except Exception as e:  # noqa: BLE001 - answered per instance
                    out.append(e)
        else:
            for job in self._write_grouped_many("storing an instance", jobs):
                out.append(job.error if job.error is not None else job.result)
        failpoints.hit("index.after_commit")
        return out

    def _store_job(self, p: ParsedInstance, sha256: str, size: int,
                   scope: Iterable | None, institution: str | None, digest: str | None):
        """The grouped write of one instance (see :meth:`store_instance`)."""
        derived: dict = {}
        if institution and not p.institution:
            derived["institution"] = institution
        elif self.institution_of is not None and not p.institution:
            derived["institution"] = self.institution_of(p)
        if self.visit_of is not None and p.worklist is None:
            derived["worklist"] = self.visit_of(p)
        if derived:
            p = _with_fields(p, derived)
        extra = scope_clause(scope)

        def store(conn: sa.Connection, sql: writes.Sql | None = None) -> StoreOutcome:
            outcome = writes.store_instance(conn, p, sha256, size, sql, digest=digest)
            if extra is not None and conn.execute(sa.select(studies.c.pk).where(
                    studies.c.study_instance_uid == p.study_instance_uid, extra)
                    ).first() is None:
                denied = WriteDenied("the study is outside the caller's data scope")
                denied.study_instance_uid = p.study_instance_uid
                raise denied  # the transaction (or savepoint) rolls back
            failpoints.hit("index.before_commit")
            return outcome
        # Unscoped, the write needs nothing of SQLAlchemy's (the hot path): it may run
        # on the group commit's own connection (_RawWriter).
        store.pacsd_raw = extra is None  # type: ignore[attr-defined]
        return store

    def delete(self, study_uid: str, series_uid: str | None = None,
               sop_uid: str | None = None, *, scope: Iterable | None = None) -> list[str]:
        """Remove a study, series or instance (and parents left empty); returns the sha256
        of every removed instance; NotFound when nothing matched, or when the study is
        outside ``scope`` (checked in the same transaction, R-A12)."""
        extra = scope_clause(scope)

        def tx(conn: sa.Connection) -> list[str]:
            if extra is not None and conn.execute(sa.select(studies.c.pk).where(
                    studies.c.study_instance_uid == study_uid, extra)).first() is None:
                raise NotFound("no such study, series or instance")
            return writes.delete(conn, study_uid, series_uid, sop_uid)
        return self._write("deleting", tx)

    # --- reads -------------------------------------------------------------------------

    def get_instance(self, study_uid: str, series_uid: str | None, sop_uid: str, *,
                     scope: Iterable | None = None) -> InstanceRow | None:
        """One instance, only if it belongs to the given study (and series, if given)."""
        with translate_errors("reading an instance"), self._engine.connect() as conn:
            if series_uid is not None and scope_clause(scope) is None:
                row = conn.execute(_GET_INSTANCE, {"b_study": study_uid,
                                                   "b_series": series_uid,
                                                   "b_sop": sop_uid}).first()
            else:
                row = conn.execute(sa.select(*_ROW_COLS).select_from(_HIERARCHY).where(
                    *_scope(study_uid, series_uid, sop_uid, scope))).first()
        return _instance_row(row) if row is not None else None

    def _stream(self, cols, study_uid: str, series_uid: str | None, sop_uid: str | None,
                scope: Iterable | None = None) -> Iterator[sa.Row]:
        stmt = (sa.select(*cols).select_from(_HIERARCHY)
                .where(*_scope(study_uid, series_uid, sop_uid, scope))
                .order_by(series.c.series_number.asc().nulls_last(), series.c.pk,
                          instances.c.instance_number.asc().nulls_last(), instances.c.pk))
        with translate_errors("listing instances"), self._engine.connect() as conn:
            # PostgreSQL: server-side cursor; SQLite steps its cursor lazily anyway.
            result = conn.execution_options(stream_results=True,
                                            yield_per=STREAM_BATCH).execute(stmt)
            yield from result

    def iter_instances(self, study_uid: str, series_uid: str | None = None,
                       sop_uid: str | None = None, *, scope: Iterable | None = None
                       ) -> Iterator[InstanceRow]:
        """Instances ordered by SeriesNumber, InstanceNumber; streamed, never fetched whole.
        Close the iterator (or exhaust it) to release its connection."""
        for row in self._stream(_ROW_COLS, study_uid, series_uid, sop_uid, scope):
            yield _instance_row(row)

    def iter_instance_files(self, study_uid: str, series_uid: str | None = None,
                            sop_uid: str | None = None, *, scope: Iterable | None = None
                            ) -> Iterator[InstanceRow]:
        """As :meth:`iter_instances` (same rows, same order), for answers that send whole
        stored objects: ``frames`` is None and ``bulk`` empty whatever the instance holds
        (not read), so these rows must not serve frames, bulk data or renders."""
        row = InstanceRow
        for (study, ser, sop, cls, ts, sha, size, number, digest) in self._stream(
                _FILE_COLS, study_uid, series_uid, sop_uid, scope):
            yield row(study, ser, sop, cls, ts, sha, size, None, {}, number, digest)

    def iter_metadata(self, study_uid: str, series_uid: str | None = None,
                      sop_uid: str | None = None, *, scope: Iterable | None = None
                      ) -> Iterator[bytes]:
        """Each instance's DICOM JSON metadata object (bytes), same order as above."""
        for row in self._stream((instances.c.metadata,), study_uid, series_uid, sop_uid,
                                scope):
            yield zlib.decompress(row.metadata)

    def metadata_etag(self, study_uid: str, series_uid: str | None = None,
                      sop_uid: str | None = None, *, scope: Iterable | None = None
                      ) -> str | None:
        """An opaque token (unquoted; the web layer quotes it) that changes whenever the
        metadata of the study/series/instance changes; None when nothing matches."""
        params: dict[str, str] = {}
        if sop_uid is not None:
            stmt = (sa.select(sa.literal("i"), instances.c.pk, instances.c.sha256)
                    .select_from(_HIERARCHY)
                    .where(*_scope(study_uid, series_uid, sop_uid, scope)))
        elif series_uid is not None and scope_clause(scope) is None:
            stmt = _SERIES_ETAG
            params = {"b_study": study_uid, "b_series": series_uid}
        elif series_uid is not None:
            stmt = (sa.select(sa.literal("s"), series.c.pk, series.c.revision,
                              series.c.num_instances, series.c.updated_at)
                    .select_from(series.join(studies, series.c.study_fk == studies.c.pk))
                    .where(*_scope(study_uid, series_uid, None, scope)))
        else:
            stmt = sa.select(sa.literal("S"), studies.c.pk, studies.c.revision,
                             studies.c.num_instances, studies.c.updated_at).where(
                *_scope(study_uid, None, None, scope))
        with translate_errors("reading metadata"), self._engine.connect() as conn:
            row = conn.execute(stmt, params).first()
        if row is None:
            return None
        return hashlib.sha256(repr(tuple(row)).encode()).hexdigest()[:32]

    def counts(self) -> dict[str, int]:
        """Totals of patients, studies, series and instances (health/statistics)."""
        tables = {"patients": patients, "studies": studies, "series": series,
                  "instances": instances}
        with translate_errors("counting"), self._engine.connect() as conn:
            return {name: conn.scalar(sa.select(sa.func.count()).select_from(t))
                    for name, t in tables.items()}

    def search(self, q: QidoQuery, extra_filter: sa.ColumnElement | None = None, *,
               scope: Iterable | None = None, raw: bool = False) -> QidoResult:
        """Run a QIDO-RS query (R-A1). ``scope``: the actor's data scope (R-A12,
        ``access.py``) and ``extra_filter`` a clause on ``studies``, both AND-ed in.
        ``raw``: items as spliced JSON bytes where possible (``qido_sql.raw_items``)."""
        clause = scope_clause(scope)
        if extra_filter is not None:
            clause = extra_filter if clause is None else sa.and_(clause, extra_filter)
        with translate_errors("searching"):
            if clause is None:  # statements cached per shape: run on the DBAPI cursor
                return qido_dbapi.search(self._engine, q, raw=raw)
            with self._engine.connect() as conn:
                return qido_sql.run(conn, q, clause, raw=raw)

    # --- storage verification (scrub, R-A6, reliability-matrix §7 item 4) ----------------

    def iter_blobs(self, after_pk: int = 0, batch: int = STREAM_BATCH, *,
                   missing_digest: bool = False) -> Iterator[tuple[int, str, int]]:
        """(pk, sha256, size) of every instance in pk order, starting after ``after_pk``
        (``missing_digest``: only those without a fast read-time digest, migration 10).

        Keyset pagination: each batch is its own short query (``pk > last ORDER BY pk
        LIMIT batch``), so a scrub that runs for hours holds no cursor, transaction or
        snapshot open, and a scrub interrupted after pk N resumes with ``after_pk=N``
        (FT-13). Rows added while it runs are visited when their pk is reached.
        """
        last = after_pk
        stmt = (sa.select(instances.c.pk, instances.c.sha256, instances.c.size)
                .where(instances.c.pk > sa.bindparam("last"))
                .order_by(instances.c.pk).limit(batch))
        if missing_digest:
            stmt = stmt.where(instances.c.digest.is_(None))
        while True:
            with translate_errors("listing stored objects"), self._engine.connect() as conn:
                rows = conn.execute(stmt, {"last": last}).all()
            for row in rows:
                yield int(row.pk), row.sha256, int(row.size)
            if len(rows) < batch:
                return
            last = rows[-1].pk

    def set_digest(self, sha256: str, digest: str) -> int:
        """Record the fast read-time digest of the object ``sha256`` on the instance rows
        that have none (the scrubber's backfill, R-H1); returns the rows changed."""
        def fn(conn: sa.Connection) -> int:
            return conn.execute(sa.update(instances).where(
                instances.c.sha256 == sha256, instances.c.digest.is_(None)).values(
                digest=digest)).rowcount
        return self._write("recording an object digest", fn)

    def known_sha256(self, shas: list[str] | set[str]) -> set[str]:
        """The subset of ``shas`` that some instance row refers to (scrub orphan pass,
        FT-9). Uses ix_instances_sha256; call with batches of a few hundred."""
        shas = list(shas)
        if not shas:
            return set()
        from pacsd.index.lifecycle_schema import instance_versions  # kept versions, R-A8
        with translate_errors("looking up stored objects"), self._engine.connect() as conn:
            return set(conn.scalars(sa.select(instances.c.sha256).distinct()
                                    .where(instances.c.sha256.in_(shas)))) | set(
                conn.scalars(sa.select(instance_versions.c.sha256).distinct()
                             .where(instance_versions.c.sha256.in_(shas))))
