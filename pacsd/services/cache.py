"""A small in-process cache of immutable byte strings, bounded by total size (issue 6).

Used by the retrieve path for answers that are derived only from state the key already
names: series/study metadata keyed by the catalogue's metadata ETag (which changes with
every ingest, correction or delete below the series/study, ``index/schema.py``), rendered
frames and thumbnails keyed by the instance's sha256 and the rendering parameters. A key
therefore never goes stale; the size bound only limits memory. Entries are checked by
the database on every request (the ETag query), so several server processes each keep
their own cache without ever serving another's outdated bytes.

Thread-safe: the worker pool fills it, the event loop reads it.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Hashable


class BytesLRU:
    """Least-recently-used map of key -> bytes, at most ``max_bytes`` of values in all.
    A value larger than ``max_bytes // 4`` is not kept (one huge study must not push
    out everything else)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: bytes) -> None:
        if len(value) > self.max_bytes // 4:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._items[key] = value
            self._size += len(value)
            while self._size > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def stats(self) -> dict[str, int]:
        """Sizes and counters, no keys (the metrics endpoint shows them: no patient data)."""
        with self._lock:
            return {"bytes": self._size, "entries": len(self._items),
                    "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses}

    def __len__(self) -> int:
        return len(self._items)


class SharedFileCache:
    """Second level of the render cache and of the kept QIDO answers for worker
    processes (``pacsd serve --workers N``, R-H1): immutable byte strings in files of one
    directory that every worker of the server reads and fills, so a preview rendered (or
    a QIDO page built) by one worker is not built again by the next worker a client's new
    connection lands on (the kernel spreads connections over the workers;
    benchmarks/notes.md "Workers by default, and the /rendered anomaly").

    Like :class:`BytesLRU` it only ever holds answers derived from what the key names, so
    an entry never goes stale (a QIDO answer carries the version it was built under and
    is served only when that version is read again: services/query.py). Each file is the
    sha256 of its value followed by the value, checked on every read: a torn or damaged
    file is a miss (and removed), never served.
    Written to a temporary name (mode 0600) and renamed, so a reader sees a whole file or
    none; no fsync (it is a cache). Not used with ``[encryption] enabled`` (no rendered
    pixels on disk in plaintext: server.py ``shared_render_cache``). The supervisor
    empties the directory when it starts and removes it when it stops, so nothing
    outlives the server run but what the in-memory caches would also hold. Bounded by
    ``max_bytes``: each process counts what it wrote and, past a quarter of the bound,
    removes the oldest files down to three quarters.

    Blocking file I/O: call from the worker threads, not the event loop."""

    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self._written = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _path(self, key: Hashable) -> Path:
        return self.dir / hashlib.sha256(repr(key).encode()).hexdigest()

    def get(self, key: Hashable) -> bytes | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except OSError:
            self.misses += 1
            return None
        value = data[32:]
        if len(data) < 32 or hashlib.sha256(value).digest() != data[:32]:
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: Hashable, value: bytes) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(hashlib.sha256(value).digest() + value)
            os.replace(tmp, path)
        except OSError:  # full disk, directory removed at shutdown: only a cache
            tmp.unlink(missing_ok=True)
            return
        with self._lock:
            self._written += len(value) + 32
            prune = self._written > self.max_bytes // 4
            if prune:
                self._written = 0
        if prune:
            self.prune()

    def prune(self) -> None:
        """Remove the oldest entries until at most 3/4 of ``max_bytes`` remain."""
        entries = []
        try:
            with os.scandir(self.dir) as it:
                for e in it:
                    try:
                        st = e.stat()
                    except OSError:
                        continue
                    entries.append((st.st_mtime, st.st_size, e.path))
        except OSError:
            return
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes * 3 // 4:
                break
            try:
                os.unlink(path)
            except OSError:
                pass
            total -= size

    def stats(self) -> dict[str, int]:
        """Counters of this process (no keys: no patient data)."""
        return {"max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses}
