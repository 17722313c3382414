"""The opened archive: settings, blob store, catalogue and the worker pool.

Blocking work (file IO, fsync, pydicom parsing, SQL) runs on one bounded thread pool so
the event loop keeps answering (BI-20: a health check answers while uploads are parsed).
Short index reads (QIDO-RS, C-FIND) take a cheaper hop, :meth:`Archive.run_light`: one
long-lived thread (see :class:`Lane`).
"""
from __future__ import annotations

import asyncio
import functools
import threading
import time
from _queue import SimpleQueue
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from ..config import ConfigError, Settings
from ..errors import BadRequest
from ..index import Catalogue
from ..index.plugin_tables import migrate_plugins
from ..plugins import Plugins
from ..store import BlobStore
from ..store.replicated import open_replicated
from .scoping import Scoping, institution_getter
from .visit import visit_getter

T = TypeVar("T")

#: A job on the light lane running longer than this sends new light jobs to the pool,
#: so a slow query (a fuzzy name match, a count at 1M) holds up only the few queued
#: behind it while it runs past this (R-H1).
LANE_OVERFLOW_S = 0.005


class Lane:
    """One long-lived thread fed by a SimpleQueue, for short jobs (R-H1, issue 6).

    A QIDO-RS query of one or two items is ~50 us of SQL and Python; handing it to the
    16-thread pool cost 2-3x that in the worker process at concurrency 16 (a thread woken
    per job, up to 16 threads taking turns at the GIL: futex traffic and context
    switches). Here one thread takes jobs in turn, without sleeping while more are
    queued, and finished jobs wake the event loop once per batch (one
    ``call_soon_threadsafe`` while the loop has not drained the previous ones). Results
    and exceptions reach the awaiting coroutine as from ``run_in_executor``; a job whose
    future was cancelled before it started is not run.
    """

    def __init__(self, name: str = "pacsd-light") -> None:
        self.name = name
        self._queue: SimpleQueue = SimpleQueue()
        self._lock = threading.Lock()
        #: loop -> finished (future, ok, value) not yet handed over on that loop.
        self._done: dict[asyncio.AbstractEventLoop, list] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        #: time.monotonic() when the running job started; 0.0 while idle.
        self.busy_since = 0.0

    def submit(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any],
               args: tuple, kwargs: dict) -> asyncio.Future:
        if self._closed:
            raise RuntimeError("the archive is closed")
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._work, name=self.name,
                                                    daemon=True)
                    self._thread.start()
        fut = loop.create_future()
        self._queue.put((loop, fut, fn, args, kwargs))
        return fut

    def stuck(self) -> bool:
        """Whether the running job has run longer than :data:`LANE_OVERFLOW_S`."""
        since = self.busy_since
        return since != 0.0 and time.monotonic() - since > LANE_OVERFLOW_S

    def _work(self) -> None:
        get = self._queue.get
        clock = time.monotonic
        while True:
            item = get()
            if item is None:
                return
            loop, fut, fn, args, kwargs = item
            if fut.cancelled():
                continue
            self.busy_since = clock()
            try:
                value, ok = fn(*args, **kwargs), True
            except BaseException as e:  # handed to the awaiting coroutine, as the pool does
                value, ok = e, False
            finally:
                self.busy_since = 0.0
            with self._lock:
                batch = self._done.get(loop)
                if batch is None:
                    self._done[loop] = [(fut, ok, value)]
                else:
                    batch.append((fut, ok, value))
            if batch is None:  # the first since the loop last drained: wake it once
                try:
                    loop.call_soon_threadsafe(self._hand_over, loop)
                except RuntimeError:  # the loop was closed under us: nobody awaits
                    with self._lock:
                        self._done.pop(loop, None)
            del item, loop, fut, fn, args, kwargs, value  # hold nothing while waiting

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            batch = self._done.pop(loop, ())
        for fut, ok, value in batch:
            if fut.done():  # cancelled while it ran
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def close(self) -> None:
        """Run what is queued, then stop the thread (as ``executor.shutdown(wait=True)``)."""
        self._closed = True
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()


