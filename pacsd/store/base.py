"""L2: the blob-store contract shared by every backend (R-A6, reliability-matrix §7).

A :class:`BlobStore` holds immutable objects named by the SHA-256 of their bytes
(content addressing). Names derive from bytes, never from DICOM UIDs, so a hostile UID can
never reach a path or an object key (BI-6, SEC-15); every ``sha256`` argument is checked by
:func:`check_sha256` before any path or key is built.

One ``BlobStore`` is one copy. R-A6 asks for three copies that verify each other: a later
``ReplicatedStore`` implements this same interface over several ``BlobStore`` s, so callers
(ingest, retrieve, scrub) never change. That is why the contract speaks of *this copy*:
``read`` raises :class:`pacsd.errors.DataUnavailable` when this copy fails its hash check,
and a replicating wrapper catches it and falls back to another copy (FT-5, FT-6).

The interface is synchronous on purpose: callers run it in a thread pool, and the local
backend needs plain ``os`` calls (``fsync``, ``rename``) for durability (§7 item 1, FT-2).

Also here: :class:`HashingWriter`, which the web and DIMSE adapters use to stream an upload
to a staging file while computing its SHA-256 and enforcing a size limit *while streaming*
(reliability target 5), so ``put_file(..., move=True)`` can later rename it into place.

**Read-time digest (R-H1, issue 6).** SHA-256 names the object and stays the arbiter of
scrub, repair and "hash decides" (FT-7). Whole-object reads for serving may instead check
a fast digest (:func:`fast_digest`: XXH3-128 of the same bytes, 30+ GB/s against ~1-2 GB/s
for SHA-256) that ingest computes in the same pass as the SHA-256 and the index keeps with
the instance. It detects the accidental damage FT-6 is about (bit rot, truncation, a
torn or foreign file) as surely in practice; it is not a defence against someone who can
write the store *and* choose colliding bytes (they could rewrite the index too). A digest
names the object it was computed for (``xxh3-128:<hex>:<sha256 prefix>``), so one left
stale by a path that changed the object is ignored (:func:`usable_digest`) and the read
falls back to SHA-256.
"""
from __future__ import annotations

import abc
import hashlib
import itertools
import os
import re
import time
from typing import BinaryIO, Iterable, Iterator

import xxhash

from pacsd.errors import (BadRequest, DataUnavailable, InstanceTooLarge, NotFound,
                          OutOfResources, PacsdError)

__all__ = ["BlobStore", "ChecksumMismatch", "HashingWriter", "IntegrityMismatch",
           "check_sha256", "fast_digest", "hash_digests", "hash_stream", "is_sha256",
           "sha256_hex", "usable_digest"]

_SHA256_RE = re.compile(r"[0-9a-f]{64}")

#: Default chunk size for copying and hashing: large enough for throughput, small enough
#: to keep memory per request bounded (reliability target 5).
CHUNK = 1 << 20


class IntegrityMismatch(PacsdError):
    """The bytes given to the store do not match their declared SHA-256 or size."""
    http_status = 500
    dimse_status = 0x0110
    failure_reason = 0x0110


class ChecksumMismatch(DataUnavailable):
    """A stored copy's bytes do not match their SHA-256 (or recorded size) (FT-6).

    A subclass of DataUnavailable, so callers that only serve data treat it alike; the
    scrubber tells it apart (DIFFERING_CHECKSUM) from a copy that could not be fetched
    (plain DataUnavailable: FAILED_TO_FETCH) and from a missing one (NotFound:
    MISSING_OBJECT), §7 item 4.
    """
    http_status = 503
    dimse_status = 0xA702
    failure_reason = 0x0110


def check_sha256(sha256: object) -> str:
    """Return ``sha256`` if it is exactly 64 lower-case hex characters, else BadRequest.

    Called before any path or object key is built from the value (BI-6 / SEC-15: no path
    traversal through keys). ``re.fullmatch`` (not ``$``) so a trailing newline is refused.
    """
    if not is_sha256(sha256):
        raise BadRequest("Invalid object key: expected 64 lower-case hex characters.")
    return sha256


def is_sha256(name: object) -> bool:
    """True if ``name`` is a valid object key (64 lower-case hex characters)."""
    return isinstance(name, str) and _SHA256_RE.fullmatch(name) is not None


