"""Conformance suite every BlobStore backend must pass (R-A6; reliability-matrix §7, FT-5,
FT-6, BI-6). Parameterised over local disk, fsspec memory and S3 (real S3-protocol server)
by the ``backend`` fixture in conftest.py, like zarr's ``StoreTests``."""
from __future__ import annotations

import hashlib
import os
import time

import pytest

from pacsd.errors import BadRequest, DataUnavailable, InstanceTooLarge, NotFound
from pacsd.store import BlobStore, ChecksumMismatch, IntegrityMismatch, fast_digest

DATA = bytes(range(256)) * 40 + b"tail"  # 10244 bytes, not a multiple of any chunk size


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def staged(store: BlobStore, data: bytes) -> tuple[str, str, int]:
    with store.new_staging_file() as w:
        w.write(data)
        return w.finish()


# --- writing -------------------------------------------------------------------------------

def test_put_bytes_read_round_trip(store):
    key = store.put_bytes(DATA)
    assert key == sha(DATA)
    assert store.read(key) == DATA
    assert store.read(key, expected_size=len(DATA)) == DATA
    assert store.exists(key) and store.size(key) == len(DATA)
    assert store.verify(key)


def test_put_empty_object(store):
    key = store.put_bytes(b"")
    assert store.read(key) == b"" and store.size(key) == 0