class Archive:
    def __init__(self, settings: Settings, store: BlobStore, catalogue: Catalogue,
                 plugins: Plugins | None = None) -> None:
        self.settings = settings
        self.store = store
        self.catalogue = catalogue
        self.plugins = plugins or Plugins()
        #: POSIX seconds; retention and versions read it, tests replace it (R-A7).
        self.clock: Callable[[], float] = time.time
        #: Data scoping on every read (R-A12): services call scoping.scope_for(actor).
        self.scoping = Scoping(settings, self.plugins)
        catalogue.institution_of = institution_getter(settings)
        catalogue.visit_of = visit_getter(settings)  # R-D2 worklist columns
        self.executor = ThreadPoolExecutor(
            max_workers=settings.server.worker_threads, thread_name_prefix="pacsd-io")
        self.lane = Lane()

    @classmethod
    def open(cls, settings: Settings, plugins: Plugins | None = None) -> "Archive":
        settings.data_path.mkdir(parents=True, exist_ok=True)
        store = open_configured_store(settings)
        try:
            catalogue = Catalogue(settings.index_url,
                                  busy_timeout_s=settings.index.busy_timeout_s)
            catalogue.migrate()
            if plugins is not None:
                # Plugin-owned tables, versioned per plugin (R-E6; index/plugin_tables.py).
                migrate_plugins(catalogue.engine, plugins.collect("register_tables"))
        except BaseException:
            store.close()
            raise
        return cls(settings, store, catalogue, plugins)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking ``fn`` on the worker pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    async def run_light(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking ``fn``, a short job (an index read of a few ms at most), on the
        light lane (:class:`Lane`); on the pool while the lane is held up by a long one."""
        loop = asyncio.get_running_loop()
        lane = self.lane
        if lane.stuck():
            return await loop.run_in_executor(self.executor,
                                              functools.partial(fn, *args, **kwargs))
        return await lane.submit(loop, fn, args, kwargs)

    def close(self) -> None:
        self.lane.close()
        self.executor.shutdown(wait=True)
        self.catalogue.close()
        self.store.close()


def open_configured_store(settings: Settings) -> BlobStore:
    """The blob store of ``[storage]``: one copy (``url``) or, with ``copies``, a
    ReplicatedStore that acknowledges a write only when every copy holds it (R-A6).
    A storage URL or option the store refuses is a ConfigError (exit status 2)."""
    specs = settings.storage.copy_specs(settings.storage_url)
    wrap = encryption_wrapper(settings)
    try:
        return open_replicated(specs, wrap=wrap)
    except BadRequest as e:
        raise ConfigError(f"[storage]: {e.reason}") from None


def open_keyring(settings: Settings, *, create: bool = False):
    """The key directory of ``[encryption]`` (R-G1). ConfigError (exit status 2) when it
    is not set, inside the data directory, missing, insecure or without a default key."""
    from ..store.crypto import Keyring, KeyringError

    conf = settings.encryption
    if not conf.key_dir:
        raise ConfigError("[encryption] key_dir is not set: choose a directory outside the "
                          "data directory and run `pacsd keys init`")
    key_dir = Path(conf.key_dir).expanduser().resolve()
    data = settings.data_path
    if key_dir == data or data in key_dir.parents:
        raise ConfigError("[encryption] key_dir must be outside the data directory "
                          f"({data}): keys stored next to the data protect nothing")
    try:
        if create:
            ring = Keyring.init(str(key_dir), cipher=conf.cipher)
        else:
            ring = Keyring(str(key_dir), cipher=conf.cipher)
        ring.auto_create = conf.per_institution_keys
        if ring.latest(None) is None:
            raise KeyringError(f"no default key in {key_dir}; run `pacsd keys init`")
    except KeyringError as e:
        raise ConfigError(f"[encryption] cannot use the keys: {e.reason}") from None
    return ring


def encryption_wrapper(settings: Settings):
    """``wrap`` for open_replicated: every copy encrypted at rest, or None when off."""
    if not settings.encryption.enabled:
        return None
    from ..store.crypto import EncryptedBlobStore

    ring = open_keyring(settings)
    seg = settings.encryption.segment_size
    return lambda copy: EncryptedBlobStore(copy, ring, segment_size=seg)
