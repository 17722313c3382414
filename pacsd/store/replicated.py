"""L2: several copies of the blob store that verify each other (R-A6, reliability-matrix
§3 targets 1-3, FT-3..FT-8, FT-12, §7 items 1, 4, 6).

:class:`ReplicatedStore` implements :class:`~pacsd.store.base.BlobStore` over N copies (any
mix of local directories, S3 buckets, memory), so ingest, retrieve and scrub do not change.

Writes (target 1, FT-3/FT-4/FT-12: "3 copies => block the acknowledgement"):
``put_file`` returns only when EVERY copy is durable and hash-checked; if any copy fails
it raises :class:`~pacsd.errors.OutOfResources` (503 + Retry-After / A700) and the caller
acknowledges nothing. The staged upload lives in the first *local* copy's ``staging/``
(same filesystem, so it can be renamed into place). With ``move=True`` the other copies
are written first, in parallel, each *copying* from the staged file and hashing the bytes
it writes (local: hash while copying + fsync + rename + dir fsync; S3: hash, PUT with
``x-amz-checksum-sha256``, read back and hash); only when all of them succeeded is the
staged file renamed into the first local copy. So the rename (which consumes the source)
comes last and a failure anywhere leaves the staged file to the caller, as the contract
says. Copying to all copies and deleting the staged file would cost one more full copy
on the primary disk for no gain.

Partial failure: copies written before another copy failed are *left in place*, not
removed. The object is not indexed, so it is an orphan that the scrubber's orphan pass
reports (never deletes inside retention, FT-9); a retry finds those copies already there.
Removing them would race with a concurrent upload of the same bytes (content addressing:
same key) that already counted on them for its own acknowledgement.

Reads (target 2, FT-5/FT-6/FT-7): ``read``/``open_verified`` try the copies in order
(a copy that served this object well recently first, copies known bad for it last, copies
whose backend failed recently — a simple circuit breaker, FT-4 — before those), verify the
SHA-256 and fall back to the next copy; bad bytes are never returned. ``read_range`` is
not hash-checked by the store (callers check the per-frame CRC32), but a copy that is
missing or unreadable falls back to the next. A bad copy found on any read is reported:
logged (hash prefix and copy URL only, no patient data), kept in :attr:`damage_log`, passed
to the ``on_damage`` callback (for audit), and, with ``repair_on_read``, rewritten in the
background from a hash-valid copy (MinIO heal-on-read). When no copy is good the error is
NotFound (all missing), ChecksumMismatch (some copy exists but none is valid: 503, FT-8)
or DataUnavailable (some copy could not be reached).

Also here: :func:`open_replicated` (build a store from a list of copy specifications).
The per-copy check and repair (:func:`check_copy`, :func:`copy_object`, :class:`CopyState`)
live in ``verification.py`` and are re-exported here.
"""
from __future__ import annotations

import collections
import contextvars
import heapq
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import pacsd.failpoints as failpoints
from pacsd.errors import (BadRequest, DataUnavailable, NotFound, OutOfResources,
                          PacsdError)
from pacsd.store.base import (CHUNK, BlobStore, ChecksumMismatch, IntegrityMismatch,
                              check_range, check_sha256, check_size, hash_stream)
from pacsd.store.verification import CopyState, check_copy, copy_object, object_mtime

log = logging.getLogger(__name__)

__all__ = ["CopyState", "DamageEvent", "ReplicatedStore", "check_copy", "copies_of",
           "copy_object", "object_mtime", "open_replicated"]


@dataclass(frozen=True)
class DamageEvent:
    """One bad copy seen by a read or a repair of it (for logs and audit; no PHI)."""

    sha256: str
    copy_index: int
    copy_url: str
    state: CopyState
    during: str             # "read", "read_range", "stream", "verify", "repair"
    action: str             # "detected", "repaired", "repair_failed"
    at: float = field(default_factory=time.time)


def copies_of(store: BlobStore) -> tuple[BlobStore, ...]:
    """The copies behind ``store``: its copies if replicated, else the store itself."""
    return store.copies if isinstance(store, ReplicatedStore) else (store,)