def test_put_file_copy_keeps_source(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    assert store.put_file(str(src), sha(DATA), len(DATA)) is True
    assert src.read_bytes() == DATA
    assert store.read(sha(DATA)) == DATA


def test_put_file_move_consumes_staged_file(store):
    path, key, size = staged(store, DATA)
    assert os.path.dirname(path) == store.staging_dir()
    assert (key, size) == (sha(DATA), len(DATA))
    assert store.put_file(path, key, size, move=True) is True
    assert not os.path.exists(path)
    assert store.read(key) == DATA


def test_put_is_idempotent(store, tmp_path):
    """BI-25 re-send: second put reports 'already there', content unchanged."""
    key = store.put_bytes(DATA)
    src = tmp_path / "again.bin"
    src.write_bytes(DATA)
    assert store.put_file(str(src), key, len(DATA)) is False
    path, _, _ = staged(store, DATA)
    assert store.put_file(path, key, len(DATA), move=True) is False
    assert not os.path.exists(path)  # move consumes the source even when not needed
    assert store.put_bytes(DATA) == key
    assert store.read(key) == DATA
    assert list(store.iter_keys()) == [key]


@pytest.mark.parametrize("how", ["hash", "size_short", "size_long"])
def test_put_wrong_hash_or_size_refused_nothing_left(store, tmp_path, how):
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    key, size = sha(DATA), len(DATA)
    if how == "hash":
        key = sha(b"something else")
    elif how == "size_short":
        size -= 1
    else:
        size += 1
    with pytest.raises(IntegrityMismatch):
        store.put_file(str(src), key, size)
    assert not store.exists(key)
    assert list(store.iter_keys()) == []
    assert src.read_bytes() == DATA  # the caller's file is untouched


def test_put_missing_source_refused(store, tmp_path):
    with pytest.raises(IntegrityMismatch):
        store.put_file(str(tmp_path / "nope"), sha(DATA), len(DATA))
    assert list(store.iter_keys()) == []


def test_put_repairs_corrupt_existing_object(store, tamper):
    """FT-6 heal on write: a re-put over a corrupt copy rewrites it and reports 'written'."""
    key = store.put_bytes(DATA)
    tamper.overwrite(key, b"X" + DATA[1:])
    path, _, size = staged(store, DATA)
    assert store.put_file(path, key, size, move=True) is True
    assert store.read(key) == DATA


# --- reading -------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["bitflip", "truncate", "same_size_other_bytes", "empty"])
def test_read_detects_corruption(store, tamper, damage):
    """FT-6: bit flip / truncation / replacement of the stored object is detected."""
    key = store.put_bytes(DATA)
    bad = {
        "bitflip": DATA[:5000] + bytes([DATA[5000] ^ 0x01]) + DATA[5001:],
        "truncate": DATA[:-1],
        "same_size_other_bytes": bytes(len(DATA)),
        "empty": b"",
    }[damage]
    tamper.overwrite(key, bad)
    with pytest.raises(ChecksumMismatch) as ei:  # a DataUnavailable: 503 / 0xA702
        store.read(key)
    assert isinstance(ei.value, DataUnavailable) and ei.value.http_status == 503
    assert store.verify(key) is False
    # The same with the fast read-time digest instead of SHA-256 (R-H1), read and stream.
    digest = fast_digest(DATA, key)
    with pytest.raises(ChecksumMismatch):
        store.read(key, digest=digest)
    with pytest.raises(DataUnavailable):
        for _ in store.open_verified(key, digest=digest):
            pass


@pytest.mark.parametrize("damage", ["bitflip", "truncate"])
def test_read_framed(store, tamper, damage):
    """read_framed (one buffer per multipart part, R-H1): head + verified object + tail;
    the same checks and errors as read, with and without the fast digest."""
    key = store.put_bytes(DATA)
    digest = fast_digest(DATA, key)
    for d in (None, digest):
        got = store.read_framed(key, b"HEAD\r\n", b"\r\n", expected_size=len(DATA),
                                digest=d)
        assert bytes(got) == b"HEAD\r\n" + DATA + b"\r\n"
    assert bytes(store.read_framed(key, b"", b"")) == DATA
    with pytest.raises(ChecksumMismatch):
        store.read_framed(key, b"H", b"T", expected_size=len(DATA) + 1)
    bad = (DATA[:5000] + bytes([DATA[5000] ^ 0x01]) + DATA[5001:]
           if damage == "bitflip" else DATA[:-1])
    tamper.overwrite(key, bad)
    for d in (None, digest):
        with pytest.raises(ChecksumMismatch):
            store.read_framed(key, b"H", b"T", digest=d)


def test_read_with_fast_digest(store):
    """R-H1: a usable digest is checked instead of SHA-256 (a wrong one fails the read,
    so it is really what is checked); a stale or unknown one falls back to SHA-256."""
    key = store.put_bytes(DATA)
    digest = fast_digest(DATA, key)
    assert store.read(key, expected_size=len(DATA), digest=digest) == DATA
    assert b"".join(store.open_verified(key, 1000, digest=digest)) == DATA
    wrong = fast_digest(DATA + b"x", key)
    with pytest.raises(ChecksumMismatch):
        store.read(key, digest=wrong)
    with pytest.raises(ChecksumMismatch):
        for _ in store.open_verified(key, digest=wrong):
            pass
    stale = fast_digest(b"x", "f" * 64)   # computed for another object: ignored
    assert store.read(key, digest=stale) == DATA
    assert store.read(key, digest="md5:0") == DATA


def test_read_expected_size_mismatch(store):
    key = store.put_bytes(DATA)
    with pytest.raises(ChecksumMismatch):
        store.read(key, expected_size=len(DATA) + 1)


def test_missing_object(store, tamper):
    """FT-5: an object deleted behind the store is NotFound everywhere, never stale."""
    key = store.put_bytes(DATA)
    tamper.remove(key)
    with pytest.raises(NotFound):
        store.read(key)
    with pytest.raises(NotFound):
        store.read_range(key, 0, 10)
    with pytest.raises(NotFound):
        store.read_range(key, 0, 0)
    with pytest.raises(NotFound):
        store.open_verified(key)  # raised eagerly, before any byte (caller can 404)
    assert store.exists(key) is False
    assert store.size(key) is None
    assert store.verify(key) is False
    assert list(store.iter_keys()) == []


def test_never_stored_object(store):
    key = sha(b"never stored")
    with pytest.raises(NotFound):
        store.read(key)
    assert not store.exists(key) and store.size(key) is None


def test_read_range(store):
    key = store.put_bytes(DATA)
    assert store.read_range(key, 0, 10) == DATA[:10]
    assert store.read_range(key, 300, 4000) == DATA[300:4300]
    assert store.read_range(key, len(DATA) - 4, 4) == b"tail"
    assert store.read_range(key, 7, 0) == b""


def test_read_range_past_end_is_short_read(store):
    key = store.put_bytes(DATA)
    with pytest.raises(DataUnavailable):
        store.read_range(key, len(DATA) - 2, 4)
    with pytest.raises(DataUnavailable):
        store.read_range(key, len(DATA) + 100, 4)


@pytest.mark.parametrize("offset,length", [(-1, 4), (0, -1), (1.5, 2), ("0", 1)])
def test_read_range_invalid_arguments(store, offset, length):
    key = store.put_bytes(DATA)
    with pytest.raises(BadRequest):
        store.read_range(key, offset, length)


def test_read_range_is_not_verified(store, tamper):
    """Ranges are checked by the caller's per-frame CRC32, not by the store."""
    key = store.put_bytes(DATA)
    tamper.overwrite(key, b"Z" * len(DATA))
    assert store.read_range(key, 0, 3) == b"ZZZ"


def test_open_verified_streams_in_chunks(store):
    key = store.put_bytes(DATA)
    chunks = list(store.open_verified(key, chunk_size=1000))
    assert b"".join(chunks) == DATA
    assert max(len(c) for c in chunks) <= 1000 and len(chunks) >= 11


def test_open_verified_detects_corruption_at_eof(store, tamper):
    """FT-6 streaming: all bytes are yielded, then DataUnavailable at EOF; the caller must
    abort the connection so the client never sees a complete-looking corrupt response."""
    key = store.put_bytes(DATA)
    bad = DATA[:-1] + b"X"
    tamper.overwrite(key, bad)
    it = store.open_verified(key, chunk_size=1000)
    got = []
    with pytest.raises(ChecksumMismatch):
        for c in it:
            got.append(c)
    assert b"".join(got) == bad  # the error came only after the last chunk


def test_open_verified_close_early(store):
    key = store.put_bytes(DATA)
    it = store.open_verified(key, chunk_size=100)
    assert next(it) == DATA[:100]
    it.close()  # releases the underlying file/connection without raising


# --- maintenance ---------------------------------------------------------------------------

def test_delete_is_idempotent(store):
    key = store.put_bytes(DATA)
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)
    store.delete(sha(b"never stored"))
    with pytest.raises(NotFound):
        store.read(key)


