"""The persistent job queue in the catalogue database (R-B2; table in ``jobs_schema.py``).

Small, synchronous API (the service layer calls it from its worker pool):

* :meth:`JobQueue.enqueue` ``(kind, payload, *, dedupe_key=None, delay_s=0, max_attempts=None)``
  -> job id. With a ``dedupe_key`` that is already queued, nothing is added and the queued
  job's id is returned.
* :meth:`JobQueue.claim` ``(worker, kinds, limit, lease_s)`` -> list of :class:`Job`:
  due ``queued`` jobs and ``running`` jobs whose lease expired, oldest ``run_at`` first;
  each comes back ``running`` under a fresh lease, ``attempts`` + 1. PostgreSQL: ``SELECT
  ... FOR UPDATE SKIP LOCKED`` so several pacsd processes sharing one database each get
  different jobs (a job is claimed exactly once per lease). SQLite: under the catalogue's
  write lock and ``BEGIN IMMEDIATE`` (one writer at a time, across processes too).
* :meth:`complete`, :meth:`fail` (retry with exponential backoff and jitter, or the dead
  letter state after ``max_attempts`` / when not retryable, the last error kept),
  :meth:`extend` (heartbeat of a long job), :meth:`release` (graceful stop: back to the
  queue, the attempt not counted). Each takes the claim's lease token and does nothing
  when the lease was lost to another worker (returns False).
* :meth:`resubmit` (a dead job back to the queue, attempts reset: manual resubmit),
  :meth:`get`, :meth:`list`, :meth:`counts`, :meth:`purge` (old done jobs).

Times are POSIX seconds from the injectable ``clock``; backoff jitter comes from an
injectable ``random.Random`` (tests are deterministic, never sleep).
"""
from __future__ import annotations

import dataclasses
import random
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from pacsd.errors import BadRequest, Conflict, NotFound
from pacsd.index.catalogue import Catalogue
from pacsd.index.engine import translate_errors
from pacsd.index.jobs_schema import jobs

STATES = ("queued", "running", "done", "dead")
#: Longest ``last_error`` kept (reasons are PHI-free phrases; tracebacks are not stored).
ERROR_CHARS = 500


@dataclass(frozen=True)
class Backoff:
    """Delay before retry n (n = attempts made so far, from 1): ``base_s * 2**(n-1)``,
    at most ``max_s``, minus up to ``jitter`` of it at random (so workers that failed
    together do not retry together)."""

    base_s: float = 10.0
    max_s: float = 3600.0
    jitter: float = 0.2

    def delay(self, attempts: int, rng: random.Random) -> float:
        d = min(self.max_s, self.base_s * (2 ** max(0, attempts - 1)))
        return d * (1.0 - self.jitter * rng.random())


@dataclass(frozen=True)
class Job:
    pk: int
    kind: str
    payload: dict[str, Any]
    dedupe_key: str | None
    state: str
    attempts: int
    max_attempts: int
    run_at: float
    lease_until: float | None
    lease_token: str | None
    leased_by: str
    created_at: float
    updated_at: float
    finished_at: float | None
    last_error: str

    def as_json(self) -> dict[str, Any]:
        """For the monitoring API (no lease token)."""
        return {"id": self.pk, "kind": self.kind, "payload": self.payload,
                "dedupe_key": self.dedupe_key, "state": self.state,
                "attempts": self.attempts, "max_attempts": self.max_attempts,
                "run_at": self.run_at, "lease_until": self.lease_until,
                "leased_by": self.leased_by, "created_at": self.created_at,
                "updated_at": self.updated_at, "finished_at": self.finished_at,
                "last_error": self.last_error}


def _job(row: sa.Row) -> Job:
    return Job(pk=row.pk, kind=row.kind, payload=orjson.loads(row.payload),
               dedupe_key=row.dedupe_key, state=row.state, attempts=row.attempts,
               max_attempts=row.max_attempts, run_at=row.run_at,
               lease_until=row.lease_until, lease_token=row.lease_token,
               leased_by=row.leased_by, created_at=row.created_at,
               updated_at=row.updated_at, finished_at=row.finished_at,
               last_error=row.last_error)


