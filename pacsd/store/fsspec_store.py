"""L2: a blob store on any fsspec filesystem: S3-compatible object storage, memory (R-A6).

Keys mirror the local layout: ``<root>/objects/ab/cd/<sha256>``, so copies can be compared
or migrated key for key. Object stores have no fsync/rename; the write protocol instead
relies on write-once content-hash keys (§7 item 5: an overwrite can only write the same
bytes, so overwrite consistency does not matter) and on verification after the put:

1. hash the local source and refuse it (IntegrityMismatch) unless size and SHA-256 match,
   so a bad upload can never land under, and clobber, a good key;
2. if the key already holds the right bytes (re-read and hashed), return False (idempotent,
   BI-25); a corrupt existing object is overwritten (heal on write, FT-6);
3. PUT straight to the final key, sending ``x-amz-checksum-sha256`` on single-part uploads
   so a conforming server rejects bytes damaged in transit (§7 item 5);
4. verify: ``info()`` size, then re-read and hash; only then return True.

``conditional_create=True`` replaces the existence check in step 2 by a PUT with
``If-None-Match: *`` (AWS since 2024, MinIO; support varies by product, verify per backend)
which avoids HEAD-before-PUT on stores with negative caching (§7 item 5, StorageGRID note).

Transient failures (connection refused/reset, timeouts, 5xx) are retried a bounded number
of times with exponential backoff; then writes raise OutOfResources (nothing acknowledged,
FT-3/FT-4) and reads raise DataUnavailable (a replicating wrapper falls back, FT-4/FT-5).
Listing caches must be off (``use_listings_cache=False``) so a scrubber never sees a stale
listing; :func:`pacsd.store.open_store` builds the s3fs filesystem that way.
"""
from __future__ import annotations

import base64
import datetime as _dt
import errno
import math
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Iterator, TypeVar

from pacsd.errors import DataUnavailable, NotFound, OutOfResources, PacsdError
from pacsd.store.base import (CHUNK, BlobStore, ChecksumMismatch, IntegrityMismatch,
                              check_range, check_sha256, check_size, hash_source,
                              hash_stream, is_sha256,
                              object_ok, remove_stale_files, sha256_hex,
                              verified_chunks)

T = TypeVar("T")
_MISMATCH = "The stored data does not match its declared hash or size."

#: Exceptions that say something definite about the key; never retried.
_DEFINITE = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
             NotADirectoryError, PacsdError)
#: Library families whose exceptions are network/transport failures (matched by module
#: name so this L2 module need not import botocore/aiohttp).
_TRANSPORT_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests")
_MAX_PARTS = 10_000  # S3 multipart limit


def _transient(e: BaseException) -> bool:
    if isinstance(e, _DEFINITE):
        return False
    if isinstance(e, (OSError, TimeoutError, ConnectionError)):
        return True
    return type(e).__module__.split(".")[0] in _TRANSPORT_MODULES