def test_iter_keys_lists_every_object_and_skips_strays(store, tamper):
    keys = {store.put_bytes(b"object %d" % i) for i in range(8)}
    # Stray names a crash or an operator might leave: never reported as objects.
    tamper.put_raw("objects/ab/cd/not-a-hash", b"x")
    tamper.put_raw("objects/ab/cd/" + "ef" * 32, b"x")  # hash in the wrong fan-out dir
    tamper.put_raw("objects/zz/" + "0" * 64, b"x")
    assert set(store.iter_keys()) == keys
    assert len(list(store.iter_keys())) == len(keys)


def test_iter_keys_empty_store(store):
    assert list(store.iter_keys()) == []


BAD_KEYS = ["../etc/passwd", "../" * 20 + "etc", "A" * 64, sha(b"x").upper(), "a" * 63,
            "a" * 65, "a" * 64 + "\n", "/" + "a" * 63, "a" * 62 + "/.", "", "g" * 64,
            "a" * 32 + "\x00" + "a" * 31, None, 123, b"a" * 64]


@pytest.mark.parametrize("bad", BAD_KEYS, ids=repr)
def test_invalid_keys_refused_everywhere(store, tmp_path, bad):
    """BI-6 / SEC-15: keys are validated before any path or object key is built."""
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    before = sorted(p for p in tmp_path.rglob("*"))
    calls = [
        lambda: store.put_file(str(src), bad, len(DATA)),
        lambda: store.put_file(str(src), bad, len(DATA), move=True),
        lambda: store.read(bad),
        lambda: store.read_range(bad, 0, 1),
        lambda: store.open_verified(bad),
        lambda: store.verify(bad),
        lambda: store.local_path(bad),
        lambda: store.exists(bad),
        lambda: store.size(bad),
        lambda: store.delete(bad),
    ]
    for call in calls:
        with pytest.raises(BadRequest):
            call()
    assert src.read_bytes() == DATA
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert list(store.iter_keys()) == []


