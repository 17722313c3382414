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

import threading
from collections import OrderedDict
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
