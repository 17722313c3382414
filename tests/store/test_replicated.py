"""ReplicatedStore (R-A6): the whole blob-store conformance suite run against replicated
stores, plus what only replication adds — reads that fall back and never serve bad bytes
(FT-5, FT-6, FT-7, FT-8), writes acknowledged only when every copy is durable (FT-3,
FT-4, FT-12), repair-on-read, and the per-copy classification the scrubber uses.

Real parts only: local directories, fsspec memory, and S3 on a real S3-protocol server
(moto's threaded server from tests/store/conftest.py).
"""
from __future__ import annotations

import hashlib
import itertools
import os
import uuid

import pytest

from pacsd.errors import BadRequest, DataUnavailable, NotFound, OutOfResources
from pacsd.store import FsspecBlobStore, IntegrityMismatch, open_store
from pacsd.store.replicated import (CopyState, ReplicatedStore, check_copy, copies_of,
                                    copy_object, object_mtime, open_replicated)
from tests.s3server import s3_server
from tests.store.conftest import BUCKET, Tamper
# The conformance suite, collected again here with this module's ``backend`` fixture.
from tests.store.test_store_conformance import *  # noqa: F401,F403
from tests.store.test_store_conformance import DATA, sha, staged

_counter = itertools.count()


class ReplicatedTamper:
    """Tamper with EVERY copy, so the single-copy contract the conformance suite checks
    (e.g. "a corrupt object is refused") holds for the replicated store as a whole."""

    def __init__(self, tampers: list[Tamper]) -> None:
        self.tampers = tampers

    def overwrite(self, sha: str, data: bytes) -> None:
        for t in self.tampers:
            t.overwrite(sha, data)

    def remove(self, sha: str) -> None:
        for t in self.tampers:
            t.remove(sha)

    def put_raw(self, relpath: str, data: bytes) -> None:
        for t in self.tampers:
            t.put_raw(relpath, data)


def _copy(kind: str, request, tmp_path, n: int):
    if kind == "local":
        store = open_store(str(tmp_path / f"copy{n}"))
        return store, Tamper(store)
    if kind == "memory":
        import fsspec

        name = f"pacsd-rep-{uuid.uuid4().hex}"
        store = open_store(f"memory://{name}", staging_dir=str(tmp_path / f"staging{n}"))
        return store, Tamper(store, fsspec.filesystem("memory"), f"/{name}")
    root = f"{BUCKET}/r{next(_counter)}-{uuid.uuid4().hex[:8]}"
    store = FsspecBlobStore(request.getfixturevalue("s3_fs"), root, url=f"s3://{root}",
                            staging_dir=str(tmp_path / f"staging{n}"))
    return store, Tamper(store, request.getfixturevalue("s3_tamper_fs"), root)


@pytest.fixture(params=["local+local+memory", "local+s3"])
def backend(request, tmp_path):
    """Overrides conftest's ``backend`` for the conformance tests imported above."""
    parts = [_copy(kind, request, tmp_path, n)
             for n, kind in enumerate(request.param.split("+"))]
    store = ReplicatedStore([p[0] for p in parts], repair_on_read=False)
    try:
        yield store, ReplicatedTamper([p[1] for p in parts])
    finally:
        store.close()


def test_url_and_repr(store):  # replaces the conformance test of the same name
    assert store.url.startswith("replicated:")
    for c in store.copies:
        assert c.url in store.url
    assert store.url in repr(store)


# --- replication-specific behaviour ------------------------------------------------------

def make(tmp_path, kinds=("local", "local", "memory"), request=None, **kw):
    parts = [_copy(k, request, tmp_path, n) for n, k in enumerate(kinds)]
    events = []
    store = ReplicatedStore([p[0] for p in parts], on_damage=events.append, **kw)
    store.events = events
    return store, [p[1] for p in parts]


@pytest.fixture
def three(tmp_path):
    """Two local copies and one memory copy, with repair-on-read, and its tampers."""
    store, tampers = make(tmp_path)
    try:
        yield store, tampers
    finally:
        store.close()


BITFLIP = DATA[:5000] + bytes([DATA[5000] ^ 0x01]) + DATA[5001:]
DAMAGE = {"bitflip": BITFLIP, "truncate": DATA[:-7],
          "same_size_other_bytes": bytes(len(DATA))}


def states(store, key, size=len(DATA)):
    return [check_copy(c, key, size) for c in store.copies]


def test_put_writes_every_copy_and_stages_in_first_local(three):
    store, _ = three
    assert store.staging_dir() == store.copies[0].staging_dir()
    path, key, size = staged(store, DATA)
    assert store.put_file(path, key, size, move=True) is True
    assert not os.path.exists(path)
    assert states(store, key) == [CopyState.OK] * 3
    assert store.put_bytes(DATA) == key  # idempotent (BI-25)


