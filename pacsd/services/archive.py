"""The opened archive: settings, blob store, catalogue and the worker pool.

Blocking work (file IO, fsync, pydicom parsing, SQL) runs on one bounded thread pool so
the event loop keeps answering (BI-20: a health check answers while uploads are parsed).
"""
from __future__ import annotations

import asyncio
import functools
import time
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

    def close(self) -> None:
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
