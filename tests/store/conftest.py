"""Fixtures for the blob-store conformance suite (R-A6).

``store`` is parameterised over every backend: a local directory, fsspec memory, and S3
against a real S3-protocol server (moto's threaded server, started once per session by
:func:`tests.s3server.s3_server`). ``tamper`` changes or removes an object *behind the
store's back*, the way a failing disk or another process would (FT-5, FT-6): on the
local disk through the file, on memory through the filesystem, on S3 through a separate
s3fs client.
"""
from __future__ import annotations

import itertools
import os
import uuid
from typing import Iterator

import pytest

from pacsd.store import BlobStore, FsspecBlobStore, open_store, s3_filesystem
from tests.s3server import S3Server, s3_server

BUCKET = "pacsd-test"


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    with s3_server() as srv:
        srv.create_bucket(BUCKET)
        yield srv


@pytest.fixture(scope="session")
def s3_fs(s3):
    """One s3fs filesystem for the session, built exactly as open_store builds it.

    Creating a botocore client costs ~0.2 s; sharing it keeps the suite fast. Each test
    still gets its own store under a fresh prefix. ``open_store("s3://...")`` itself is
    covered in test_store_s3.py.
    """
    return s3_filesystem(**s3.store_options())


@pytest.fixture(scope="session")
def s3_tamper_fs(s3):
    """An independent s3fs client: tampering never goes through the store's filesystem."""
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=s3.endpoint_url, key="testing", secret="testing",
                             skip_instance_cache=True, use_listings_cache=False)


class Tamper:
    """Modify stored objects without going through the store under test."""

    def __init__(self, store: BlobStore, fs=None, root: str | None = None) -> None:
        self.store, self.fs, self.root = store, fs, root

    def _key(self, sha: str) -> str:
        return f"{self.root}/objects/{sha[:2]}/{sha[2:4]}/{sha}"

    def overwrite(self, sha: str, data: bytes) -> None:
        path = self.store.local_path(sha)
        if path is not None:
            with open(path, "wb") as f:
                f.write(data)
        else:
            self.fs.pipe_file(self._key(sha), data)

    def remove(self, sha: str) -> None:
        path = self.store.local_path(sha)
        if path is not None:
            os.unlink(path)
        else:
            self.fs.rm_file(self._key(sha))

    def put_raw(self, relpath: str, data: bytes) -> None:
        """Write a stray object at ``<root>/<relpath>`` (not a valid key)."""
        if self.store.local_path("0" * 64) is not None:
            p = os.path.join(self.store.root, relpath)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(data)
        else:
            self.fs.pipe_file(f"{self.root}/{relpath}", data)


_counter = itertools.count()


@pytest.fixture(params=["local", "memory", "s3", "local-encrypted", "s3-encrypted"])
def backend(request, tmp_path) -> Iterator[tuple[BlobStore, Tamper]]:
    """Every backend; ``*-encrypted``: the same copy behind EncryptedBlobStore (R-G1),
    tampered through the raw copy underneath (plaintext bytes written there are read as
    a plaintext object, so the contract's checks apply unchanged)."""
    kind = request.param
    if kind.endswith("-encrypted"):
        from pacsd.store.crypto import EncryptedBlobStore, Keyring

        request.param = kind.split("-")[0]  # build the plain copy, then wrap it
        ring = Keyring.init(str(tmp_path / "keys"))
        gen = backend.__wrapped__(request, tmp_path)
        inner, tamper = next(gen)
        try:
            yield EncryptedBlobStore(inner, ring, segment_size=1024), tamper
        finally:
            gen.close()
        return
    if kind == "local":
        store = open_store(str(tmp_path / "store"))
        tamper = Tamper(store)
    elif kind == "memory":
        import fsspec

        name = f"pacsd-test-{uuid.uuid4().hex}"
        store = open_store(f"memory://{name}", staging_dir=str(tmp_path / "staging"))
        tamper = Tamper(store, fsspec.filesystem("memory"), f"/{name}")
    else:
        prefix = f"t{next(_counter)}-{uuid.uuid4().hex[:8]}"
        root = f"{BUCKET}/{prefix}"
        store = FsspecBlobStore(request.getfixturevalue("s3_fs"), root, url=f"s3://{root}",
                                staging_dir=str(tmp_path / "staging"))
        tamper = Tamper(store, request.getfixturevalue("s3_tamper_fs"), root)
    try:
        yield store, tamper
    finally:
        store.close()


@pytest.fixture
def store(backend) -> BlobStore:
    return backend[0]


@pytest.fixture
def tamper(backend) -> Tamper:
    return backend[1]
