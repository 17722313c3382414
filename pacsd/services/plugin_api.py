"""The public surface of the archive for plugins (R-E6): the one object a plugin uses to
store, read, query and audit, so no plugin reaches into internals.

Everything goes through the same services as DICOMweb and DIMSE: instances a plugin
stores take the one ingest path (``instance_received`` / ``instance_stored`` fire, the
same checks and durability apply); reads take the one retrieve path (hash-checked);
queries are QIDO-RS queries; audit events join the same hash-chained trail. The methods
do **no** authorization of their own: a plugin route declares what it needs
(``@requires``) and its handler decides which studies it may touch (e.g. a share link's
scope). Reads see the whole archive by default (:data:`PLUGIN_ACTOR`); pass ``actor=``
(e.g. ``pacsd.plugin_api.current_actor(request)``) to read within that actor's data scope
(R-A12), exactly as DICOMweb would. Plugin tables (declared with ``register_tables``) are reached with
:meth:`PluginAPI.read` / :meth:`PluginAPI.write`, which run blocking functions of a
SQLAlchemy connection (call them through :meth:`PluginAPI.run`).
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import orjson

from .. import errors
from ..config import Settings
from ..model import InstanceRow, StoreOutcome
from .archive import Archive
from .audit import AuditTrail
from .ingest import IngestService, StagedFile
from .query import QueryService
from .retrieve import RetrieveService
from .ratelimit import RateLimiter, SharedFailureTable, SharedRateLimiter
from .security import Actor
from .jobs import JobService, queue_from_settings

#: Whom plugin reads act for unless given an actor: the plugin itself, whole archive.
PLUGIN_ACTOR = Actor(id="plugin", name="plugin", roles=frozenset({"local"}), clearances=None)

T = TypeVar("T")
log = logging.getLogger(__name__)


class PluginAPI:
    """What plugins may use. Given to ``api_ready(api)``; in a route handler,
    ``pacsd.plugin_api.api_of(request)``; in a CLI command, ``open_api(settings)``."""

    def __init__(self, archive: Archive, ingest: IngestService, query: QueryService,
                 retrieve: RetrieveService, audit: AuditTrail, *,
                 rate_limits: SharedFailureTable | None = None) -> None:
        self._archive = archive
        self._ingest = ingest
        self._query = query
        self._retrieve = retrieve
        self._audit = audit
        self._state: dict[str, dict[str, Any]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._daemons: set[asyncio.Task] = set()
        self.jobs = PluginJobs(archive)
        self._rate_limits = rate_limits

    # --- settings and state ---------------------------------------------------------
    @property
    def settings(self) -> Settings:
        return self._archive.settings

    def plugin_settings(self, name: str) -> dict[str, Any]:
        """The ``[plugins.<name>]`` table of the settings file (empty when absent)."""
        conf = self._archive.settings.plugins.get(name)
        return dict(conf) if isinstance(conf, dict) else {}

    def plugin_state(self, name: str) -> dict[str, Any]:
        """A dict a plugin may keep per-server state in (caches), instead of globals."""
        return self._state.setdefault(name, {})

    def rate_limiter(self, name: str, limit: int, window_s: float, *,
                     clock: Callable[[], float] = time.time
                     ) -> RateLimiter | SharedRateLimiter:
        """A limiter of failures (or attempts) per key in a sliding window (SEC-8):
        ``retry_after(key)`` / ``failed(key)``. Under ``pacsd serve --workers N`` it counts
        in memory every worker shares, so ``limit`` holds per server, not per process
        (up to ``SHARED_LIMIT_CAP`` per key; a larger limit counts per process). ``name``
        keeps one limiter's keys apart from another's: use ``"<plugin>.<what>"``."""
        table = self._rate_limits
        if table is not None and limit <= table.cap:
            return table.limiter(f"plugin:{name}", limit, window_s, clock)
        return RateLimiter(limit, window_s, clock)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking ``fn`` on the archive's worker pool."""
        return await self._archive.run(fn, *args, **kwargs)

    # --- plugin tables ----------------------------------------------------------------
    def read(self, fn: Callable[[Any], T]) -> T:
        """``fn(conn)`` on a read connection of the index (blocking: use ``run``)."""
        with self._archive.catalogue.engine.connect() as conn:
            return fn(conn)

    def write(self, fn: Callable[[Any], T]) -> T:
        """``fn(conn)`` in one write transaction, with the catalogue's writer lock,
        retries and error translation (blocking: use ``run``)."""
        return self._archive.catalogue.run_write("a plugin write", fn)

    # --- ingest -----------------------------------------------------------------------
    async def store_instance(self, data: bytes, *, expected_study_uid: str | None = None,
                             actor: Actor | None = None) -> StoreOutcome:
        """Store one DICOM Part 10 object through the one ingest path (same checks,
        hooks and durability as STOW-RS). Raises an ``InstanceError`` when refused.
        ``actor`` (default: the plugin, whole archive) limits the write to that actor's
        data scope (R-A12): a study outside it is refused with ``WriteDenied``."""
        staged = await self._archive.run(self._stage, data)
        return await self._ingest.ingest(staged, expected_study_uid=expected_study_uid,
                                         actor=actor if actor is not None else PLUGIN_ACTOR)

    def _stage(self, data: bytes) -> StagedFile:
        writer = self._archive.store.new_staging_file(
            max_size=self._archive.settings.dicomweb.max_instance_bytes)
        try:
            writer.write(data)
            path, sha, size = writer.finish()
        except BaseException:
            writer.abort()
            raise
        if size == 0:
            os.unlink(path)
            raise errors.InvalidDicom("empty object")
        return StagedFile(path, sha, size, writer.digest)

    # --- query --------------------------------------------------------------------------
    async def search(self, level: str, params: Mapping[str, str] | Iterable[tuple[str, str]]
                     = (), *, study_uid: str | None = None, series_uid: str | None = None,
                     base_url: str = "", actor: Any = PLUGIN_ACTOR) -> list[dict]:
        """A QIDO-RS query (``level`` study / series / instance, ``params`` QIDO
        parameters such as ``{"PatientID": "P1", "includefield": "all"}``); returns DICOM
        JSON objects."""
        pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
        result = await self._query.search(level, pairs, base_url=base_url,
                                          study_uid=study_uid, series_uid=series_uid,
                                          actor=actor)
        return result.items

    # --- retrieve -----------------------------------------------------------------------
    async def instances(self, study: str, series: str | None = None,
                        sop: str | None = None, *, actor: Any = PLUGIN_ACTOR
                        ) -> list[InstanceRow]:
        """Instances of a study / series (NotFound when none). Each child belongs to the
        parent named (SEC-3)."""
        return await self._retrieve.instances(study, series, sop, actor=actor)

    async def instance(self, study: str, series: str, sop: str, *,
                       actor: Any = PLUGIN_ACTOR) -> InstanceRow:
        return await self._retrieve.instance(study, series, sop, actor=actor)

    async def read_instance(self, row: InstanceRow) -> bytes:
        """The stored Part 10 bytes, sha256-verified."""
        return await self._retrieve.read_verified(row)

    async def metadata(self, study: str, series: str | None = None,
                       sop: str | None = None, *, actor: Any = PLUGIN_ACTOR) -> list[dict]:
        """DICOM JSON metadata (as WADO-RS /metadata; bulk data URIs left relative)."""
        chunks = [c async for c in self._retrieve.metadata_chunks(study, series, sop, "",
                                                                   actor=actor)]
        return orjson.loads(b"".join(chunks))

    async def rendered(self, row: InstanceRow, frame: int = 1, *,
                       media_type: str = "image/png",
                       window: tuple[float, float] | None = None,
                       viewport: tuple[int, int] | None = None, quality: int = 90) -> bytes:
        """A frame rendered for display (as WADO-RS /rendered)."""
        return await self._retrieve.rendered(row, frame, media_type=media_type,
                                             window=window, viewport=viewport,
                                             quality=quality)

    async def thumbnail(self, row: InstanceRow, size: int = 128) -> bytes:
        return await self._retrieve.thumbnail(row, size)

    # --- audit --------------------------------------------------------------------------
    def audit(self, event_type: str, *, outcome: str = "success", actor: Any = None,
              source_ip: str = "", device: str = "", study_uid: str | None = None,
              object_count: int | None = None, detail: dict | None = None) -> None:
        """Append to the audit trail. ``event_type`` is a core type or the plugin's own
        ``<plugin>.<event>``; ``detail`` must hold no patient data (SEC-23)."""
        self._audit.record(event_type, outcome=outcome, actor=actor, source_ip=source_ip,
                           device=device, study_uid=study_uid, object_count=object_count,
                           detail=detail)

    async def flush_audit(self) -> None:
        await self._audit.flush()

    # --- plugins working together ---------------------------------------------------------
    async def emit(self, event: str, **payload: Any) -> None:
        """Announce ``event`` to every plugin's ``plugin_event`` hook; awaitables they
        return are awaited here. One plugin's error is logged and stops no other."""
        await self.fire_async("plugin_event", api=self, event=event, payload=dict(payload))

    async def fire_async(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation of a *fire* hook whose implementations may return
        awaitables (``plugin_event``, ``study_stable``); errors are logged, isolated."""
        for impl in reversed(getattr(self._archive.plugins.pm.hook, hook).get_hookimpls()):
            try:
                result = impl.function(**{k: kwargs[k] for k in impl.argnames})
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("plugin %s failed in %s", impl.plugin_name, hook)

    def has_hook(self, hook: str) -> bool:
        """Whether any plugin implements ``hook``."""
        return bool(getattr(self._archive.plugins.pm.hook, hook).get_hookimpls())

    def spawn(self, coro: Awaitable[Any], name: str = "plugin-task", *,
              daemon: bool = False) -> asyncio.Task:
        """Run ``coro`` in the background (slow work such as sending a message). The
        server waits for spawned tasks at shutdown (``drain``); a ``daemon`` task (a
        watcher loop) is cancelled then instead. Errors are logged."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        (self._daemons if daemon else self._tasks).add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            self._daemons.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s failed", name, exc_info=t.exception())
        task.add_done_callback(done)
        return task

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait for spawned tasks (shutdown); cancel those still running after that."""
        for t in list(self._daemons):
            t.cancel()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for t in pending:
            t.cancel()


class PluginJobs:
    """``api.jobs``: the persistent job queue for plugins (docs/jobs.md, R-B2, R-B5).

    A plugin declares its job kinds with the ``register_jobs(api)`` hook (kinds named
    ``<plugin>.<what>``) and queues work with ``await api.jobs.submit(kind, payload)``;
    the job survives a restart, failed attempts are retried with the ``[jobs]`` backoff,
    and after ``max_attempts`` the job is dead (kept with its last error). In ``pacsd
    serve`` the server's runner runs the jobs; in a CLI command (``open_api``) ``submit``
    only queues them for the server."""

    def __init__(self, archive: Archive) -> None:
        self._archive = archive
        self._service: JobService | None = None
        self._queue = None

    def _attach(self, service: JobService | None) -> None:
        self._service = service

    async def submit(self, kind: str, payload: dict[str, Any] | None = None, *,
                     dedupe_key: str | None = None, delay_s: float = 0.0) -> int:
        """Queue a job (``payload``: JSON, no patient data); returns its id."""
        if self._service is not None:
            return await self._service.enqueue(kind, payload, dedupe_key=dedupe_key,
                                               delay_s=delay_s)
        if self._queue is None:
            self._queue = queue_from_settings(self._archive)
        return await self._archive.run(self._queue.enqueue, kind, payload,
                                       dedupe_key=dedupe_key, delay_s=delay_s)

    async def get(self, pk: int) -> dict[str, Any] | None:
        """The job's state (``id``, ``kind``, ``state``, ``attempts``, ``last_error`` …)
        or None."""
        queue = self._service.queue if self._service is not None else None
        if queue is None:
            if self._queue is None:
                self._queue = queue_from_settings(self._archive)
            queue = self._queue
        job = await self._archive.run(queue.get, pk)
        return job.as_json() if job is not None else None

    async def run_due(self) -> int:
        """Run the jobs due now in this process (tests; the server runs them itself)."""
        if self._service is None:
            raise RuntimeError("no job runner in this process")
        return await self._service.run_due()


def install_plugin_jobs(api: PluginAPI, service: JobService) -> None:
    """Register every plugin's ``register_jobs`` kinds with ``service`` (web/app.py)."""
    for kinds in api._archive.plugins.collect("register_jobs", api=api):
        for kind, spec in dict(kinds or {}).items():
            handler, max_attempts = spec if isinstance(spec, tuple) else (spec, None)
            service.register(kind, handler, max_attempts=max_attempts)
    api.jobs._attach(service)