def check_size(size: object) -> int:
    """Return ``size`` if it is a non-negative int, else BadRequest."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest("Invalid object size.")
    return size


def check_range(offset: object, length: object) -> None:
    """BadRequest unless ``offset`` and ``length`` are non-negative ints."""
    for v in (offset, length):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise BadRequest("Invalid byte range.")


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """SHA-256 of ``data`` as 64 lower-case hex characters."""
    return hashlib.sha256(data).hexdigest()


#: The fast read-time digest: algorithm prefix of the stored value.
DIGEST_ALG = "xxh3-128"
_DIGEST_RE = re.compile(r"xxh3-128:[0-9a-f]{32}:([0-9a-f]{16})")


def digest_value(xxh3_hex: str, sha256: str) -> str:
    """The stored form of a fast digest: algorithm, XXH3-128 hex, and the prefix of the
    SHA-256 of the object it was computed for."""
    return f"{DIGEST_ALG}:{xxh3_hex}:{sha256[:16]}"


def fast_digest(data: bytes | bytearray | memoryview, sha256: str) -> str:
    """The fast digest of ``data``, the bytes of the object named ``sha256``."""
    return digest_value(xxhash.xxh3_128_hexdigest(data), sha256)


def digest_of_chunks(chunks: Iterable[bytes], sha256: str) -> str:
    """The fast digest of the object ``sha256`` given as ``chunks`` (e.g. the verified
    stream of ``open_verified``: its errors propagate)."""
    x = xxhash.xxh3_128()
    for chunk in chunks:
        x.update(chunk)
    return digest_value(x.hexdigest(), sha256)


def usable_digest(digest: object, sha256: str) -> bool:
    """True if ``digest`` is a fast digest this code checks and was computed for the
    object ``sha256``; anything else (None, another algorithm, a stale value left by a
    path that changed the object) means: verify with SHA-256."""
    if not isinstance(digest, str):
        return False
    m = _DIGEST_RE.fullmatch(digest)
    return m is not None and m.group(1) == sha256[:16]


def object_ok(data: bytes | bytearray | memoryview, sha256: str,
              digest: str | None = None) -> bool:
    """Whether ``data`` is the object ``sha256``: by its fast digest when ``digest`` is
    usable (:func:`usable_digest`), else by SHA-256."""
    if usable_digest(digest, sha256):
        return fast_digest(data, sha256) == digest
    return hashlib.sha256(data).hexdigest() == sha256


class ObjectCheck:
    """Incremental :func:`object_ok` for streamed reads."""

    def __init__(self, sha256: str, digest: str | None) -> None:
        self.sha256 = sha256
        self.digest = digest if usable_digest(digest, sha256) else None
        self._h = xxhash.xxh3_128() if self.digest else hashlib.sha256()

    def update(self, b: bytes | bytearray | memoryview) -> None:
        self._h.update(b)

    def ok(self) -> bool:
        if self.digest is not None:
            return digest_value(self._h.hexdigest(), self.sha256) == self.digest
        return self._h.hexdigest() == self.sha256


def hash_digests(f: BinaryIO, chunk_size: int = CHUNK) -> tuple[str, int, str]:
    """Read ``f`` to EOF; (sha256 hex, size, fast digest), in one pass."""
    h, x = hashlib.sha256(), xxhash.xxh3_128()
    n = 0
    while True:
        b = f.read(chunk_size)
        if not b:
            sha = h.hexdigest()
            return sha, n, digest_value(x.hexdigest(), sha)
        h.update(b)
        x.update(b)
        n += len(b)


def hash_stream(f: BinaryIO, chunk_size: int = CHUNK) -> tuple[str, int]:
    """Read ``f`` to EOF; return (sha256 hex, size). OSError propagates to the caller."""
    h = hashlib.sha256()
    n = 0
    while True:
        b = f.read(chunk_size)
        if not b:
            return h.hexdigest(), n
        h.update(b)
        n += len(b)


def open_source(src_path: str) -> BinaryIO:
    """Open a file a store is asked to write: IntegrityMismatch when it is missing,
    OutOfResources when it cannot be opened (nothing is stored either way)."""
    try:
        return open(src_path, "rb")
    except FileNotFoundError as e:
        raise IntegrityMismatch("The source file to store is missing.") from e
    except OSError as e:
        raise OutOfResources("Cannot read the source file to store.") from e


def hash_source(src_path: str) -> tuple[str, int]:
    """(sha256, size) of a file a store is asked to write (errors as :func:`open_source`;
    a read error is OutOfResources)."""
    with open_source(src_path) as f:
        try:
            return hash_stream(f)
        except OSError as e:
            raise OutOfResources("Cannot read the source file to store.") from e


def fsync_dir(path: str) -> None:
    """fsync a directory, making the entries created or removed in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verified_chunks(f: BinaryIO, sha256: str, chunk_size: int,
                    errors: tuple[type[BaseException], ...] = (OSError,),
                    digest: str | None = None) -> Iterator[bytes]:
    """Yield ``f`` in chunks while hashing; raise ChecksumMismatch at EOF on mismatch
    (checked by the fast ``digest`` when usable, else by SHA-256: :func:`object_ok`).

    Closes ``f`` when exhausted, on error, or when the generator is closed. Exceptions in
    ``errors`` raised while reading (EIO, a dropped S3 connection) become DataUnavailable:
    this copy could not be read in full.
    """
    h = ObjectCheck(sha256, digest)
    try:
        while True:
            try:
                b = f.read(chunk_size)
            except errors as e:
                raise DataUnavailable("Stored object could not be read.") from e
            if not b:
                break
            h.update(b)
            yield b
        if not h.ok():
            # FT-6: the bytes already sent are wrong; the caller must abort the connection
            # so the client never takes a complete-looking but corrupt response.
            raise ChecksumMismatch("Stored object failed its integrity check.")
    finally:
        f.close()


