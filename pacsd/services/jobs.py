"""The job runner: handlers per job kind, run from the persistent queue (R-B2; docs/jobs.md).

:class:`JobService` is the API the rest of pacsd uses:

* ``register(kind, handler, *, max_attempts=None)`` — ``handler(job)`` is either a plain
  function (run on the archive's worker pool) or a coroutine function (run on the event
  loop). Returning means done; raising :class:`JobFailed` (``retry=False`` for a
  permanent failure) or any other exception means a failed attempt (retried with
  backoff until ``max_attempts``, then the dead letter state).
* ``await enqueue(kind, payload, dedupe_key=None, delay_s=0)`` / ``enqueue_sync(...)``
  (from worker threads, e.g. an ``instance_stored`` hook) — add a job; the runner of this
  process is woken at once, other processes find it at their next poll.
* ``every(interval_s, fn)`` — a periodic coroutine run while the runner runs (SLA checks).
* ``start()`` / ``stop(timeout_s)`` — the runner: an asyncio task in ``pacsd serve``
  (``web/app.py`` cleanup context). ``stop`` lets running jobs finish for up to
  ``timeout_s``, then cancels them and gives their jobs back to the queue (not counted
  as an attempt); a process that dies instead leaves leases that expire, after which any
  runner takes the jobs again.
* ``run_due()`` — claim and run every job due now, then return (tests and the CLI).

A running job's lease is extended every ``lease_s / 3`` seconds, so a long job (a big
study to forward) keeps it while a crashed one loses it after ``lease_s``.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .. import errors
from ..config import Settings
from ..index.jobs import Backoff, Job, JobQueue
from .archive import Archive

log = logging.getLogger(__name__)

Handler = Callable[[Job], Any]


class JobFailed(Exception):
    """Raised by a handler: this attempt failed for ``reason`` (PHI-free). ``retry=False``
    sends the job straight to the dead letter state (a permanent error)."""

    def __init__(self, reason: str, *, retry: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


@dataclass
class _Kind:
    handler: Handler
    max_attempts: int | None


def error_reason(exc: BaseException) -> str:
    """A PHI-free phrase for ``last_error`` and the log."""
    if isinstance(exc, JobFailed):
        return exc.reason
    if isinstance(exc, errors.PacsdError):
        return exc.reason
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def queue_from_settings(archive: Archive, clock: Callable[[], float] = time.time
                        ) -> JobQueue:
    conf = archive.settings.jobs
    return JobQueue(archive.catalogue, clock=clock,
                    backoff=Backoff(conf.backoff_base_s, conf.backoff_max_s,
                                    conf.backoff_jitter),
                    max_attempts=conf.max_attempts)


class JobService:
    """Handlers, producers and the runner of one archive (module docstring)."""

    def __init__(self, archive: Archive, *, clock: Callable[[], float] = time.time,
                 queue: JobQueue | None = None, worker_id: str | None = None) -> None:
        self.archive = archive
        conf: Any = archive.settings.jobs
        self.conf = conf
        self.clock = clock
        self.queue = queue or queue_from_settings(archive, clock)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.kinds: dict[str, _Kind] = {}
        self._periodic: list[tuple[float, Callable[[], Awaitable[None]]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._periodic_tasks: list[asyncio.Task] = []
        self._running: set[asyncio.Task] = set()
        self.every(3600.0, self._purge)

    async def _purge(self) -> None:
        n = await self.archive.run(self.queue.purge, self.conf.keep_done_days * 86400.0)
        if n:
            log.info("purged %d finished jobs", n)

    # --- the API ------------------------------------------------------------------------
    def register(self, kind: str, handler: Handler, *, max_attempts: int | None = None
                 ) -> None:
        if kind in self.kinds:
            raise ValueError(f"job kind {kind!r} is registered twice")
        self.kinds[kind] = _Kind(handler, max_attempts)

    def every(self, interval_s: float, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``await fn()`` every ``interval_s`` while the runner runs (errors logged)."""
        self._periodic.append((interval_s, fn))

    def enqueue_sync(self, kind: str, payload: dict[str, Any] | None = None, *,
                     dedupe_key: str | None = None, delay_s: float = 0.0) -> int:
        kind_conf = self.kinds.get(kind)
        pk = self.queue.enqueue(kind, payload, dedupe_key=dedupe_key, delay_s=delay_s,
                                max_attempts=kind_conf.max_attempts if kind_conf else None)
        self.wake()
        return pk

    async def enqueue(self, kind: str, payload: dict[str, Any] | None = None, *,
                      dedupe_key: str | None = None, delay_s: float = 0.0) -> int:
        return await self.archive.run(self.enqueue_sync, kind, payload,
                                      dedupe_key=dedupe_key, delay_s=delay_s)

    def wake(self) -> None:
        """Make the runner look at the queue now (thread-safe)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    # --- running ------------------------------------------------------------------------
    async def run_due(self) -> int:
        """Claim and run jobs until none is due now; returns how many ran."""
        ran = 0
        while True:
            jobs = await self._claim(max(1, self.conf.concurrency))
            if not jobs:
                return ran
            await asyncio.gather(*(self._run_job(job) for job in jobs))
            ran += len(jobs)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task = asyncio.create_task(self._runner(), name="pacsd-jobs")
        for interval, fn in self._periodic:
            self._periodic_tasks.append(asyncio.create_task(
                self._every(interval, fn), name="pacsd-jobs-periodic"))

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Graceful stop (module docstring)."""
        self._stopping = True
        for t in self._periodic_tasks:
            t.cancel()
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._running:
            done, pending = await asyncio.wait(set(self._running), timeout=timeout_s)
            for t in pending:
                t.cancel()
            if pending:
                log.warning("%d jobs still running at shutdown: given back to the queue",
                            len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.gather(*self._periodic_tasks, return_exceptions=True)
        self._periodic_tasks = []
        self._loop = None

    async def _claim(self, limit: int) -> list[Job]:
        if not self.kinds or limit <= 0:
            return []
        return await self.archive.run(self.queue.claim, self.worker_id, list(self.kinds),
                                      limit=limit, lease_s=self.conf.lease_s)

    async def _runner(self) -> None:
        assert self._wake is not None
        failing = False
        while not self._stopping:
            self._wake.clear()
            free = self.conf.concurrency - len(self._running)
            claimed: list[Job] = []
            try:
                claimed = await self._claim(free)
                if failing:
                    log.warning("job queue readable again")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception:
                if not failing:
                    log.error("cannot claim jobs (will keep trying)", exc_info=True)
                failing = True
            for job in claimed:
                task = asyncio.create_task(self._run_job(job), name=f"pacsd-job-{job.pk}")
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            if claimed and len(claimed) == free:
                # Every slot is busy: wait for one to come free (or a stop).
                woken = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait(set(self._running) | {woken},
                                   return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                continue
            if claimed:
                continue  # look again at once: there may be more due
            try:
                await asyncio.wait_for(self._wake.wait(), self.conf.poll_interval_s)
            except asyncio.TimeoutError:
                pass

    async def _every(self, interval_s: float, fn: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.error("periodic job task failed", exc_info=True)
            await asyncio.sleep(interval_s)

    async def _heartbeat(self, job: Job) -> None:
        lease = self.conf.lease_s
        while True:
            await asyncio.sleep(lease / 3)
            try:
                if not await self.archive.run(self.queue.extend, job, lease):
                    log.warning("job %d lost its lease", job.pk)
                    return
            except errors.PacsdError:
                log.warning("could not extend the lease of job %d", job.pk)

    async def _run_job(self, job: Job) -> None:
        kind = self.kinds.get(job.kind)
        beat = asyncio.create_task(self._heartbeat(job))
        try:
            if kind is None:
                raise JobFailed(f"no handler for job kind {job.kind!r}", retry=False)
            if inspect.iscoroutinefunction(kind.handler):
                await kind.handler(job)
            else:
                await self.archive.run(kind.handler, job)
        except asyncio.CancelledError:
            beat.cancel()
            try:
                await asyncio.shield(self.archive.run(self.queue.release, job))
            except Exception:  # noqa: BLE001 - its lease expires instead
                log.warning("could not give job %d back; its lease will expire", job.pk)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the job
            beat.cancel()
            reason = error_reason(exc)
            retry = getattr(exc, "retry", True)
            try:
                state = await self.archive.run(self.queue.fail, job, reason, retry=retry)
            except Exception:  # noqa: BLE001
                log.error("could not record the failure of job %d", job.pk, exc_info=True)
                return
            level = logging.ERROR if state == "dead" else logging.WARNING
            log.log(level, "job %d (%s) attempt %d/%d failed: %s -> %s", job.pk, job.kind,
                    job.attempts, job.max_attempts, reason, state or "lease lost")
            return
        beat.cancel()
        try:
            await self.archive.run(self.queue.complete, job)
        except Exception:  # noqa: BLE001 - the lease expires and the job runs again
            log.error("could not mark job %d done", job.pk, exc_info=True)


def jobs_enabled(settings: Settings) -> bool:
    return bool(settings.jobs.enabled)
