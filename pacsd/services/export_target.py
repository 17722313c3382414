"""Where an export is written or read (R-A11): a local directory (``os`` calls: temp
file, fsync, rename, so no half file sits under a final name) or any fsspec URL, with
``s3://`` opened like the blob store's S3 copies (``[storage]`` options). Used by
``export.py`` (write, verify) and ``import_export.py`` (read)."""
from __future__ import annotations

import hashlib
import os
from typing import Any
from urllib.parse import urlsplit

from ..errors import BadRequest
from ..store import s3_filesystem
from ..store.base import CHUNK

__all__ = ["Target", "redacted"]


def redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        parts = parts._replace(netloc=parts.hostname or "")
    return parts.geturl()


# --- targets -----------------------------------------------------------------------------

class Target:
    """Where an export goes: an fsspec filesystem and a root. Local directories are
    written with ``os`` calls (temp file, fsync, rename: no half file under the final
    name); other filesystems through fsspec (S3 makes an object visible only when its
    upload completes)."""

    fs: Any

    def __init__(self, url: str, **s3_options: Any) -> None:
        if not url or "\0" in url:
            raise BadRequest("export target URL is empty or invalid")
        self.url = url
        parts = urlsplit(url)
        scheme = parts.scheme.lower() if "://" in url else ""
        self.local: str | None = None
        if scheme in ("", "file"):
            path = parts.path if scheme else url
            self.local = os.path.abspath(os.path.expanduser(path))
            self.fs = None  # plain os calls (module docstring)
            self.root = self.local
        elif scheme in ("s3", "s3a"):
            if not parts.netloc:
                raise BadRequest("s3:// export URLs must name a bucket")
            opts = {k: v for k, v in s3_options.items() if v}
            self.fs = s3_filesystem(**opts)
            self.root = f"{parts.netloc}/{parts.path.strip('/')}".rstrip("/")
        else:
            import fsspec
            self.fs, self.root = fsspec.core.url_to_fs(url)
            self.root = self.root.rstrip("/")

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def size(self, rel: str) -> int | None:
        try:
            if self.local is not None:
                return os.stat(self.path(rel)).st_size
            return int(self.fs.info(self.path(rel))["size"])
        except FileNotFoundError:
            return None

    def open_read(self, rel: str):
        if self.local is not None:
            return open(self.path(rel), "rb")
        return self.fs.open(self.path(rel), "rb", block_size=CHUNK)

    def hash(self, rel: str) -> tuple[str, int] | None:
        """(sha256, size) of a file at the target, or None when it is not there."""
        try:
            with self.open_read(rel) as f:
                h, n = hashlib.sha256(), 0
                while True:
                    b = f.read(CHUNK)
                    if not b:
                        return h.hexdigest(), n
                    h.update(b)
                    n += len(b)
        except FileNotFoundError:
            return None

    def write(self, rel: str, chunks) -> tuple[str, int]:
        """Write ``chunks`` to ``rel``; returns (sha256, size) of what was written."""
        h, n = hashlib.sha256(), 0
        if self.local is not None:
            final = self.path(rel)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            tmp = f"{final}.part"
            try:
                with open(tmp, "wb") as f:
                    for b in chunks:
                        f.write(b)
                        h.update(b)
                        n += len(b)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            return h.hexdigest(), n
        with self.fs.open(self.path(rel), "wb") as f:
            for b in chunks:
                f.write(b)
                h.update(b)
                n += len(b)
        return h.hexdigest(), n

    def write_bytes(self, rel: str, data: bytes) -> tuple[str, int]:
        return self.write(rel, [data])

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            with self.open_read(rel) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def remove(self, rel: str) -> None:
        try:
            if self.local is not None:
                os.unlink(self.path(rel))
            else:
                self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass

    def list_dir(self, rel: str) -> list[str]:
        try:
            if self.local is not None:
                return sorted(os.listdir(self.path(rel)))
            return sorted(p.rstrip("/").rsplit("/", 1)[-1]
                          for p in self.fs.ls(self.path(rel), detail=False))
        except FileNotFoundError:
            return []