KINDS = pytest.mark.parametrize(
    "kinds", [("local", "local", "memory"), ("memory", "local"), ("s3", "local")],
    ids="+".join)


@KINDS
def test_FT5_deleted_copy_read_falls_back_and_is_repaired(request, tmp_path, kinds):
    """The copy read first is deleted (each backend): the read is served by another
    copy, the loss is reported and repaired in the background (repair-on-read)."""
    store, tampers = make(tmp_path, kinds, request)
    try:
        key = store.put_bytes(DATA)
        tampers[0].remove(key)
        assert store.read(key, expected_size=len(DATA)) == DATA
        store.wait_repairs(10)
        assert states(store, key) == [CopyState.OK] * len(kinds)
        ev = [(e.copy_index, e.state, e.action) for e in store.events]
        assert ev == [(0, CopyState.MISSING, "detected"), (0, CopyState.MISSING, "repaired")]
    finally:
        store.close()


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@KINDS
def test_FT6_damaged_copy_never_served(request, tmp_path, damage, kinds):
    """Bit flip, truncation, or other bytes of the same size on the first copy (each
    backend): read, stream and verify serve the good copy; the bad one is reported."""
    store, tampers = make(tmp_path, kinds, request, repair_on_read=False)
    try:
        key = store.put_bytes(DATA)
        tampers[0].overwrite(key, DAMAGE[damage])
        assert store.read(key, expected_size=len(DATA)) == DATA
        assert b"".join(store.open_verified(key, chunk_size=1000)) == DATA
        assert store.verify(key) is True
        expected = CopyState.DIFFERING_SIZE if damage == "truncate" else \
            CopyState.DIFFERING_CHECKSUM
        assert states(store, key)[0] is expected
        assert [(e.copy_index, e.state, e.during) for e in store.events] == [
            (0, expected, "read")]
    finally:
        store.close()


def test_FT6_stream_from_bad_first_copy_then_retry_reads_good_copy(three):
    """Bytes already sent when the hash fails at EOF: the stream raises (the adapter
    aborts the response) and the copy is marked, so the client's retry gets good bytes."""
    store, tampers = three
    store.repair_on_read = False
    key = store.put_bytes(DATA)
    tampers[0].overwrite(key, BITFLIP)
    # verify() would reorder the copies; stream straight from copy 0 first.
    with pytest.raises(DataUnavailable):
        b"".join(store.open_verified(key, chunk_size=1000))
    assert b"".join(store.open_verified(key, chunk_size=1000)) == DATA
    assert store.local_path(key) == store.copies[1].local_path(key)


def test_stream_falls_back_before_first_byte(three):
    store, tampers = three
    key = store.put_bytes(DATA)
    tampers[0].overwrite(key, b"")  # hash fails at EOF before any byte was sent
    assert b"".join(store.open_verified(key)) == DATA
    assert [(e.copy_index, e.during) for e in store.events] == [(0, "stream")]


def test_FT7_two_of_three_bad_repaired_from_single_good(three):
    store, tampers = three
    key = store.put_bytes(DATA)
    tampers[0].overwrite(key, BITFLIP)
    tampers[1].overwrite(key, BITFLIP)  # the majority agrees on the wrong bytes
    assert store.read(key) == DATA
    store.wait_repairs(10)
    assert states(store, key) == [CopyState.OK] * 3
    for c in store.copies:
        assert hashlib.sha256(c.read(key)).hexdigest() == key


def test_FT8_all_copies_bad_nothing_served(three):
    store, tampers = three
    key = store.put_bytes(DATA)
    tampers[0].overwrite(key, BITFLIP)
    tampers[1].remove(key)
    tampers[2].overwrite(key, DATA[:100])
    with pytest.raises(DataUnavailable) as ei:
        store.read(key)
    assert ei.value.http_status == 503
    with pytest.raises(DataUnavailable):
        b"".join(store.open_verified(key))
    assert store.verify(key) is False
    store.wait_repairs(10)
    assert all(e.action != "repaired" for e in store.events)


def test_read_range_falls_back_on_missing_or_short_copy(three):
    store, tampers = three
    store.repair_on_read = False
    key = store.put_bytes(DATA)
    tampers[0].remove(key)
    tampers[1].overwrite(key, DATA[:100])
    assert store.read_range(key, 5000, 100) == DATA[5000:5100]


def test_verify_prefers_good_copy_for_ranges(three):
    """retrieve's bulk path: verify(), then read_range() reads the copy that verified."""
    store, tampers = three
    store.repair_on_read = False
    key = store.put_bytes(DATA)
    tampers[0].overwrite(key, bytes(len(DATA)))
    assert store.verify(key) is True
    assert store.read_range(key, 0, 10) == DATA[:10]
    assert store.local_path(key) == store.copies[1].local_path(key)


def test_exists_size_and_delete_span_copies(three):
    store, tampers = three
    key = store.put_bytes(DATA)
    tampers[0].remove(key)
    assert store.exists(key) and store.size(key) == len(DATA)
    store.delete(key)
    assert [c.exists(key) for c in store.copies] == [False] * 3
    assert not store.exists(key) and store.size(key) is None


