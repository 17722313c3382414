"""L2: the content-addressed blob store (R-A6, reliability-matrix §7 items 1, 4, 5).

Objects are named by the SHA-256 of their bytes, never by DICOM UIDs (BI-6). One
:class:`BlobStore` is one copy; :func:`open_store` builds one from a URL:

* ``file:///abs/path`` or a plain filesystem path -> :class:`LocalBlobStore`, which uses
  ``os`` directly for ``fsync`` + ``rename`` durability (fsspec's ``LocalFileSystem`` has
  no fsync, so it cannot give the §7 item 1 guarantees);
* ``s3://bucket/prefix`` -> :class:`FsspecBlobStore` over s3fs, with listing caches off
  (``use_listings_cache=False``, ``skip_instance_cache=True``) so a scrubber never sees a
  stale listing (§7 items 4, 5);
* ``memory://name`` -> :class:`FsspecBlobStore` over fsspec's in-memory filesystem (tests;
  note that fsspec's memory filesystem is process-global, so equal URLs share objects).

This module may import only :mod:`pacsd.errors`, fsspec, s3fs, cryptography (crypto.py),
xxhash (base.py) and the standard library;
never pydicom, aiohttp or sqlalchemy (ARCHITECTURE layering).
"""
from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

from pacsd.errors import BadRequest
from pacsd.store.base import (BlobStore, ChecksumMismatch, HashingWriter, IntegrityMismatch,
                              check_sha256, fast_digest, hash_digests, hash_stream,
                              is_sha256, sha256_hex, usable_digest)
from pacsd.store.fsspec_store import FsspecBlobStore
from pacsd.store.local import LocalBlobStore

__all__ = ["BlobStore", "ChecksumMismatch", "FsspecBlobStore", "HashingWriter",
           "IntegrityMismatch", "LocalBlobStore", "check_sha256", "fast_digest",
           "hash_digests", "hash_stream", "is_sha256", "open_store", "s3_filesystem",
           "sha256_hex", "usable_digest"]

#: Options understood by FsspecBlobStore itself; the rest go to the filesystem.
_STORE_OPTIONS = ("staging_dir", "retries", "backoff", "conditional_create",
                  "verify_after_put", "multipart_chunksize")

#: Conservative transport defaults so a dead endpoint fails in seconds, not minutes
#: (FT-4: bounded retries; our own retry loop sits on top). Override via config_kwargs.
_S3_CONFIG_DEFAULTS = {"connect_timeout": 5, "read_timeout": 60,
                       "retries": {"max_attempts": 1, "mode": "standard"}}  # = 1 retry


def open_store(url: str, **options: Any) -> BlobStore:
    """Open one copy of the blob store named by ``url``.

    S3 options: ``endpoint_url``, ``key``, ``secret``, ``token``, ``region``,
    ``client_kwargs``, ``config_kwargs``, ``s3fs_retries`` and any other
    :class:`s3fs.S3FileSystem` argument (see :func:`s3_filesystem`). Store options for S3/memory: see :class:`FsspecBlobStore`
    (``staging_dir``, ``retries``, ``backoff``, ``conditional_create``,
    ``verify_after_put``, ``multipart_chunksize``). The local store takes no options.
    Unsupported URLs raise :class:`pacsd.errors.BadRequest`.
    """
    if not isinstance(url, str) or not url or "\0" in url:
        raise BadRequest("Invalid storage URL.")
    if "://" not in url:
        return _local(url, options)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise BadRequest("file:// storage URLs must name a local absolute path.")
        return _local(unquote(parts.path), options)
    if scheme in ("s3", "s3a"):
        return _s3(parts, options)
    if scheme == "memory":
        import fsspec

        fs = fsspec.filesystem("memory", skip_instance_cache=True)
        root = fs._strip_protocol(url).rstrip("/") or "/pacsd"
        store_opts = {k: options.pop(k) for k in _STORE_OPTIONS if k in options}
        if options:
            raise BadRequest("Unknown storage option(s): " + ", ".join(sorted(options)))
        return FsspecBlobStore(fs, root, url=f"memory://{root.lstrip('/')}", **store_opts)
    raise BadRequest("Unsupported storage URL scheme.")


def _local(path: str, options: dict[str, Any]) -> LocalBlobStore:
    if options:
        raise BadRequest("Unknown storage option(s): " + ", ".join(sorted(options)))
    if not path:
        raise BadRequest("Invalid storage URL.")
    return LocalBlobStore(os.path.abspath(path))


def _s3(parts: Any, options: dict[str, Any]) -> FsspecBlobStore:
    bucket = parts.netloc
    if not bucket:
        raise BadRequest("s3:// storage URLs must name a bucket.")
    prefix = parts.path.strip("/")
    root = f"{bucket}/{prefix}" if prefix else bucket
    store_opts = {k: options.pop(k) for k in _STORE_OPTIONS if k in options}
    return FsspecBlobStore(s3_filesystem(**options), root, url=f"{parts.scheme}://{root}",
                           **store_opts)


def s3_filesystem(**options: Any) -> Any:
    """An :class:`s3fs.S3FileSystem` configured as :func:`open_store` does for ``s3://``.

    Listing and instance caches are off (§7 items 4, 5: a scrubber must never see a stale
    listing, and each store owns its connection pool). ``region`` is a shorthand for
    ``client_kwargs["region_name"]``; ``config_kwargs`` are merged over conservative
    timeout/retry defaults; ``s3fs_retries`` (default 1 = no s3fs-level retry) sets
    s3fs's internal retry count. Exposed so callers (and tests) can share one filesystem
    between several :class:`FsspecBlobStore` s on the same endpoint.
    """
    import s3fs

    client_kwargs = dict(options.pop("client_kwargs", None) or {})
    region = options.pop("region", None)
    if region:
        client_kwargs.setdefault("region_name", region)
    given = dict(options.pop("config_kwargs", None) or {})
    config_kwargs = {**_S3_CONFIG_DEFAULTS, **given}
    # Merge, not replace, the retries dict: a caller's {"max_attempts": n} alone would
    # otherwise drop "mode" and silently select botocore's legacy retry mode.
    config_kwargs["retries"] = {**_S3_CONFIG_DEFAULTS["retries"], **given.get("retries", {})}
    s3fs_retries = int(options.pop("s3fs_retries", 1))
    fs = s3fs.S3FileSystem(client_kwargs=client_kwargs, config_kwargs=config_kwargs,
                           use_listings_cache=False, skip_instance_cache=True, **options)
    # s3fs retries internally (5 times by default) under botocore's own retries and
    # FsspecBlobStore's loop: the attempts multiply. Let FsspecBlobStore own the bounded
    # retry/backoff policy (FT-4) so a dead endpoint fails in seconds.
    fs.retries = max(1, s3fs_retries)
    return fs