class FsspecBlobStore(BlobStore):
    """Content-addressed objects on an fsspec filesystem. See the module docstring.

    ``fs``: the filesystem (listing caches off); ``root``: path inside it without protocol
    (``bucket/prefix`` for S3); ``url``: the display URL (no secrets). Options: ``retries``
    and ``backoff`` (seconds, doubled per attempt, capped at 5 s) bound the retry loop;
    ``staging_dir`` is the local directory for upload files (default: a private temp dir
    removed by ``close()``); ``multipart_chunksize`` bounds the memory a PUT uses.
    """

    def __init__(self, fs: Any, root: str, *, url: str, staging_dir: str | None = None,
                 retries: int = 2, backoff: float = 0.2, conditional_create: bool = False,
                 verify_after_put: bool = True, multipart_chunksize: int = 16 << 20) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url
        self._objects = f"{self.root}/objects"
        self._retries = max(0, int(retries))
        self._backoff = float(backoff)
        self._conditional = conditional_create
        self._verify_after_put = verify_after_put
        self._chunksize = int(multipart_chunksize)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self._is_s3 = protocol in ("s3", "s3a")
        self._own_staging = staging_dir is None
        try:
            if staging_dir is None:
                staging_dir = tempfile.mkdtemp(prefix="pacsd-staging-")
            else:
                os.makedirs(staging_dir, exist_ok=True)
        except OSError as e:
            raise OutOfResources("The staging directory is not usable.") from e
        self._staging = staging_dir

    # --- helpers ------------------------------------------------------------------------

    def _key(self, sha256: str) -> str:
        check_sha256(sha256)
        return f"{self._objects}/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def _call(self, fail: Callable[[], PacsdError], fn: Callable[..., T], *a: Any,
              **kw: Any) -> T:
        """Run ``fn`` with bounded retries on transient errors; then raise ``fail()``.

        Definite answers (FileNotFoundError, FileExistsError, ...) propagate unchanged for
        the caller to interpret; other non-transient OSErrors become ``fail()`` at once.
        """
        last: BaseException | None = None
        for attempt in range(self._retries + 1):
            try:
                return fn(*a, **kw)
            except _DEFINITE:
                raise
            except Exception as e:
                if not _transient(e):
                    raise
                last = e
                if isinstance(e, OSError) and not _retryable_oserror(e):
                    break
                if attempt < self._retries:
                    time.sleep(min(self._backoff * (2 ** attempt), 5.0))
        raise fail() from last

    @staticmethod
    def _write_fail() -> PacsdError:
        return OutOfResources("The object store is unavailable.")

    @staticmethod
    def _read_fail() -> PacsdError:
        return DataUnavailable("The object store is unavailable.")

    def _info(self, key: str, fail: Callable[[], PacsdError]) -> dict | None:
        try:
            info = self._call(fail, self.fs.info, key)
        except FileNotFoundError:
            return None
        except (PermissionError, IsADirectoryError, NotADirectoryError) as e:
            raise fail() from e
        return info if info.get("type", "file") == "file" else None

    def _remote_hash(self, key: str, fail: Callable[[], PacsdError],
                     size: int | None = None) -> tuple[str, int] | None:
        """(sha256, size) of the stored object by reading it all; None if missing.
        ``size`` (from a fresh ``info``) spares s3fs another HEAD request."""
        def go() -> tuple[str, int]:
            with self.fs.open(key, "rb", **self._open_kw(CHUNK, size)) as f:
                return hash_stream(f)
        try:
            return self._call(fail, go)
        except FileNotFoundError:
            return None
        except (PermissionError, IsADirectoryError, NotADirectoryError) as e:
            raise fail() from e

    def _open_kw(self, chunk_size: int, size: int | None = None) -> dict[str, Any]:
        if self._is_s3:
            # Readahead of a few MiB: few GETs per object, bounded memory per stream.
            kw: dict[str, Any] = {"block_size": max(chunk_size, 4 << 20),
                                  "cache_type": "readahead"}
            if size is not None:
                kw["size"] = size
            return kw
        return {}

    # --- writing ------------------------------------------------------------------------

    def staging_dir(self) -> str:
        return self._staging

    def put_file(self, src_path: str, sha256: str, size: int, *, move: bool = False) -> bool:
        return self.put_raw(src_path, sha256, sha256, size, move=move)

    def put_raw(self, src_path: str, name: str, content_sha256: str, size: int, *,
                move: bool = False) -> bool:
        """Store ``src_path`` under the key ``name``; its bytes must hash to
        ``content_sha256`` (= ``name`` for put_file; the ciphertext's hash for an
        encrypted copy, store/crypto.py, whose existing object is then replaced)."""
        key = self._key(name)
        check_sha256(content_sha256)
        check_size(size)
        if hash_source(src_path) != (content_sha256, size):
            raise IntegrityMismatch(_MISMATCH)
        created = self._put(src_path, key, content_sha256, size)
        if move:
            try:
                os.unlink(src_path)
            except OSError:
                pass  # the object is durable; a leftover staging file is cleanup_temp's job
        return created

    def put_bytes(self, data: bytes) -> str:
        sha = sha256_hex(data)
        self._put(bytes(data), self._key(sha), sha, len(data))
        return sha

    def _put(self, source: str | bytes, key: str, sha256: str, size: int) -> bool:
        fail = self._write_fail
        if self._conditional:
            try:
                self._upload(source, key, sha256, size, create=True)
            except FileExistsError:
                if self._remote_hash(key, fail) == (sha256, size):
                    return False
                self._upload(source, key, sha256, size, create=False)  # heal (FT-6)
        else:
            info = self._info(key, fail)
            if info is not None and info.get("size") == size \
                    and self._remote_hash(key, fail, size) == (sha256, size):
                return False
            self._upload(source, key, sha256, size, create=False)
        if self._verify_after_put:
            self._verify_put(key, sha256, size)
        return True

    def _upload(self, source: str | bytes, key: str, sha256: str, size: int, *,
                create: bool) -> None:
        kw: dict[str, Any] = {"mode": "create" if create else "overwrite"}
        if self._is_s3:
            chunksize = max(self._chunksize, math.ceil(size / _MAX_PARTS))
            if size < 2 * chunksize:  # s3fs sends one PutObject below this size
                # The server recomputes SHA-256 and refuses damaged bytes (§7 item 5).
                kw["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha256)).decode()
            kw["chunksize"] = chunksize  # put_file and pipe_file both honour it
        try:
            if isinstance(source, bytes):
                self._call(self._write_fail, self.fs.pipe_file, key, source, **kw)
            else:
                self._call(self._write_fail, self.fs.put_file, source, key, **kw)
        except FileExistsError:
            if create:
                raise
            raise OutOfResources("The object store refused the write.")
        except (FileNotFoundError, PermissionError, IsADirectoryError,
                NotADirectoryError) as e:
            raise OutOfResources("The object store refused the write.") from e

    def _verify_put(self, key: str, sha256: str, size: int) -> None:
        fail = self._write_fail
        info = None
        # A just-written key may briefly read as missing on eventually consistent stores.
        for attempt in range(self._retries + 1):
            info = self._info(key, fail)
            if info is not None:
                break
            if attempt < self._retries:
                time.sleep(min(self._backoff * (2 ** attempt), 5.0))
        if info is None:
            raise OutOfResources("The written object could not be read back.")
        if info.get("size") != size or self._remote_hash(key, fail, size) != (sha256, size):
            raise IntegrityMismatch("The object store returned different bytes than written.")

    # --- reading ------------------------------------------------------------------------

    def _cat(self, key: str, **kw: Any) -> bytes:
        try:
            return self._call(self._read_fail, self.fs.cat_file, key, **kw)
        except FileNotFoundError as e:
            raise NotFound("Stored object is missing.") from e
        except (PermissionError, IsADirectoryError, NotADirectoryError, OSError) as e:
            raise DataUnavailable("Stored object could not be read.") from e

    def read(self, sha256: str, *, expected_size: int | None = None,
             digest: str | None = None) -> bytes:
        data = self._cat(self._key(sha256))
        if expected_size is not None and len(data) != expected_size:
            raise ChecksumMismatch("Stored object has the wrong size.")
        if not object_ok(data, sha256, digest):
            raise ChecksumMismatch("Stored object failed its integrity check.")
        return data

    def read_range(self, sha256: str, offset: int, length: int) -> bytes:
        key = self._key(sha256)
        check_range(offset, length)
        if length == 0:
            if self._info(key, self._read_fail) is None:
                raise NotFound("Stored object is missing.")
            return b""
        data = self._cat(key, start=offset, end=offset + length)
        if len(data) != length:
            raise DataUnavailable("Stored object is shorter than the requested range.")
        return data

    def open_raw(self, sha256: str, chunk_size: int = CHUNK) -> Any:
        """The stored bytes as a binary file (not verified; store/crypto.py). Read errors
        of the returned file are the caller's to translate."""
        key = self._key(sha256)
        try:
            return self._call(self._read_fail, self.fs.open, key, "rb",
                              **self._open_kw(chunk_size))
        except FileNotFoundError as e:
            raise NotFound("Stored object is missing.") from e
        except (PermissionError, IsADirectoryError, NotADirectoryError, OSError) as e:
            raise DataUnavailable("Stored object could not be read.") from e

    def open_verified(self, sha256: str, chunk_size: int = CHUNK, *,
                      digest: str | None = None) -> Iterator[bytes]:
        f = self.open_raw(sha256, chunk_size)
        # Any failure mid-stream (connection reset, timeout) means this copy was not
        # served in full: DataUnavailable, like a hash mismatch.
        return verified_chunks(f, sha256, chunk_size, errors=(Exception,), digest=digest)

    def local_path(self, sha256: str) -> str | None:
        check_sha256(sha256)
        return None

    def exists(self, sha256: str) -> bool:
        return self._info(self._key(sha256), self._write_fail) is not None

    def size(self, sha256: str) -> int | None:
        info = self._info(self._key(sha256), self._write_fail)
        return None if info is None else int(info["size"])

    # --- maintenance --------------------------------------------------------------------

    def delete(self, sha256: str) -> None:
        key = self._key(sha256)
        try:
            self._call(self._write_fail, self.fs.rm_file, key)
        except FileNotFoundError:
            pass
        except (PermissionError, IsADirectoryError, NotADirectoryError) as e:
            raise OutOfResources("The object could not be deleted.") from e

    def iter_keys(self) -> Iterator[str]:
        # Listed one top-level fan-out prefix at a time, so memory stays ~1/256 of the
        # key count; listing caches are off, so every call sees the store as it is now.
        fail = self._write_fail
        try:
            tops = self._call(fail, self.fs.ls, self._objects, detail=False)
        except FileNotFoundError:
            return
        for top in sorted(tops):
            a = top.rstrip("/").rsplit("/", 1)[-1]
            if len(a) != 2:
                continue
            try:
                paths = self._call(fail, self.fs.find, top)
            except FileNotFoundError:
                continue
            for p in sorted(paths):
                name = p.rsplit("/", 1)[-1]
                if p.endswith(f"/{name[:2]}/{name[2:4]}/{name}") and name[:2] == a \
                        and is_sha256(name):
                    yield name

    def cleanup_temp(self, older_than_s: float) -> int:
        try:
            n = remove_stale_files(self._staging, older_than_s)
        except OSError as e:
            raise OutOfResources("Temporary files could not be cleaned up.") from e
        if self._is_s3:
            n += self._abort_stale_uploads(older_than_s)
        return n

    def _abort_stale_uploads(self, older_than_s: float) -> int:
        """Abort multipart uploads under our prefix older than the threshold: the S3 form
        of crash leftovers (they are billed and invisible to listings)."""
        bucket, _, prefix = self._objects.partition("/")
        cutoff = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=older_than_s)
        n = 0
        kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix + "/" if prefix else ""}
        while True:
            out = self._call(self._write_fail, self.fs.call_s3, "list_multipart_uploads", **kw)
            for up in out.get("Uploads", []):
                started = up.get("Initiated")
                if started is not None and started.tzinfo is None:
                    started = started.replace(tzinfo=_dt.timezone.utc)
                if started is None or started <= cutoff:
                    self._call(self._write_fail, self.fs.call_s3, "abort_multipart_upload",
                               Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
                    n += 1
            if not out.get("IsTruncated"):
                return n
            kw["KeyMarker"] = out.get("NextKeyMarker", "")
            kw["UploadIdMarker"] = out.get("NextUploadIdMarker", "")

    def close(self) -> None:
        if self._own_staging:
            shutil.rmtree(self._staging, ignore_errors=True)


def _retryable_oserror(e: OSError) -> bool:
    """OSErrors worth retrying: everything except s3fs's translation of 4xx answers that
    will not change (EINVAL for InvalidRange/PreconditionFailed etc.)."""
    return e.errno not in (errno.EINVAL, errno.EACCES, errno.EPERM, errno.ENOENT)