def test_iter_keys_is_union_of_copies(three):
    store, tampers = three
    a, b = store.put_bytes(b"a"), store.put_bytes(b"b")
    tampers[0].remove(a)
    tampers[1].remove(b)
    assert list(store.iter_keys()) == sorted({a, b})


# --- writes: every copy or nothing acknowledged (FT-3, FT-4, FT-12) -----------------------

def test_write_fails_if_any_copy_fails_and_source_is_kept(tmp_path, s3_fs):
    """The middle copy is a bucket the (real) S3 server does not have: every write to it
    fails. The store refuses the whole write (503, nothing acknowledged)."""
    good = [open_store(str(tmp_path / "a")), open_store(str(tmp_path / "b"))]
    bad = FsspecBlobStore(s3_fs, "no-such-bucket/p", url="s3://no-such-bucket/p",
                          staging_dir=str(tmp_path / "s"), retries=0)
    store = ReplicatedStore([good[0], bad, good[1]])
    try:
        path, key, size = staged(store, DATA)
        with pytest.raises(OutOfResources) as ei:
            store.put_file(path, key, size, move=True)
        assert ei.value.http_status == 503 and ei.value.headers["Retry-After"]
        assert os.path.exists(path)  # left to the caller (ingest discards it)
        # Policy: the copy written before the failure stays (an unindexed orphan that the
        # scrubber reports); the primary is renamed into only after all others succeeded.
        assert not good[0].exists(key) and good[1].exists(key)
    finally:
        store.close()


def test_wrong_source_is_integrity_mismatch_not_outage(three, tmp_path):
    store, _ = three
    src = tmp_path / "src"
    src.write_bytes(DATA)
    with pytest.raises(IntegrityMismatch):
        store.put_file(str(src), sha(b"other"), len(DATA))
    assert list(store.iter_keys()) == []


def test_FT4_s3_copy_down_write_refused_reads_fall_back(tmp_path):
    """A real S3 server stopped: writes answer OutOfResources quickly (bounded retries);
    reads of existing objects come from the local copies."""
    with s3_server() as srv:
        srv.create_bucket("ft4")
        store = open_replicated(
            [{"url": str(tmp_path / "a")}, {"url": str(tmp_path / "b")},
             {"url": "s3://ft4/p", **srv.store_options(retries=1, backoff=0.05)}])
        key = store.put_bytes(DATA)
    try:
        assert store.read(key) == DATA  # S3 copy is last in order: not even asked
        with pytest.raises(OutOfResources):
            store.put_bytes(b"new object while S3 is down")
        s3 = store.copies[2]
        assert check_copy(s3, key, len(DATA)) is CopyState.UNREACHABLE
        store.copies[0].delete(key)
        store.copies[1].delete(key)
        with pytest.raises(DataUnavailable) as ei:  # not NotFound: S3 may still hold it
            store.read(key)
        assert not isinstance(ei.value, NotFound)
    finally:
        store.close()


# --- building blocks ----------------------------------------------------------------------

def test_check_copy_and_copy_object(tmp_path):
    a, b = open_store(str(tmp_path / "a")), open_store(str(tmp_path / "b"))
    key = a.put_bytes(DATA)
    assert check_copy(b, key, len(DATA)) is CopyState.MISSING
    assert copy_object(a, b, key, len(DATA), str(tmp_path)) is True
    assert check_copy(b, key, len(DATA)) is CopyState.OK
    assert check_copy(b, key, len(DATA) + 1) is CopyState.DIFFERING_SIZE
    assert object_mtime(b, key) is not None
    Tamper(a).overwrite(key, BITFLIP)
    with pytest.raises((DataUnavailable, IntegrityMismatch)):  # never copy a bad source
        copy_object(a, open_store(str(tmp_path / "c")), key, len(DATA), str(tmp_path))


def test_open_replicated(tmp_path):
    one = open_replicated([{"url": str(tmp_path / "a")}])
    assert not isinstance(one, ReplicatedStore) and copies_of(one) == (one,)
    one.close()
    with pytest.raises(BadRequest):
        open_replicated([{"url": str(tmp_path / "a")}, {"url": str(tmp_path / "a")}])
    with pytest.raises(BadRequest):
        open_replicated([{"url": str(tmp_path / "a")}, {"url": "ftp://x"}])
    with pytest.raises(BadRequest):
        open_replicated([])
    s3_first = open_replicated([{"url": "memory://x-" + uuid.uuid4().hex},
                                {"url": str(tmp_path / "b"), "key": ""}])
    try:
        assert s3_first.primary == 1  # the local copy stages uploads (rename, same fs)
        assert s3_first.staging_dir() == s3_first.copies[1].staging_dir()
    finally:
        s3_first.close()