_names = itertools.count()


def _create_unique(directory: str, prefix: str) -> tuple[int, str]:
    """Create a new private file ``<prefix><pid>-<n>.part`` in ``directory`` (O_EXCL: never
    an existing file or a symlink; a name left by a crashed process is skipped). Like
    ``tempfile.mkstemp`` without its random names, a third of a tiny instance's staging
    cost (issue 6 STOW CPU, session 5)."""
    pid = os.getpid()
    for _ in range(10000):
        path = os.path.join(directory, f"{prefix}{pid}-{next(_names)}.part")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                           0o600), path
        except FileExistsError:
            continue
    raise FileExistsError("no free staging file name")


class HashingWriter:
    """Stream an upload into a staging file, hashing and counting as it goes.

    ``w = store.new_staging_file(max_size)``; ``w.write(chunk)`` ...; ``w.finish()`` returns
    ``(path, sha256, size)``; ``w.abort()`` deletes the file (idempotent, also valid after
    ``finish`` when the caller gives up on the staged file). As a context manager it aborts
    when the block raises, or when it exits without ``finish()``, so no partial file is left
    behind (FT-1, FT-3). Exceeding ``max_size`` deletes the partial file and raises
    :class:`pacsd.errors.InstanceTooLarge` before the extra bytes are written (reliability
    target 5: limits enforced while streaming). A write error (ENOSPC, EIO) deletes the file
    and raises :class:`pacsd.errors.OutOfResources`.

    The file is not fsynced here: ``BlobStore.put_file`` fsyncs before it renames.
    """

    def __init__(self, directory: str, max_size: int | None = None,
                 prefix: str = "up-") -> None:
        self.max_size = max_size
        self.size = 0
        self._h = hashlib.sha256()
        self._x = xxhash.xxh3_128()  # the fast read-time digest, same pass (R-H1)
        self._finished = False
        try:
            fd, self.path = _create_unique(directory, prefix)
            self._f: BinaryIO | None = os.fdopen(fd, "wb")
        except OSError as e:
            raise OutOfResources("Cannot create a staging file.") from e

    def write(self, chunk: bytes | bytearray | memoryview) -> int:
        if self._f is None:
            raise ValueError("HashingWriter is closed")
        n = len(chunk)
        if self.max_size is not None and self.size + n > self.max_size:
            self.abort()
            raise InstanceTooLarge(
                f"The instance exceeds the configured maximum size of {self.max_size} bytes.")
        try:
            self._f.write(chunk)
        except OSError as e:
            self.abort()
            raise OutOfResources("Cannot write the staging file.") from e
        self._h.update(chunk)
        self._x.update(chunk)
        self.size += n
        return n

    def finish(self) -> tuple[str, str, int]:
        """Close the file; return (path, sha256, size). The caller now owns the file."""
        if self._f is None:
            raise ValueError("HashingWriter is closed")
        try:
            self._f.close()  # flushes; a deferred ENOSPC surfaces here
        except OSError as e:
            self._f = None
            self.abort()
            raise OutOfResources("Cannot write the staging file.") from e
        self._f = None
        self._finished = True
        return self.path, self._h.hexdigest(), self.size

    @property
    def sha256(self) -> str:
        return self._h.hexdigest()

    @property
    def digest(self) -> str:
        """The fast read-time digest of the bytes written (:func:`fast_digest`)."""
        return digest_value(self._x.hexdigest(), self._h.hexdigest())

    def abort(self) -> None:
        """Close and delete the staging file; safe to call more than once."""
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass  # ENOSPC on the final flush: the file is deleted anyway
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError:
            pass  # left for cleanup_temp (MLPS #21 housekeeping)

    def __enter__(self) -> "HashingWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._finished:
            self.abort()