def test_put_invalid_size_refused(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    for size in (-1, "10244", None, 1.0):
        with pytest.raises(BadRequest):
            store.put_file(str(src), sha(DATA), size)


# --- staging writer ------------------------------------------------------------------------

def test_staging_writer_limit_deletes_partial_file(store):
    w = store.new_staging_file(max_size=1000)
    w.write(b"a" * 600)
    with pytest.raises(InstanceTooLarge):
        w.write(b"a" * 401)
    assert not os.path.exists(w.path)
    assert os.listdir(store.staging_dir()) == []


def test_staging_writer_exact_limit_ok(store):
    with store.new_staging_file(max_size=1000) as w:
        w.write(b"a" * 400)
        w.write(memoryview(b"b" * 600))
        path, key, size = w.finish()
    assert (key, size) == (sha(b"a" * 400 + b"b" * 600), 1000)
    assert store.put_file(path, key, size, move=True)
    assert os.listdir(store.staging_dir()) == []


def test_staging_writer_context_manager_aborts(store):
    with pytest.raises(RuntimeError):
        with store.new_staging_file() as w:
            w.write(b"partial")
            raise RuntimeError("client went away")
    assert not os.path.exists(w.path)
    with store.new_staging_file() as w2:
        w2.write(b"never finished")
    assert not os.path.exists(w2.path)
    w2.abort()  # idempotent
    assert os.listdir(store.staging_dir()) == []


def test_staging_writer_abort_after_finish_discards(store):
    w = store.new_staging_file()
    w.write(b"x")
    path, _, _ = w.finish()
    assert os.path.exists(path)
    w.abort()
    assert not os.path.exists(path)


def test_cleanup_temp_removes_only_stale_files(store):
    old = os.path.join(store.staging_dir(), "up-old.part")
    new = os.path.join(store.staging_dir(), "up-new.part")
    for p in (old, new):
        with open(p, "wb") as f:
            f.write(b"left over by a crash")
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert store.cleanup_temp(3600) == 1
    assert not os.path.exists(old) and os.path.exists(new)
    key = store.put_bytes(DATA)
    assert store.cleanup_temp(0) >= 1  # `new` is now stale too
    assert store.read(key) == DATA  # objects are never touched


def test_url_and_repr(store):
    assert store.url.split("://", 1)[0] in ("file", "memory", "s3")
    assert store.url in repr(store)


@pytest.mark.parametrize("damage", ["bitflip", "truncate", "missing"])
def test_read_framed_nowait_never_unverified(store, tamper, damage):
    """read_framed_nowait (event-loop read of page-cached objects, R-H1): the same bytes
    as read_framed when it answers; None ("read it on a worker") for every problem, so a
    bad copy is never handed out by it (FT-6). The local store answers for a cached
    object; other backends may always say None."""
    key = store.put_bytes(DATA)
    digest = fast_digest(DATA, key)
    want = b"HEAD\r\n" + DATA + b"\r\n"
    for d in (None, digest):
        got = store.read_framed_nowait(key, b"HEAD\r\n", b"\r\n", expected_size=len(DATA),
                                       digest=d)
        if store.local_path(key) is not None and type(store).__name__ == "LocalBlobStore":
            assert got is not None   # just written: in the page cache
        assert got is None or bytes(got) == want
    assert store.read_framed_nowait(key, b"H", b"T", expected_size=len(DATA) + 1) is None
    assert store.read_framed_nowait(key, b"H", b"T", digest=fast_digest(DATA + b"x", key)
                                    ) is None
    if damage == "missing":
        tamper.remove(key)
    else:
        tamper.overwrite(key, DATA[:5000] + bytes([DATA[5000] ^ 0x01]) + DATA[5001:]
                         if damage == "bitflip" else DATA[:-1])
    for d in (None, digest):
        assert store.read_framed_nowait(key, b"H", b"T", digest=d) is None
        assert store.read_framed_nowait(key, b"H", b"T", expected_size=len(DATA),
                                        digest=d) is None
    with pytest.raises(BadRequest):
        store.read_framed_nowait("../etc/passwd", b"", b"")