def _is_local(store: BlobStore) -> bool:
    # An encrypted copy (store/crypto.py) hides its path but is local if its inner is.
    return getattr(store, "inner", store).local_path("0" * 64) is not None


# --- the replicated store ------------------------------------------------------------------

class ReplicatedStore(BlobStore):
    """N copies behind one :class:`BlobStore` interface. See the module docstring.

    ``on_damage(event)`` is called (from the reading thread or a repair thread; it must
    not block for long, and its exceptions are logged and ignored) for every bad copy seen
    by a read and for every repair outcome. ``repair_on_read`` rewrites such copies in the
    background; ``max_pending_repairs`` bounds that queue (beyond it the scrubber will find
    the copy). ``breaker_s``: a copy whose backend failed is tried last by reads for this
    long (FT-4: reads do not wait on a dead replica).
    """

    def __init__(self, copies: Sequence[BlobStore], *,
                 on_damage: Callable[[DamageEvent], None] | None = None,
                 repair_on_read: bool = True, max_pending_repairs: int = 64,
                 write_threads: int = 32, breaker_s: float = 30.0) -> None:
        if not copies:
            raise BadRequest("A replicated store needs at least one copy.")
        self.copies: tuple[BlobStore, ...] = tuple(copies)
        self.url = "replicated:" + ",".join(c.url for c in self.copies)
        self._local = [_is_local(c) for c in self.copies]
        local = [i for i, is_local in enumerate(self._local) if is_local]
        #: The copy whose staging dir receives uploads; ``put_file(move=True)`` renames
        #: the staged file into it last.
        self.primary = local[0] if local else 0
        self.on_damage = on_damage
        self.repair_on_read = repair_on_read
        self.damage_log: collections.deque[DamageEvent] = collections.deque(maxlen=1000)
        self._max_pending = max_pending_repairs
        self._breaker_s = breaker_s
        self._lock = threading.Lock()
        self._down_until = [0.0] * len(self.copies)
        self._good: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._bad: collections.OrderedDict[str, set[int]] = collections.OrderedDict()
        self._pending: dict[tuple[str, int], Future] = {}
        self._writers = (ThreadPoolExecutor(max_workers=write_threads,
                                            thread_name_prefix="pacsd-replica")
                         if len(self.copies) > 2 else None)
        self._repairer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pacsd-heal")

    # --- hints: which copy to read first ------------------------------------------------

    _HINTS = 4096  # bounded memory for good/bad hints

    def _read_order(self, sha256: str) -> list[int]:
        now = time.monotonic()
        with self._lock:
            good = self._good.get(sha256)
            bad = set(self._bad.get(sha256, ()))
            down = {i for i, t in enumerate(self._down_until) if t > now}
        order = list(range(len(self.copies)))
        return sorted(order, key=lambda i: (i != good, i in bad, i in down, i))

    def _mark_good(self, sha256: str, i: int) -> None:
        with self._lock:
            self._good[sha256] = i
            self._good.move_to_end(sha256)
            if len(self._good) > self._HINTS:
                self._good.popitem(last=False)

    def _mark_bad(self, sha256: str, i: int, bad: bool = True) -> None:
        with self._lock:
            s = self._bad.setdefault(sha256, set())
            (s.add if bad else s.discard)(i)
            if not s:
                del self._bad[sha256]
            elif len(self._bad) > self._HINTS:
                self._bad.popitem(last=False)
            if bad and self._good.get(sha256) == i:
                del self._good[sha256]

    def _trip(self, i: int) -> None:
        """Open the read circuit breaker of a remote copy (FT-4). Local copies are not
        tripped: their read errors concern one file (e.g. a truncated one), not a
        backend."""
        if self._local[i]:
            return
        with self._lock:
            self._down_until[i] = time.monotonic() + self._breaker_s

    # --- writing ------------------------------------------------------------------------

    def staging_dir(self) -> str:
        return self.copies[self.primary].staging_dir()

    def put_file(self, src_path: str, sha256: str, size: int, *, move: bool = False) -> bool:
        check_sha256(sha256)
        check_size(size)
        if len(self.copies) == 1:
            return self.copies[0].put_file(src_path, sha256, size, move=move)
        first = [i for i in range(len(self.copies)) if not (move and i == self.primary)]
        written = self._write(first, src_path, sha256, size)
        if move:
            # Every other copy is durable and hash-checked: now rename into the primary.
            written |= self._write([self.primary], src_path, sha256, size, move=True)
        return written

    def _write(self, indices: list[int], src_path: str, sha256: str, size: int,
               move: bool = False) -> bool:
        def one(i: int) -> bool:
            written = self.copies[i].put_file(src_path, sha256, size, move=move)
            failpoints.hit("store.after_copy")
            return written

        results: dict[int, bool] = {}
        failures: dict[int, BaseException] = {}
        if self._writers is None or len(indices) == 1:
            for i in indices:
                try:
                    results[i] = one(i)
                except Exception as e:  # noqa: BLE001 - judged below
                    failures[i] = e
        else:
            # Each task in a copy of the caller's context: the key scope of an encrypted
            # copy (store/crypto.py key_scope) travels with the write.
            futures = {i: self._writers.submit(contextvars.copy_context().run, one, i)
                       for i in indices}
            for i, f in futures.items():
                try:
                    results[i] = f.result()
                except Exception as e:  # noqa: BLE001 - judged below
                    failures[i] = e
        if failures:
            self._write_failed(failures, src_path, sha256, size)
        return any(results.values())

    def _write_failed(self, failures: dict[int, BaseException], src_path: str,
                      sha256: str, size: int) -> None:
        if any(isinstance(e, IntegrityMismatch) for e in failures.values()):
            # Is it the caller's source that is wrong (then every copy refuses it and
            # nothing was stored) or one copy that returned other bytes than written?
            try:
                with open(src_path, "rb") as f:
                    source_ok = hash_stream(f) == (sha256, size)
            except OSError:
                source_ok = False
            if not source_ok:
                raise next(e for e in failures.values() if isinstance(e, IntegrityMismatch))
        for i, e in failures.items():
            if isinstance(e, BadRequest):
                raise e
            if not isinstance(e, PacsdError):
                log.error("copy %s: unexpected error while writing %s", self.copies[i].url,
                          sha256[:16], exc_info=e)
            else:
                log.warning("copy %s: object %s not written: %s", self.copies[i].url,
                            sha256[:16], getattr(e, "reason", type(e).__name__))
        first = next(iter(failures.values()))
        # FT-3/FT-4/FT-12: a copy that cannot be written blocks the acknowledgement.
        raise OutOfResources(f"{len(failures)} of {len(self.copies)} storage copies could not "
                             "be written; nothing was stored.") from first

    # --- reading ------------------------------------------------------------------------

    def _state_of(self, i: int, sha256: str, e: BaseException,
                  expected_size: int | None = None) -> CopyState:
        if isinstance(e, NotFound):
            return CopyState.MISSING
        if isinstance(e, ChecksumMismatch):
            if expected_size is not None:
                try:
                    if self.copies[i].size(sha256) != expected_size:
                        return CopyState.DIFFERING_SIZE
                except PacsdError:
                    pass
            return CopyState.DIFFERING_CHECKSUM
        self._trip(i)
        return CopyState.UNREACHABLE

    def _fail(self, sha256: str, failures: list[tuple[int, CopyState, BaseException]],
              during: str) -> PacsdError:
        """Report every failure; return the error to raise when no copy was good."""
        seen = list(failures)
        self._report(sha256, failures, None, during)
        states = {s for _, s, _ in seen}
        if states == {CopyState.MISSING}:
            return NotFound("Stored object is missing.")
        if CopyState.UNREACHABLE in states:
            err: PacsdError = DataUnavailable("No copy of the stored object could be read.")
        else:
            # FT-8: copies exist but none passes its hash check -> 503, never bad bytes.
            err = ChecksumMismatch("No copy of the stored object passed its integrity check.")
        log.error("object %s: no good copy (%s)", sha256[:16],
                  ", ".join(f"{self.copies[i].url}={s.value}" for i, s, _ in seen))
        return err

    def read(self, sha256: str, *, expected_size: int | None = None,
             digest: str | None = None) -> bytes:
        return self._read_first_good(sha256, expected_size, lambda c: c.read(
            sha256, expected_size=expected_size, digest=digest))

    def read_framed(self, sha256: str, head: bytes, tail: bytes, *,
                    expected_size: int | None = None, digest: str | None = None
                    ) -> bytes | bytearray:
        return self._read_first_good(sha256, expected_size, lambda c: c.read_framed(
            sha256, head, tail, expected_size=expected_size, digest=digest))

    def read_framed_nowait(self, sha256: str, head: bytes, tail: bytes, *,
                           expected_size: int | None = None, digest: str | None = None
                           ) -> bytes | bytearray | None:
        """The first copy in read order, without waiting for a device (BlobStore); None
        when that copy cannot answer so (not cached, remote, or anything wrong with it):
        the caller's :meth:`read_framed` then reads with fallback, reporting and repair
        of a bad copy, exactly as before."""
        check_sha256(sha256)
        i = self._read_order(sha256)[0]
        with self._lock:
            if i in self._bad.get(sha256, ()):
                return None
        out = self.copies[i].read_framed_nowait(sha256, head, tail,
                                                expected_size=expected_size, digest=digest)
        if out is not None:
            self._mark_good(sha256, i)
        return out

    def _read_first_good(self, sha256: str, expected_size: int | None,
                         read: Callable[[BlobStore], Any]) -> Any:
        """``read(copy)`` of the first copy that passes its checks (read order above);
        every bad copy seen is reported (and repaired on read)."""
        check_sha256(sha256)
        failures: list[tuple[int, CopyState, BaseException]] = []
        for i in self._read_order(sha256):
            try:
                data = read(self.copies[i])
            except (NotFound, DataUnavailable) as e:
                failures.append((i, self._state_of(i, sha256, e, expected_size), e))
                continue
            self._mark_good(sha256, i)
            self._report(sha256, failures, i, "read")
            return data
        cause = failures[-1][2]
        raise self._fail(sha256, failures, "read") from cause

    def read_range(self, sha256: str, offset: int, length: int) -> bytes:
        check_sha256(sha256)
        check_range(offset, length)
        failures: list[tuple[int, CopyState, BaseException]] = []
        for i in self._read_order(sha256):
            try:
                data = self.copies[i].read_range(sha256, offset, length)
            except (NotFound, DataUnavailable) as e:
                # A short read is a truncated copy or an unreadable one; the background
                # check (repair-on-read) tells which.
                state = self._state_of(i, sha256, e)
                failures.append((i, state, e))
                continue
            self._report(sha256, failures, None, "read_range")
            return data
        cause = failures[-1][2]
        raise self._fail(sha256, failures, "read_range") from cause

    def open_verified(self, sha256: str, chunk_size: int = CHUNK, *,
                      digest: str | None = None) -> Iterator[bytes]:
        check_sha256(sha256)
        order = self._read_order(sha256)
        failures: list[tuple[int, CopyState, BaseException]] = []
        # Opened eagerly, so NotFound (all copies missing) is raised by this call.
        i, it = self._open_next(sha256, order, chunk_size, failures, digest)
        return self._stream(sha256, order, i, it, chunk_size, failures, digest)

    def _open_next(self, sha256: str, order: list[int], chunk_size: int,
                   failures: list, digest: str | None = None
                   ) -> tuple[int, Iterator[bytes]]:
        while order:
            i = order.pop(0)
            try:
                return i, self.copies[i].open_verified(sha256, chunk_size, digest=digest)
            except (NotFound, DataUnavailable) as e:
                failures.append((i, self._state_of(i, sha256, e), e))
        cause = failures[-1][2] if failures else None
        raise self._fail(sha256, failures, "stream") from cause

    def _stream(self, sha256: str, order: list[int], i: int, it: Iterator[bytes],
                chunk_size: int, failures: list, digest: str | None = None
                ) -> Iterator[bytes]:
        sent = False
        try:
            while True:
                try:
                    for chunk in it:
                        sent = True
                        yield chunk
                except DataUnavailable as e:
                    failures.append((i, self._state_of(i, sha256, e), e))
                    if sent:
                        # Bytes already went out: the caller must abort its response. The
                        # copy is marked bad, so a retry reads another copy first (FT-6).
                        self._report(sha256, failures, None, "stream")
                        raise
                    i, it = self._open_next(sha256, order, chunk_size, failures, digest)
                    continue
                self._mark_good(sha256, i)
                self._report(sha256, failures, i, "stream")
                return
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def verify(self, sha256: str) -> bool:
        """True if at least one copy passes its hash check (the object can be served);
        that copy is then read first by ``read_range``/``local_path``. Bad copies are
        reported (and repaired on read). False if every copy is missing or corrupt;
        DataUnavailable if none is good and some could not be reached."""
        check_sha256(sha256)
        failures: list[tuple[int, CopyState, BaseException]] = []
        for i in self._read_order(sha256):
            state = check_copy(self.copies[i], sha256)
            if state is CopyState.OK:
                self._mark_good(sha256, i)
                self._report(sha256, failures, i, "verify")
                return True
            if state is CopyState.UNREACHABLE:
                self._trip(i)
            failures.append((i, state, DataUnavailable(state.value)))
        err = self._fail(sha256, failures, "verify")
        if isinstance(err, (NotFound, ChecksumMismatch)):
            return False
        raise err

    def local_path(self, sha256: str) -> str | None:
        check_sha256(sha256)
        with self._lock:
            good = self._good.get(sha256)
            bad = set(self._bad.get(sha256, ()))
        if good is not None and self._local[good]:
            return self.copies[good].local_path(sha256)
        for i, c in enumerate(self.copies):
            if i not in bad and self._local[i]:
                return c.local_path(sha256)
        return None

    def exists(self, sha256: str) -> bool:
        return self._any(sha256, lambda c: c.exists(sha256), False)

    def size(self, sha256: str) -> int | None:
        return self._any(sha256, lambda c: c.size(sha256), None)

    def _any(self, sha256: str, fn: Callable[[BlobStore], Any], none: Any) -> Any:
        check_sha256(sha256)
        error: BaseException | None = None
        for i in self._read_order(sha256):
            try:
                v = fn(self.copies[i])
            except (OutOfResources, DataUnavailable) as e:
                error = error or e
                continue
            if v is not none and v is not False:
                return v
        if error is not None:
            raise error
        return none

    # --- damage reports and repair-on-read ----------------------------------------------

    def _report(self, sha256: str, failures: list[tuple[int, CopyState, BaseException]],
                good: int | None, during: str) -> None:
        for i, state, _ in failures:
            if state is not CopyState.UNREACHABLE:
                self._mark_bad(sha256, i)
            self._emit(DamageEvent(sha256, i, self.copies[i].url, state, during, "detected"))
            if state.repairable and self.repair_on_read:
                self._schedule_repair(sha256, i, good, state)
        failures.clear()

    def _emit(self, ev: DamageEvent) -> None:
        # Hash prefix and copy URL only: never patient data in logs (SEC-23).
        level = logging.INFO if ev.action == "repaired" else logging.WARNING
        log.log(level, "object %s copy %s: %s %s during %s", ev.sha256[:16], ev.copy_url,
                ev.state.value, ev.action, ev.during)
        self.damage_log.append(ev)
        if self.on_damage is not None:
            try:
                self.on_damage(ev)
            except Exception:  # noqa: BLE001 - a reporting hook must not break a read
                log.exception("on_damage callback failed")

    def _schedule_repair(self, sha256: str, i: int, good: int | None,
                         state: CopyState) -> None:
        key = (sha256, i)
        with self._lock:
            if key in self._pending:
                return
            if len(self._pending) >= self._max_pending:
                log.warning("repair queue full; object %s copy %s left for the scrubber",
                            sha256[:16], self.copies[i].url)
                return
            try:
                fut = self._repairer.submit(self._repair_one, sha256, i, good, state)
            except RuntimeError:  # shutting down
                return
            self._pending[key] = fut
        fut.add_done_callback(lambda _f: self._done(key))

    def _done(self, key: tuple[str, int]) -> None:
        with self._lock:
            self._pending.pop(key, None)

    def _repair_one(self, sha256: str, i: int, good: int | None, state: CopyState) -> None:
        """Background: rewrite copy ``i`` from a hash-valid copy (hash decides, FT-7)."""
        try:
            candidates = ([good] if good is not None else []) + [
                j for j in self._read_order(sha256) if j not in (i, good)]
            source = next((j for j in candidates
                           if check_copy(self.copies[j], sha256) is CopyState.OK), None)
            if source is None:
                self._emit(DamageEvent(sha256, i, self.copies[i].url, state, "repair",
                                       "repair_failed"))
                return
            size = self.copies[source].size(sha256)
            now = check_copy(self.copies[i], sha256, size)
            if now is CopyState.OK:  # repaired meanwhile (re-send, scrubber)
                self._mark_bad(sha256, i, bad=False)
                return
            if not now.repairable:
                return  # unreachable now: the scrubber will retry
            copy_object(self.copies[source], self.copies[i], sha256, size, self.staging_dir())
            self._mark_bad(sha256, i, bad=False)
            self._emit(DamageEvent(sha256, i, self.copies[i].url, now, "repair", "repaired"))
        except Exception as e:  # noqa: BLE001 - background task: report, never raise
            log.warning("object %s copy %s: repair failed: %s", sha256[:16],
                        self.copies[i].url, getattr(e, "reason", type(e).__name__))
            self._emit(DamageEvent(sha256, i, self.copies[i].url, state, "repair",
                                   "repair_failed"))

    def wait_repairs(self, timeout: float | None = None) -> None:
        """Block until queued repairs are done (tests, orderly shutdown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                futs = list(self._pending.values())
            if not futs:
                return
            for f in futs:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    f.result(left)
                except Exception:  # noqa: BLE001 - outcome already reported
                    pass
            if deadline is not None and time.monotonic() >= deadline:
                return

    # --- maintenance --------------------------------------------------------------------

    def delete(self, sha256: str) -> None:
        check_sha256(sha256)
        error: BaseException | None = None
        for c in self.copies:  # every copy, even after a failure (idempotent, FT-13)
            try:
                c.delete(sha256)
            except PacsdError as e:
                error = error or e
        with self._lock:
            self._good.pop(sha256, None)
            self._bad.pop(sha256, None)
        if error is not None:
            raise error

    def iter_keys(self) -> Iterator[str]:
        """The union of every copy's keys, sorted, each once (both backends list keys
        in sorted order). The scrubber lists copies one by one instead (orphans per copy)."""
        last = None
        for key in heapq.merge(*(c.iter_keys() for c in self.copies)):
            if key != last:
                yield key
                last = key

    def cleanup_temp(self, older_than_s: float) -> int:
        return sum(c.cleanup_temp(older_than_s) for c in self.copies)

    def close(self) -> None:
        self._repairer.shutdown(wait=True, cancel_futures=True)
        if self._writers is not None:
            self._writers.shutdown(wait=True)
        for c in self.copies:
            c.close()


# --- construction --------------------------------------------------------------------------

#: Keys of one copy specification (``[[storage.copies]]``); all but ``url`` optional.
COPY_KEYS = ("url", "endpoint_url", "key", "secret", "region")


def open_replicated(specs: Iterable[dict[str, Any]], *,
                    wrap: Callable[[BlobStore], BlobStore] | None = None,
                    **replicated_options: Any) -> BlobStore:
    """Open every copy named in ``specs`` (dicts with ``url`` and store options such as
    ``endpoint_url``, ``key``, ``secret``, ``region``; empty values are ignored) and return
    a :class:`ReplicatedStore` over them, or the plain store when there is only one.
    ``replicated_options`` go to :class:`ReplicatedStore` (``on_damage``, ...).
    ``wrap`` is applied to every opened copy (encryption at rest: store/crypto.py)."""
    from pacsd.store import open_store

    specs = list(specs)
    if not specs:
        raise BadRequest("No storage copy is configured.")
    opened: list[BlobStore] = []
    try:
        for spec in specs:
            opts = {k: v for k, v in spec.items() if k != "url" and v not in ("", None)}
            opened.append(open_store(spec.get("url", ""), **opts))
            if wrap is not None:
                opened[-1] = wrap(opened[-1])
        urls = [c.url for c in opened]
        if len(set(urls)) != len(urls):
            raise BadRequest("Two storage copies name the same location.")
    except BaseException:
        for c in opened:
            c.close()
        raise
    if len(opened) == 1:
        return opened[0]
    return ReplicatedStore(opened, **replicated_options)