def remove_stale_files(directory: str, older_than_s: float) -> int:
    """Delete regular files directly in ``directory`` older than ``older_than_s`` (mtime).

    Used by ``cleanup_temp`` for crash leftovers (FT-1; MLPS #21). Missing directory: 0.
    """
    cutoff = time.time() - older_than_s
    n = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for e in entries:
        try:
            if (e.is_file(follow_symlinks=False)
                    and e.stat(follow_symlinks=False).st_mtime <= cutoff):
                os.unlink(e.path)
                n += 1
        except FileNotFoundError:
            continue  # a concurrent finish/rename took it
    return n


class BlobStore(abc.ABC):
    """One copy of the content-addressed object store. See the module docstring.

    All methods validate ``sha256`` arguments (BadRequest otherwise). Errors are from
    :mod:`pacsd.errors`: writes fail with OutOfResources (nothing acknowledged, FT-3) or
    IntegrityMismatch; reads fail with NotFound (FT-5) or DataUnavailable (FT-6).
    """

    url: str

    # --- writing ------------------------------------------------------------------------

    @abc.abstractmethod
    def staging_dir(self) -> str:
        """Local directory for upload temp files (same filesystem as objects when local)."""

    def new_staging_file(self, max_size: int | None = None) -> HashingWriter:
        """A :class:`HashingWriter` in :meth:`staging_dir`, for ``put_file(move=True)``."""
        return HashingWriter(self.staging_dir(), max_size)

    def stage_bytes(self, data: bytes | bytearray | memoryview) -> tuple[str, str, int, str]:
        """``data`` (received whole in memory) as a staging file in :meth:`staging_dir`,
        for ``put_file(move=True)``: ``(path, sha256, size, fast digest)``. What a
        :class:`HashingWriter` gives for one ``write``, without its buffered file object:
        one ``write`` syscall (partial writes continued), both hashes over the bytes in
        place (issue 6 STOW CPU). A write error removes the file (OutOfResources)."""
        try:
            fd, path = _create_unique(self.staging_dir(), "up-")
        except OSError as e:
            raise OutOfResources("Cannot create a staging file.") from e
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        except BaseException as e:
            try:
                os.unlink(path)
            except OSError:
                pass  # left for cleanup_temp
            if isinstance(e, OSError):
                raise OutOfResources("Cannot write the staging file.") from e
            raise
        sha = hashlib.sha256(data).hexdigest()
        return path, sha, len(data), fast_digest(data, sha)

    @abc.abstractmethod
    def put_file(self, src_path: str, sha256: str, size: int, *, move: bool = False) -> bool:
        """Make the object durable under ``sha256``.

        Returns True if newly written, False if it already existed with the right content
        (idempotent re-send, BI-25). Raises IntegrityMismatch when the source's size or hash
        differs from the declared values (nothing is stored), OutOfResources when the
        backend cannot make it durable (nothing is stored; never retry-then-ack).

        ``move=True``: the source is consumed on success (renamed into place where
        possible, else deleted after the copy); on an exception it is left to the caller.
        """

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; return its sha256. Default: stage a file, then move it in."""
        with self.new_staging_file() as w:  # aborts (deletes) the file on any exception
            w.write(data)
            path, sha, size = w.finish()
            self.put_file(path, sha, size, move=True)
        return sha

    # --- reading ------------------------------------------------------------------------

    @abc.abstractmethod
    def read(self, sha256: str, *, expected_size: int | None = None,
             digest: str | None = None) -> bytes:
        """The whole object, hash verified. NotFound if missing; ChecksumMismatch (a
        DataUnavailable) if the bytes, or their size when ``expected_size`` is given, are
        wrong; DataUnavailable if the copy cannot be read. ``digest``: the fast digest
        the index keeps (:func:`fast_digest`); when usable it is checked instead of
        re-hashing with SHA-256 (:func:`object_ok`)."""

    def read_framed(self, sha256: str, head: bytes, tail: bytes, *,
                    expected_size: int | None = None, digest: str | None = None
                    ) -> bytes | bytearray:
        """``head`` + the object + ``tail`` in one buffer, the object verified exactly as
        by :meth:`read` (same errors). For senders that frame each object (a multipart
        part's headers and its CRLF): one socket write per object instead of three
        (issue 6, WADO-RS study). Default: :meth:`read` and a join (a copy); the local
        store reads the object straight into the buffer."""
        return b"".join((head, self.read(sha256, expected_size=expected_size,
                                         digest=digest), tail))

    def read_framed_nowait(self, sha256: str, head: bytes, tail: bytes, *,
                           expected_size: int | None = None, digest: str | None = None
                           ) -> bytes | bytearray | None:
        """:meth:`read_framed` when it can be done without waiting for the device: every
        byte of the object already in memory (the page cache), for callers on an event
        loop (issue 6: a thread hop per object cost more than the read). The object is
        verified exactly as by :meth:`read`; None means "not now": not all of it is
        cached, or anything is wrong with this copy (missing, short, wrong size or
        digest, unreadable, or another backend). The caller then calls
        :meth:`read_framed` on a worker, which re-reads, raises the error, and (a
        replicated store) falls back to a good copy and repairs the bad one. Never
        returns unverified bytes. Default: None (no such read)."""
        check_sha256(sha256)
        return None

    @abc.abstractmethod
    def read_range(self, sha256: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; NOT hash verified (callers check per-frame CRC32
        from the index). Short read -> DataUnavailable; missing -> NotFound."""

    @abc.abstractmethod
    def open_verified(self, sha256: str, chunk_size: int = CHUNK, *,
                      digest: str | None = None) -> Iterator[bytes]:
        """Stream the object in chunks while hashing it (``digest`` as in :meth:`read`;
        scrub and repair never pass one: SHA-256 is their arbiter).

        The object is opened eagerly, so NotFound is raised by this call, before any byte
        is yielded (the caller can still answer 404). The hash can only be checked at EOF:
        if it mismatches, the iterator raises ChecksumMismatch (a DataUnavailable) *after*
        yielding all chunks, so the caller has already sent bytes and MUST abort the
        connection (no terminating multipart boundary / zero-length chunk) so the client
        sees a failed transfer, never a complete corrupt one (FT-6). A read error
        mid-stream raises DataUnavailable the same way. Call ``close()`` on the iterator
        when stopping early.
        """

    def verify(self, sha256: str) -> bool:
        """Re-hash the stored object (scrub building block).

        False if missing or mismatched. A copy that cannot be fetched at all (I/O error,
        backend down) raises DataUnavailable instead of returning False, so a scrubber
        does not report an unreachable store as corrupt (FAILED_TO_FETCH, §7 item 4).
        """
        check_sha256(sha256)
        try:
            for _ in self.open_verified(sha256):
                pass
        except (NotFound, ChecksumMismatch):
            return False
        return True

    @abc.abstractmethod
    def local_path(self, sha256: str) -> str | None:
        """Path on local disk if the backend is local (sendfile / pydicom), else None.

        Existence is not checked and the bytes are not verified: a caller that serves the
        file directly must have verified it (``verify``) or accept scrub-level assurance.
        """

    @abc.abstractmethod
    def exists(self, sha256: str) -> bool:
        """True if an object is stored under ``sha256`` (content not verified)."""

    @abc.abstractmethod
    def size(self, sha256: str) -> int | None:
        """Stored size in bytes, or None if missing."""

    # --- maintenance --------------------------------------------------------------------

    @abc.abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove the object; no error if it is already gone (idempotent, FT-13)."""

    @abc.abstractmethod
    def iter_keys(self) -> Iterator[str]:
        """Every stored sha256 (scrub orphan pass, §7 item 4). Stray names are skipped."""

    @abc.abstractmethod
    def cleanup_temp(self, older_than_s: float) -> int:
        """Remove temp/staging leftovers older than ``older_than_s``; return the count.

        ``older_than_s`` must exceed the longest request time, or a live upload's staging
        file can be removed under it.
        """

    def close(self) -> None:
        """Release resources. Default: nothing to release."""

    def __enter__(self) -> "BlobStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
