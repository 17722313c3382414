"""Failures per key in a sliding window (SEC-8): the login / bad-token limiter and the
limiters plugins ask for (:meth:`PluginAPI.rate_limiter`). :class:`RateLimiter` counts in
one process; :class:`SharedRateLimiter` counts in a :class:`SharedFailureTable` that
``pacsd serve`` makes before it forks its workers, so one client is counted once
however its connections are spread."""

from __future__ import annotations

import array
import hashlib
from collections import deque
from collections.abc import Callable


class RateLimiter:
    """Failures per source address in a sliding window (SEC-8), in memory: each pacsd
    process counts its own (a load balancer spreading one client over N processes lets
    it N times the limit; the per-account lockout is in the database and shared)."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float]) -> None:
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        q = self._failures.get(key)
        if q is None:
            return deque()
        cutoff = self.clock() - self.window_s
        while q and q[0] <= cutoff:
            q.popleft()
        if not q:
            del self._failures[key]
        return q

    def retry_after(self, key: str) -> int | None:
        """Seconds until ``key`` may try again, or None when it is not limited."""
        q = self._recent(key)
        if len(q) < self.limit:
            return None
        return int(q[0] + self.window_s - self.clock()) + 1

    def failed(self, key: str) -> None:
        if len(self._failures) > 100_000:  # bounded memory under a distributed attack
            self._failures.clear()
        q = self._failures.setdefault(key, deque())
        q.append(self.clock())
        while len(q) > self.limit:
            q.popleft()


#: Failures per key a :class:`SharedFailureTable` of ``pacsd serve --workers N`` holds:
#: the largest limit a shared limiter may have (larger ones count per process).
SHARED_LIMIT_CAP = 64


class SharedFailureTable:
    """Failure times per key in memory shared by the worker processes of ``pacsd serve
    --workers N`` (made by the parent before it forks them, server.py), so a client whose
    connections land on several workers is counted once. One table serves every limiter
    of the server (the login limiter and plugins' limiters, :meth:`limiter`), each under
    its own namespace.

    A fixed table of ``slots`` entries (key digest, count, the last ``cap`` failure
    times), probed over :data:`PROBE` neighbours; when they are all taken, the entry with
    the oldest last failure is replaced (bounded memory under a distributed attack, as
    the in-process limiter's clear-all). One inter-process lock guards it."""

    PROBE = 16

    def __init__(self, *, slots: int = 8192, cap: int = SHARED_LIMIT_CAP) -> None:
        import mmap
        import multiprocessing

        self.slots, self.cap = slots, max(1, cap)
        self._stride = 2 + self.cap  # key, count, times (8 bytes each)
        self._mem = mmap.mmap(-1, slots * self._stride * 8)  # MAP_SHARED: fork keeps it
        view = memoryview(self._mem)
        self._q, self._d = view.cast("q"), view.cast("d")
        self._lock = multiprocessing.get_context("fork").Lock()

    def limiter(self, namespace: str, limit: int, window_s: float,
                clock: Callable[[], float]) -> SharedRateLimiter:
        """A limiter over this table; keys of different namespaces never meet."""
        return SharedRateLimiter(limit, window_s, clock, table=self, namespace=namespace)


class SharedRateLimiter:
    """:class:`RateLimiter` (same answers) over a :class:`SharedFailureTable`; without
    ``table``, over a table of its own (``slots`` entries)."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float], *,
                 slots: int = 8192, table: SharedFailureTable | None = None,
                 namespace: str = "") -> None:
        self.limit, self.window_s, self.clock = max(1, limit), window_s, clock
        self.table = table or SharedFailureTable(slots=slots, cap=self.limit)
        if self.limit > self.table.cap:
            raise ValueError(f"a shared limit holds at most {self.table.cap} failures per key")
        self._prefix = namespace.encode() + b"\0"

    def _key(self, key: str) -> int:
        h = int.from_bytes(hashlib.blake2b(self._prefix + key.encode(), digest_size=8)
                           .digest(), "big", signed=True)
        return h or 1  # 0 marks a free slot

    def _find(self, h: int, create: bool) -> int | None:
        """The slot base of ``h`` (pruned to the window), else a fresh one or None."""
        t = self.table
        q, d, stride = t._q, t._d, t._stride
        start = (h % t.slots)
        cutoff = self.clock() - self.window_s
        victim, victim_t = None, None
        for k in range(t.PROBE):
            base = ((start + k) % t.slots) * stride
            n = q[base + 1]
            if q[base] == h:
                times = [x for x in d[base + 2:base + 2 + n] if x > cutoff]
                d[base + 2:base + 2 + len(times)] = array.array("d", times)
                q[base + 1] = len(times)
                return base
            newest = d[base + 1 + n] if n else None
            if q[base] == 0 or newest is None or newest <= cutoff:
                newest = float("-inf")  # free or expired: the best place for a new key
            if victim_t is None or newest < victim_t:
                victim, victim_t = base, newest
        if not create:
            return None
        assert victim is not None
        q[victim], q[victim + 1] = h, 0
        return victim

    def retry_after(self, key: str) -> int | None:
        with self.table._lock:
            base = self._find(self._key(key), create=False)
            if base is None or self.table._q[base + 1] < self.limit:
                return None
            return int(self.table._d[base + 2] + self.window_s - self.clock()) + 1

    def failed(self, key: str) -> None:
        with self.table._lock:
            base = self._find(self._key(key), create=True)
            assert base is not None
            q, d, cap = self.table._q, self.table._d, self.limit
            n = q[base + 1]
            if n >= cap:  # keep the newest ``limit`` times: drop the oldest
                d[base + 2:base + 1 + cap] = array.array("d", d[base + 3:base + 2 + cap])
                n = cap - 1
            d[base + 2 + n] = self.clock()
            q[base + 1] = n + 1
