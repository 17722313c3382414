"""L2: one copy of one object, checked and repaired: the building blocks of scrub and
repair-on-read (R-A6; reliability-matrix §3 target 3, FT-5..FT-9, §7 items 4 and 6).

:func:`check_copy` classifies a copy with dcm4chee's storage-verification states
(:class:`CopyState`); :func:`copy_object` rewrites a copy from another whose SHA-256 is
valid (the hash decides, never a majority: FT-7); :func:`object_mtime` gives an object's
age for the scrubber's orphan grace period. They work on any :class:`BlobStore`.
"""
from __future__ import annotations

import datetime as _dt
import enum
import os

from pacsd.errors import DataUnavailable, NotFound, OutOfResources
from pacsd.store.base import (BlobStore, ChecksumMismatch, HashingWriter, check_sha256,
                              check_size)

__all__ = ["CopyState", "check_copy", "copy_object", "object_mtime"]


class CopyState(str, enum.Enum):
    """What one copy of one object looks like (dcm4chee storage verification names)."""

    OK = "OK"
    MISSING = "MISSING"                        # dcm4chee MISSING_OBJECT (FT-5)
    DIFFERING_SIZE = "DIFFERING_SIZE"          # DIFFERING_OBJECT_SIZE (FT-6 truncation)
    DIFFERING_CHECKSUM = "DIFFERING_CHECKSUM"  # DIFFERING_OBJECT_CHECKSUM (FT-6)
    UNREACHABLE = "UNREACHABLE"                # FAILED_TO_FETCH (FT-4: backend down)

    @property
    def repairable(self) -> bool:
        """States a write from a good copy fixes (an unreachable copy cannot be written)."""
        return self in (CopyState.MISSING, CopyState.DIFFERING_SIZE,
                        CopyState.DIFFERING_CHECKSUM)


def check_copy(store: BlobStore, sha256: str, size: int | None = None) -> CopyState:
    """Classify one copy of one object by reading it whole and hashing it (§7 item 4).

    ``size`` is the size recorded in the index: a different stored size is DIFFERING_SIZE
    without reading the bytes. A copy whose backend cannot be reached is UNREACHABLE, never
    reported as corrupt.
    """
    check_sha256(sha256)
    try:
        got = store.size(sha256)
    except (OutOfResources, DataUnavailable):
        return CopyState.UNREACHABLE
    if got is None:
        return CopyState.MISSING
    if size is not None and got != size:
        return CopyState.DIFFERING_SIZE
    try:
        for _ in store.open_verified(sha256):
            pass
    except NotFound:
        return CopyState.MISSING
    except ChecksumMismatch:
        return CopyState.DIFFERING_CHECKSUM
    except (DataUnavailable, OutOfResources):
        return CopyState.UNREACHABLE
    return CopyState.OK


def copy_object(source: BlobStore, target: BlobStore, sha256: str, size: int,
                staging_dir: str) -> bool:
    """Rewrite ``target``'s copy from ``source`` (repair, FT-5..FT-7); True if written.

    The bytes are hash-checked twice: while read from ``source`` (a bad source raises
    ChecksumMismatch, or IntegrityMismatch when ``target`` copies straight from a local
    source file, and nothing is written) and by ``target.put_file``, which verifies the
    bytes it writes. A corrupt object already in ``target`` is overwritten (both
    backends heal on write). Hash decides, never majority (FT-7).
    """
    check_sha256(sha256)
    check_size(size)
    from pacsd.store.crypto import key_scope, scope_of
    # An encrypted target keeps the key scope (institution) of the source copy (R-G1).
    with key_scope(scope_of(source, sha256)):
        return _copy_object(source, target, sha256, size, staging_dir)


def _copy_object(source: BlobStore, target: BlobStore, sha256: str, size: int,
                 staging_dir: str) -> bool:
    path = source.local_path(sha256)
    if path is not None and os.path.isfile(path):
        # put_file re-hashes the source while copying: a source corrupted since it was
        # checked is refused (IntegrityMismatch), never copied.
        return target.put_file(path, sha256, size)
    with HashingWriter(staging_dir, max_size=size, prefix="repair-") as w:
        for chunk in source.open_verified(sha256):
            w.write(chunk)
        tmp, got, n = w.finish()
        try:
            if (got, n) != (sha256, size):
                raise ChecksumMismatch("The source copy failed its integrity check.")
            return target.put_file(tmp, sha256, size)
        finally:
            w.abort()  # removes the temp file (idempotent)


def object_mtime(store: BlobStore, sha256: str) -> float | None:
    """Last modification time (POSIX seconds) of one copy of an object, None if unknown.

    Used by the scrubber's orphan grace period (an object written by an upload whose index
    commit is still to come is not an orphan yet, §7 item 2).
    """
    store = getattr(store, "inner", store)  # an encrypted copy: the raw copy's age
    path = store.local_path(sha256)
    if path is not None:
        try:
            return os.stat(path).st_mtime
        except OSError:
            return None
    fs, root = getattr(store, "fs", None), getattr(store, "root", None)
    if fs is None or root is None:
        return None
    try:
        info = fs.info(f"{root}/objects/{sha256[:2]}/{sha256[2:4]}/{sha256}")
    except Exception:  # noqa: BLE001 - unknown age: the caller decides
        return None
    for name in ("LastModified", "mtime", "created"):
        v = info.get(name)
        if isinstance(v, _dt.datetime):
            if v.tzinfo is None:
                v = v.replace(tzinfo=_dt.timezone.utc)
            return v.timestamp()
        if isinstance(v, (int, float)):
            return float(v)
    return None
