"""L2: the local-disk blob store, one copy on a POSIX filesystem (R-A6, §7 item 1).

Layout under the root directory (all on the same filesystem, so a rename is atomic)::

    objects/ab/<sha256>      immutable objects, fanned out by the first hex byte (a store
                             created by this version: the 256 directories are made, and
                             synced, with the store, and ``FORMAT`` says "fanout 1")
    objects/ab/cd/<sha256>   the same in a store created before (no ``FORMAT``): two levels,
                             65,536 leaves made as objects arrive; kept as it is
    FORMAT                   the layout marker (absent: two levels)
    tmp/                     in-flight copies made by put_file (crash leftovers: cleanup_temp)
    staging/                 upload files written by HashingWriter (adapters' STOW / C-STORE)

Durable write protocol (§7 item 1, FT-2, Pillai et al. OSDI'14): write to ``tmp/`` ->
``fsync(file)`` -> ``rename`` to ``objects/ab/<sha256>`` -> ``fsync(objects/ab)``; a
fan-out directory made by a write (two-level stores, or one removed behind the store) is
made durable in its parent (``fsync(parent)``, after the leaf's fsync) the first time
this process uses it, so the directory entry chain survives power loss too. In a one-level
store no write makes a directory, so an object costs fsync(file) + fsync(its directory):
each fsync of a new directory was one more journal commit per object on a fresh two-level
store (issue 6 STOW, session 5: ~3 ms each, 2.5 directory fsyncs per object). Nothing is acknowledged before all of these returned. Any OSError (ENOSPC,
EIO on fsync) aborts the write, removes the temp file and raises OutOfResources; the
write is never retried after a failed fsync (fsyncgate: the kernel may have dropped the
dirty pages and a second fsync would wrongly report success) (FT-3).

This backend uses ``os`` directly, not fsspec's ``LocalFileSystem``: the latter has no
fsync of files or directories, so it cannot give the durability §7 item 1 requires.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import tempfile
from typing import Iterator

import pacsd.failpoints as failpoints
from pacsd.errors import DataUnavailable, NotFound, OutOfResources
from pacsd.store.base import (CHUNK, BlobStore, ChecksumMismatch, IntegrityMismatch,
                              check_range, check_sha256, check_size, fsync_dir,
                              hash_source, hash_stream, is_sha256, object_ok,
                              open_source, remove_stale_files, verified_chunks)

log = logging.getLogger(__name__)
_MISMATCH = "The stored data does not match its declared hash or size."

#: preadv flag "fail with EAGAIN rather than wait for the device" (Linux >= 4.14, Python
#: >= 3.7); None where missing (read_framed_nowait then always answers "not now").
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None

_HEX2 = frozenset(f"{i:02x}" for i in range(256))

#: The layout marker at the store root, and its one value (module docstring).
FORMAT_FILE = "FORMAT"
FANOUT_1 = "fanout 1"


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # best effort; cleanup_temp removes what is left


class LocalBlobStore(BlobStore):
    """Content-addressed objects in a local directory tree. See the module docstring."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.url = "file://" + self.root
        self._objects = os.path.join(self.root, "objects")
        self._tmp = os.path.join(self.root, "tmp")
        self._staging = os.path.join(self.root, "staging")
        # Fan-out directories already made durable in their parent by this process.
        self._durable_dirs: set[str] = set()
        try:
            for d in (self._objects, self._tmp, self._staging):
                os.makedirs(d, exist_ok=True)
            self._levels = self._open_layout()
            if self._levels == 1:  # made and synced with the store (_open_layout)
                self._durable_dirs.update(os.path.join(self._objects, a) for a in _HEX2)
            fsync_dir(self.root)
            devs = {os.stat(d).st_dev for d in (self._objects, self._tmp, self._staging)}
        except OSError as e:
            raise OutOfResources("The local object store directory is not usable.") from e
        if len(devs) > 1:
            # rename would fail with EXDEV; put_file falls back to copying, but the
            # objects/tmp split across filesystems loses atomic rename (§7 item 1).
            log.warning("store %s: objects, tmp and staging are on different filesystems",
                        self.root)

    def _open_layout(self) -> int:
        """Fan-out levels of this store: 1 when ``FORMAT`` says so, or when ``objects/``
        holds nothing but empty directories (a new store: the 256 directories are made
        and synced, then ``FORMAT`` is written, fsynced and renamed into place, so a
        crash leaves either no marker and an empty store, or the marker with every
        directory; worker processes opening a new store together all make the same);
        otherwise 2 (a store made before, kept as it is)."""
        marker = os.path.join(self.root, FORMAT_FILE)
        try:
            with open(marker, encoding="ascii") as f:
                text = f.read().strip()
        except FileNotFoundError:
            text = None
        if text is not None:
            if text != FANOUT_1:
                raise OutOfResources(f"Unknown object store format in {marker}.")
            return 1
        for name in os.listdir(self._objects):
            d = os.path.join(self._objects, name)
            if name not in _HEX2 or not os.path.isdir(d) or os.listdir(d):
                return 2
        for a in sorted(_HEX2):
            os.makedirs(os.path.join(self._objects, a), exist_ok=True)
        fsync_dir(self._objects)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".format-")
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(FANOUT_1 + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, marker)
        except BaseException:
            _unlink_quiet(tmp)
            raise
        return 1  # the root is fsynced by the caller

    # --- paths --------------------------------------------------------------------------

    def _path(self, sha256: str) -> str:
        check_sha256(sha256)
        if self._levels == 1:
            return os.path.join(self._objects, sha256[:2], sha256)
        return os.path.join(self._objects, sha256[:2], sha256[2:4], sha256)

    def local_path(self, sha256: str) -> str | None:
        return self._path(sha256)

    def staging_dir(self) -> str:
        return self._staging

    def _make_fanout(self, leaf: str) -> list[str]:
        """Create objects/ab (and objects/ab/cd, two levels) if needed, WITHOUT syncing;
        returns the parents whose entries (ab in objects, cd in ab) are not yet known
        durable (one level: none, unless a directory was removed behind the store). The
        caller renames the object into ``leaf`` and then syncs ``leaf`` and these
        (:meth:`_sync_dirs`): every metadata change of the write is made first and synced
        after, so on a journaling filesystem the syncs share one journal commit instead
        of one commit each (issue 6 STOW profile, session 4: fsync_dir was 13-17 % of all-thread samples).

        A parent is synced even when another thread created the directory first: that
        thread may not have synced yet, and our acknowledgement must not depend on it.
        """
        mid = os.path.dirname(leaf)
        parents = []
        for d in ((leaf,) if self._levels == 1 else (mid, leaf)):
            # The cache is re-checked with a stat: an operator or a future empty-dir sweep
            # may have removed the directory, and a stale entry would fail every put.
            if d in self._durable_dirs and os.path.isdir(d):
                continue
            try:
                os.mkdir(d)
            except FileExistsError:
                pass
            parents.append(os.path.dirname(d))
        return parents

    def _sync_dirs(self, leaf: str, parents: list[str]) -> None:
        """After the rename into ``leaf``: its entry, then the new fan-out entries."""
        fsync_dir(leaf)
        for p in reversed(parents):  # objects/ab (holds cd), then objects (holds ab)
            fsync_dir(p)
        mid = os.path.dirname(leaf)
        for p in parents:
            self._durable_dirs.add(leaf if p == mid else mid)

    # --- writing ------------------------------------------------------------------------

    def _existing_ok(self, final: str, sha256: str) -> bool:
        """True if ``final`` holds exactly ``sha256``. A corrupt or unreadable existing
        object counts as absent, so a re-put repairs it (FT-6 heal on write)."""
        try:
            with open(final, "rb") as f:
                return hash_stream(f)[0] == sha256
        except OSError:
            return False

    def put_file(self, src_path: str, sha256: str, size: int, *, move: bool = False) -> bool:
        final = self._path(sha256)
        check_size(size)
        if move:
            return self._put_move(src_path, sha256, size, final)
        if os.path.exists(final):
            # Idempotent re-send: verify the source (never trust the declared hash on a
            # copy) and the existing object, without writing anything.
            got = hash_source(src_path)
            if got != (sha256, size):
                raise IntegrityMismatch(_MISMATCH)
            if self._existing_ok(final, sha256):
                return False
        self._copy_in(src_path, sha256, size, final)
        return True

    def put_raw(self, src_path: str, name: str, content_sha256: str, size: int, *,
                move: bool = False) -> bool:
        """Store ``src_path`` under the key ``name`` although its bytes hash to
        ``content_sha256`` (an encrypted copy, store/crypto.py): same durable protocol and
        the same check of the bytes written; an existing object is replaced."""
        final = self._path(name)
        check_sha256(content_sha256)
        check_size(size)
        if move:
            return self._put_move(src_path, content_sha256, size, final)
        self._copy_in(src_path, content_sha256, size, final)
        return True

    def open_raw(self, name: str):
        """The stored bytes of ``name`` as a binary file (not verified; store/crypto.py)."""
        return self._open(name)

    def _put_move(self, src_path: str, sha256: str, size: int, final: str) -> bool:
        # The caller hashed the bytes while writing them (HashingWriter), so the hash is
        # trusted; the size is checked so a truncated/extended staging file is refused.
        try:
            st = os.stat(src_path)
        except FileNotFoundError as e:
            raise IntegrityMismatch("The source file to store is missing.") from e
        except OSError as e:
            raise OutOfResources("Cannot read the source file to store.") from e
        if st.st_size != size:
            raise IntegrityMismatch("The stored data does not match its declared size.")
        if os.path.exists(final) and self._existing_ok(final, sha256):
            _unlink_quiet(src_path)
            return False
        leaf = os.path.dirname(final)
        try:
            fd = os.open(src_path, os.O_RDONLY)
            try:
                os.fsync(fd)  # one attempt only (fsyncgate)
            finally:
                os.close(fd)
            failpoints.hit("store.after_fsync")
            parents = self._make_fanout(leaf)
            try:
                os.replace(src_path, final)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                # Staging on another filesystem: copy (verifying the hash), then drop src.
                self._copy_in(src_path, sha256, size, final)
                _unlink_quiet(src_path)
                return True
            failpoints.hit("store.after_rename")
            self._sync_dirs(leaf, parents)
        except OSError as e:
            raise OutOfResources("The object could not be made durable.") from e
        return True

    def _copy_in(self, src_path: str, sha256: str, size: int, final: str) -> None:
        """Copy src to tmp/ while hashing, check, fsync, rename, fsync dir (§7 item 1)."""
        src = open_source(src_path)
        tmp = None
        try:
            with src:
                fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix="put-", suffix=".tmp")
                h = hashlib.sha256()
                n = 0
                with os.fdopen(fd, "wb") as dst:
                    while True:
                        b = src.read(CHUNK)
                        if not b:
                            break
                        h.update(b)
                        n += len(b)
                        if n > size:
                            break  # longer than declared: stop copying now
                        dst.write(b)
                    if n != size or h.hexdigest() != sha256:
                        raise IntegrityMismatch(_MISMATCH)
                    dst.flush()
                    os.fsync(dst.fileno())  # one attempt only (fsyncgate)
            leaf = os.path.dirname(final)
            parents = self._make_fanout(leaf)
            os.replace(tmp, final)
            tmp = None
            self._sync_dirs(leaf, parents)
        except OSError as e:
            raise OutOfResources("The object could not be made durable.") from e
        finally:
            if tmp is not None:
                _unlink_quiet(tmp)

    # --- reading ------------------------------------------------------------------------

    def _open(self, sha256: str):
        path = self._path(sha256)
        try:
            return open(path, "rb")
        except FileNotFoundError as e:
            raise NotFound("Stored object is missing.") from e
        except OSError as e:
            raise DataUnavailable("Stored object could not be read.") from e

    def read(self, sha256: str, *, expected_size: int | None = None,
             digest: str | None = None) -> bytes:
        with self._open(sha256) as f:
            try:
                if expected_size is not None and os.fstat(f.fileno()).st_size != expected_size:
                    raise ChecksumMismatch("Stored object has the wrong size.")
                data = f.read()
            except OSError as e:
                raise DataUnavailable("Stored object could not be read.") from e
        if not object_ok(data, sha256, digest):
            raise ChecksumMismatch("Stored object failed its integrity check.")
        return data

    def read_framed(self, sha256: str, head: bytes, tail: bytes, *,
                    expected_size: int | None = None, digest: str | None = None
                    ) -> bytearray:
        """One buffer sized from fstat, the object read into its middle (no copy of
        the object after the read; plain fd calls, no buffered file object); the
        object is verified in place (:meth:`read`'s checks and errors)."""
        path = self._path(sha256)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise NotFound("Stored object is missing.") from e
        except OSError as e:
            raise DataUnavailable("Stored object could not be read.") from e
        try:
            size = os.fstat(fd).st_size
            if expected_size is not None and size != expected_size:
                raise ChecksumMismatch("Stored object has the wrong size.")
            h = len(head)
            buf = bytearray(h + size + len(tail))
            buf[:h] = head
            body = memoryview(buf)[h:h + size]
            got = 0
            while got < size:
                n = os.readv(fd, [body[got:]])
                if n == 0:
                    break
                got += n
            if got != size:   # truncated since the fstat
                raise ChecksumMismatch("Stored object is shorter than its size.")
        except OSError as e:
            raise DataUnavailable("Stored object could not be read.") from e
        finally:
            os.close(fd)
        ok = object_ok(body, sha256, digest)
        body.release()
        if not ok:
            raise ChecksumMismatch("Stored object failed its integrity check.")
        buf[h + size:] = tail
        return buf

    def read_framed_nowait(self, sha256: str, head: bytes, tail: bytes, *,
                           expected_size: int | None = None, digest: str | None = None
                           ) -> bytearray | None:
        """:meth:`read_framed` with ``preadv(..., RWF_NOWAIT)``: the kernel copies from
        the page cache and answers EAGAIN instead of starting device I/O, so this can run
        on an event loop (no thread hop per object). None when a page is not cached, or
        on any problem (the caller's :meth:`read_framed` then re-reads and reports it).
        The open and fstat are metadata calls on an object the kernel holds in memory
        when its pages are cached (they can block only when the directory entry was
        evicted while the pages were not, which is rare)."""
        if _RWF_NOWAIT is None:
            return None
        try:
            fd = os.open(self._path(sha256), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            size = os.fstat(fd).st_size
            if expected_size is not None and size != expected_size:
                return None
            h = len(head)
            buf = bytearray(h + size + len(tail))
            buf[:h] = head
            with memoryview(buf) as view:
                body = view[h:h + size]
                got = 0
                while got < size:
                    n = os.preadv(fd, [body[got:]], got, _RWF_NOWAIT)
                    if n <= 0:
                        break   # truncated since the fstat: the pool read reports it
                    got += n
                ok = got == size and object_ok(body, sha256, digest)
                body.release()
        except OSError:
            return None         # EAGAIN (not cached), EOPNOTSUPP, EIO ...
        finally:
            os.close(fd)
        if not ok:
            return None
        buf[h + size:] = tail
        return buf

    def read_range(self, sha256: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        with self._open(sha256) as f:
            parts: list[bytes] = []
            got = 0
            try:
                while got < length:
                    b = os.pread(f.fileno(), length - got, offset + got)
                    if not b:
                        break
                    parts.append(b)
                    got += len(b)
            except OSError as e:
                raise DataUnavailable("Stored object could not be read.") from e
        if got != length:
            raise DataUnavailable("Stored object is shorter than the requested range.")
        return b"".join(parts)

    def open_verified(self, sha256: str, chunk_size: int = CHUNK, *,
                      digest: str | None = None) -> Iterator[bytes]:
        return verified_chunks(self._open(sha256), sha256, chunk_size, digest=digest)

    def _stat(self, sha256: str) -> os.stat_result | None:
        try:
            return os.stat(self._path(sha256))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise OutOfResources("The local object store is not readable.") from e

    def exists(self, sha256: str) -> bool:
        return self._stat(sha256) is not None

    def size(self, sha256: str) -> int | None:
        st = self._stat(sha256)
        return None if st is None else st.st_size

    # --- maintenance --------------------------------------------------------------------

    def delete(self, sha256: str) -> None:
        path = self._path(sha256)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise OutOfResources("The object could not be deleted.") from e
        try:
            fsync_dir(os.path.dirname(path))  # make the deletion durable (FT-13 resume)
        except OSError as e:
            raise OutOfResources("The deletion could not be made durable.") from e

    def iter_keys(self) -> Iterator[str]:
        try:
            for a in sorted(_listdir(self._objects)):
                if a not in _HEX2:
                    continue
                da = os.path.join(self._objects, a)
                if self._levels == 1:
                    for name in sorted(_listdir(da)):
                        if (name.startswith(a) and is_sha256(name)
                                and os.path.isfile(os.path.join(da, name))):
                            yield name
                    continue
                for b in sorted(_listdir(da)):
                    if b not in _HEX2:
                        continue
                    db = os.path.join(da, b)
                    for name in sorted(_listdir(db)):
                        if (name.startswith(a + b) and is_sha256(name)
                                and os.path.isfile(os.path.join(db, name))):
                            yield name
        except OSError as e:
            raise OutOfResources("The local object store could not be listed.") from e

    def cleanup_temp(self, older_than_s: float) -> int:
        try:
            return (remove_stale_files(self._tmp, older_than_s)
                    + remove_stale_files(self._staging, older_than_s))
        except OSError as e:
            raise OutOfResources("Temporary files could not be cleaned up.") from e


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