class JobQueue:
    """The ``jobs`` table of one catalogue (module docstring)."""

    def __init__(self, catalogue: Catalogue, *, clock: Callable[[], float] = time.time,
                 backoff: Backoff | None = None, max_attempts: int = 10,
                 rng: random.Random | None = None) -> None:
        self.catalogue = catalogue
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.max_attempts = max_attempts
        self.rng = rng or random.Random()

    # --- producing ----------------------------------------------------------------------
    def enqueue(self, kind: str, payload: dict[str, Any] | None = None, *,
                dedupe_key: str | None = None, delay_s: float = 0.0,
                max_attempts: int | None = None, reschedule: bool = False) -> int:
        """Add a job (one transaction); returns its id, or the id of the queued job with
        the same ``dedupe_key`` (``reschedule``: which is then due no later than
        ``delay_s`` from now, e.g. when an operator runs an import again)."""
        return self.catalogue.run_write(
            "queueing a job", lambda conn: self.enqueue_in(
                conn, kind, payload, dedupe_key=dedupe_key, delay_s=delay_s,
                max_attempts=max_attempts, reschedule=reschedule))

    def enqueue_in(self, conn: sa.Connection, kind: str, payload: dict[str, Any] | None
                   = None, *, dedupe_key: str | None = None, delay_s: float = 0.0,
                   max_attempts: int | None = None, reschedule: bool = False) -> int:
        """:meth:`enqueue` inside the caller's write transaction (so a job is queued
        together with the rows it is about, or not at all)."""
        if not kind:
            raise BadRequest("a job needs a kind")
        now = self.clock()
        if dedupe_key is not None:
            pk = conn.scalar(sa.select(jobs.c.pk).where(
                jobs.c.dedupe_key == dedupe_key, jobs.c.state == "queued"))
            if pk is not None:
                if reschedule:
                    due = now + max(0.0, delay_s)
                    conn.execute(sa.update(jobs).where(
                        jobs.c.pk == pk, jobs.c.run_at > due).values(run_at=due,
                                                                    updated_at=now))
                return pk
        return conn.execute(sa.insert(jobs).values(
            kind=kind, payload=orjson.dumps(payload or {}).decode(), dedupe_key=dedupe_key,
            state="queued", attempts=0, max_attempts=max_attempts or self.max_attempts,
            run_at=now + max(0.0, delay_s), created_at=now, updated_at=now, last_error=""
        ).returning(jobs.c.pk)).scalar_one()

    # --- consuming ----------------------------------------------------------------------
    def claim(self, worker: str, kinds: Iterable[str] | None = None, *, limit: int = 1,
              lease_s: float = 60.0) -> list[Job]:
        """Claim up to ``limit`` due jobs (module docstring). A reclaimed job whose
        attempts are used up goes to the dead letter state instead ("lease expired")."""
        kinds = list(kinds) if kinds is not None else None
        if not self._any_due(kinds):
            return []  # a cheap read first: no write lock while the queue is idle
        return self.catalogue.run_write(
            "claiming jobs", lambda conn: self._claim(conn, worker, kinds, limit, lease_s))

    def _due(self, now: float, kinds: list[str] | None):
        cond = sa.or_(sa.and_(jobs.c.state == "queued", jobs.c.run_at <= now),
                      sa.and_(jobs.c.state == "running", jobs.c.lease_until < now))
        return cond if kinds is None else sa.and_(cond, jobs.c.kind.in_(kinds))

    def _any_due(self, kinds: list[str] | None) -> bool:
        if kinds is not None and not kinds:
            return False
        with translate_errors("reading the job queue"), \
                self.catalogue.engine.connect() as conn:
            return conn.scalar(sa.select(jobs.c.pk).where(
                self._due(self.clock(), kinds)).limit(1)) is not None

    def _claim(self, conn: sa.Connection, worker: str, kinds: list[str] | None,
               limit: int, lease_s: float) -> list[Job]:
        if kinds is not None and not kinds:
            return []
        now = self.clock()
        query = sa.select(jobs).where(self._due(now, kinds))
        query = query.order_by(jobs.c.run_at, jobs.c.pk).limit(limit * 2)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        out: list[Job] = []
        for row in conn.execute(query).all():
            if len(out) >= limit:
                break
            if row.state == "running" and row.attempts >= row.max_attempts:
                # Its worker died (or hung) on the last allowed attempt.
                conn.execute(sa.update(jobs).where(jobs.c.pk == row.pk).values(
                    state="dead", lease_until=None, lease_token=None, finished_at=now,
                    updated_at=now, last_error=(row.last_error or
                                                "lease expired on the last attempt")))
                continue
            token = secrets.token_hex(16)
            values = dict(state="running", attempts=row.attempts + 1,
                          lease_until=now + lease_s, lease_token=token, leased_by=worker,
                          updated_at=now)
            conn.execute(sa.update(jobs).where(jobs.c.pk == row.pk).values(**values))
            out.append(dataclasses.replace(_job(row), **values))
        return out

    def _owned(self, job: Job):
        return sa.and_(jobs.c.pk == job.pk, jobs.c.state == "running",
                       jobs.c.lease_token == job.lease_token)

    def complete(self, job: Job) -> bool:
        """Mark a claimed job done; False when its lease was lost meanwhile."""
        def fn(conn: sa.Connection) -> bool:
            now = self.clock()
            return conn.execute(sa.update(jobs).where(self._owned(job)).values(
                state="done", lease_until=None, lease_token=None, finished_at=now,
                updated_at=now, last_error="")).rowcount == 1
        return self.catalogue.run_write("completing a job", fn)

    def extend(self, job: Job, lease_s: float) -> bool:
        """Heartbeat: the lease now ends ``lease_s`` from now; False when it was lost."""
        def fn(conn: sa.Connection) -> bool:
            now = self.clock()
            return conn.execute(sa.update(jobs).where(self._owned(job)).values(
                lease_until=now + lease_s, updated_at=now)).rowcount == 1
        return self.catalogue.run_write("extending a job lease", fn)

    def release(self, job: Job) -> bool:
        """Give a claimed job back unfinished (graceful stop): due at once, the attempt
        not counted."""
        def fn(conn: sa.Connection) -> bool:
            now = self.clock()
            values = dict(state="queued", attempts=max(0, job.attempts - 1), run_at=now,
                          lease_until=None, lease_token=None, updated_at=now)
            return self._requeue(conn, job, values)
        return self.catalogue.run_write("releasing a job", fn)

    def fail(self, job: Job, error: str, *, retry: bool = True,
             delay_s: float | None = None) -> str | None:
        """Record a failed attempt: back to ``queued`` after the backoff delay (or
        ``delay_s``), or ``dead`` when ``retry`` is False or the attempts are used up.
        Returns the new state, None when the lease was lost meanwhile."""
        error = (error or "failed")[:ERROR_CHARS]

        def fn(conn: sa.Connection) -> str | None:
            now = self.clock()
            if not retry or job.attempts >= job.max_attempts:
                n = conn.execute(sa.update(jobs).where(self._owned(job)).values(
                    state="dead", lease_until=None, lease_token=None, finished_at=now,
                    updated_at=now, last_error=error)).rowcount
                return "dead" if n == 1 else None
            delay = self.backoff.delay(job.attempts, self.rng) if delay_s is None else delay_s
            values = dict(state="queued", run_at=now + delay, lease_until=None,
                          lease_token=None, updated_at=now, last_error=error)
            return "queued" if self._requeue(conn, job, values) else None
        return self.catalogue.run_write("failing a job", fn)

    def _requeue(self, conn: sa.Connection, job: Job, values: dict) -> bool:
        """Back to ``queued``; when a job with the same dedupe key was queued meanwhile
        (it does the same work), fold this one into it: the twin keeps the larger
        attempt count and the later run time, this row is removed."""
        if job.dedupe_key is not None:
            twin = conn.execute(sa.select(jobs.c.pk, jobs.c.attempts, jobs.c.run_at).where(
                jobs.c.dedupe_key == job.dedupe_key, jobs.c.state == "queued",
                jobs.c.pk != job.pk)).first()
            if twin is not None:
                n = conn.execute(sa.delete(jobs).where(self._owned(job))).rowcount
                if n == 1:
                    conn.execute(sa.update(jobs).where(jobs.c.pk == twin.pk).values(
                        attempts=max(twin.attempts, values["attempts"]
                                     if "attempts" in values else job.attempts),
                        run_at=max(twin.run_at, values["run_at"]),
                        last_error=values.get("last_error", ""),
                        updated_at=values["updated_at"]))
                return n == 1
        return conn.execute(sa.update(jobs).where(self._owned(job)).values(**values)
                            ).rowcount == 1

    # --- operating ----------------------------------------------------------------------
    def resubmit(self, pk: int) -> Job:
        """Manual resubmit: a ``dead`` job is queued again, due now, attempts reset.
        NotFound for an unknown id; Conflict when the job is not dead, or when a job
        with the same dedupe key is already queued (that one will do the work)."""
        def fn(conn: sa.Connection) -> Job:
            row = conn.execute(sa.select(jobs).where(jobs.c.pk == pk)).first()
            if row is None:
                raise NotFound("no such job")
            if row.state != "dead":
                raise Conflict(f"only a dead job can be resubmitted (this one is "
                               f"{row.state})")
            if row.dedupe_key is not None and conn.scalar(sa.select(jobs.c.pk).where(
                    jobs.c.dedupe_key == row.dedupe_key, jobs.c.state == "queued")):
                raise Conflict("an identical job is already queued")
            now = self.clock()
            conn.execute(sa.update(jobs).where(jobs.c.pk == pk).values(
                state="queued", attempts=0, run_at=now, finished_at=None, updated_at=now))
            return _job(conn.execute(sa.select(jobs).where(jobs.c.pk == pk)).one())
        return self.catalogue.run_write("resubmitting a job", fn)

    def get(self, pk: int) -> Job | None:
        with translate_errors("reading a job"), self.catalogue.engine.connect() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.pk == pk)).first()
        return _job(row) if row is not None else None

    def list(self, *, state: str | None = None, kind: str | None = None,
             kind_prefix: str | None = None, limit: int = 100, after: int | None = None
             ) -> list[Job]:
        """Jobs, newest first (``after``: ids below this one, for paging)."""
        if state is not None and state not in STATES:
            raise BadRequest("state is one of " + ", ".join(STATES))
        q = sa.select(jobs).order_by(jobs.c.pk.desc()).limit(max(1, min(limit, 1000)))
        if state is not None:
            q = q.where(jobs.c.state == state)
        if kind is not None:
            q = q.where(jobs.c.kind == kind)
        if kind_prefix is not None:
            q = q.where(jobs.c.kind.startswith(kind_prefix, autoescape=True))
        if after is not None:
            q = q.where(jobs.c.pk < after)
        with translate_errors("listing jobs"), self.catalogue.engine.connect() as conn:
            return [_job(r) for r in conn.execute(q)]

    def counts(self, kind_prefix: str | None = None) -> dict[str, dict[str, int]]:
        """kind -> state -> number of jobs."""
        q = sa.select(jobs.c.kind, jobs.c.state, sa.func.count()).group_by(
            jobs.c.kind, jobs.c.state)
        if kind_prefix is not None:
            q = q.where(jobs.c.kind.startswith(kind_prefix, autoescape=True))
        out: dict[str, dict[str, int]] = {}
        with translate_errors("counting jobs"), self.catalogue.engine.connect() as conn:
            for kind, state, n in conn.execute(q):
                out.setdefault(kind, {})[state] = n
        return out

    def next_due(self) -> float | None:
        """The earliest ``run_at`` of a queued job (the runner sleeps until then)."""
        with translate_errors("reading the job queue"), \
                self.catalogue.engine.connect() as conn:
            return conn.scalar(sa.select(sa.func.min(jobs.c.run_at)).where(
                jobs.c.state == "queued"))

    def purge(self, older_than_s: float) -> int:
        """Delete ``done`` jobs finished more than ``older_than_s`` ago; returns how many
        (dead jobs are kept until resubmitted or removed by hand)."""
        def fn(conn: sa.Connection) -> int:
            cutoff = self.clock() - older_than_s
            return conn.execute(sa.delete(jobs).where(
                jobs.c.state == "done", jobs.c.finished_at < cutoff)).rowcount
        return self.catalogue.run_write("purging old jobs", fn)
