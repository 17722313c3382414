"""Objects sent from their files (R-H1, issue 6; R-A6, FT-6): a WADO-RS study answer on a
plain TCP connection reads each page-cached object into a reused buffer, checks its
digest (``BlobStore.open_checked_nowait``), and sends it with ``sendfile`` from the same
open file; afterwards ``VerifiedFile.still_verified`` makes sure what went out can only
have been the verified bytes, else the answer is aborted. The answer stays bit-exact, a
damaged copy is never served, a missing one gives the same error as before."""
from __future__ import annotations

import os
import time

import pytest

from pacsd.store import fast_digest
from pacsd.store.local import LocalBlobStore
from pacsd.web import create_app
from pacsd.web.keys import ARCHIVE

from .test_fast_digest import (STUDY, fetch, flip_byte, one_copy_settings, sha256,
                               stow_all, study, study_url)
from .test_inline_read import parts

pytestmark = pytest.mark.asyncio

SCRATCH = memoryview(bytearray(1 << 20))


def calls_to(monkeypatch, store, name: str, answered=lambda out: True) -> list[str]:
    """The objects ``store.<name>`` was called for (and ``answered(result)``)."""
    calls: list[str] = []
    original = getattr(store, name)

    def spy(sha, *a, **kw):
        out = original(sha, *a, **kw)
        if answered(out):
            calls.append(sha)
        return out
    monkeypatch.setattr(store, name, spy)
    return calls


async def stored_study(client, n: int):
    """(archive, items, rows in answer order, sha256 -> bytes) of a stored study."""
    items = study(n)
    await stow_all(client, items)
    archive = client.app[ARCHIVE]
    rows = await archive.run(lambda: list(
        archive.catalogue.iter_instances(items[0][0].StudyInstanceUID)))
    return archive, items, rows, {sha256(d): d for _, d in items}


async def test_r_h1_study_sent_from_files_bit_exact(aiohttp_client, tmp_path, monkeypatch):
    client = await aiohttp_client(create_app(one_copy_settings(tmp_path)))
    archive, items, rows, by_sha = await stored_study(client, 6)
    sent = calls_to(monkeypatch, archive.store, "open_checked_nowait",
                    lambda out: out is not None)
    pool = calls_to(monkeypatch, archive.store, "read_framed")
    for _ in range(2):   # and again on the same keep-alive connection
        status, body, complete = await fetch(client, study_url(items[0][0]), STUDY)
        assert status == 200 and complete
        assert parts(body, items) == [by_sha[r.sha256] for r in rows]
        # exactly the multipart framing around the objects: nothing more, nothing less
        boundary = body[2:body.index(b"\r\n")]
        assert body.endswith(b"--" + boundary + b"--\r\n")
        assert body.count(b"--" + boundary + b"\r\n") == len(items)
    assert len(sent) == 2 * len(items) and pool == []


async def test_r_a6_damaged_object_never_sent_from_file(aiohttp_client, tmp_path,
                                                        monkeypatch):
    """A changed byte: the verified open refuses it, the pool read fails it, the client
    never gets a complete answer with it (FT-6)."""
    client = await aiohttp_client(create_app(one_copy_settings(tmp_path)))
    archive, items, rows, by_sha = await stored_study(client, 3)
    for bad_row in (rows[0], rows[1]):
        data = by_sha[bad_row.sha256]
        flip_byte(archive, data)
        assert archive.store.open_checked_nowait(
            bad_row.sha256, SCRATCH, expected_size=len(data),
            digest=fast_digest(data, bad_row.sha256)) is None
        bad = bytearray(data)
        bad[-10] ^= 0xFF
        status, body, complete = await fetch(client, study_url(items[0][0]), STUDY)
        assert bytes(bad) not in body and (status == 503 or not complete)
        if bad_row is rows[0]:
            assert status == 503   # nothing sent yet: a proper status
        flip_byte(archive, data)   # mended for the next round


async def test_missing_object_same_error_as_before(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(one_copy_settings(tmp_path)))
    archive, items, rows, _ = await stored_study(client, 2)
    os.unlink(archive.store.local_path(rows[0].sha256))
    assert archive.store.open_checked_nowait(rows[0].sha256, SCRATCH) is None
    status, _, _ = await fetch(client, study_url(items[0][0]), STUDY)
    # the pool read's error, as on the path without sendfile
    with pytest.raises(Exception) as e:
        archive.store.read(rows[0].sha256)
    assert status == e.value.http_status != 200


async def test_r_a6_object_changed_in_place_after_the_check_aborts(
        aiohttp_client, tmp_path, monkeypatch):
    """Something writes into an object in place between its check and its send (pacsd
    never does): its ctime moves, so the answer is aborted after that part, never
    completed."""
    client = await aiohttp_client(create_app(one_copy_settings(tmp_path)))
    items = study(3)
    await stow_all(client, items)
    archive = client.app[ARCHIVE]
    store = archive.store
    original = store.open_checked_nowait
    time.sleep(0.05)   # a change lands in a later clock tick than the object's rename

    def open_then_changed(sha, *a, **kw):
        out = original(sha, *a, **kw)
        if out is not None:
            with open(store.local_path(sha), "r+b") as f:
                f.seek(200)
                b = f.read(1)
                f.seek(200)
                f.write(bytes([b[0] ^ 1]))
        return out
    monkeypatch.setattr(store, "open_checked_nowait", open_then_changed)
    status, body, complete = await fetch(client, study_url(items[0][0]), STUDY)
    assert status == 200 and not complete


def _store_with(tmp_path, data: bytes) -> tuple[LocalBlobStore, str]:
    store = LocalBlobStore(str(tmp_path / "s"))
    return store, store.put_bytes(data)


async def test_verified_file_checks(tmp_path):
    data = os.urandom(100_000)
    store, sha = _store_with(tmp_path, data)
    digest = fast_digest(data, sha)
    with store.open_checked_nowait(sha, SCRATCH, expected_size=len(data),
                                   digest=digest) as vf:
        assert vf.size == len(data)
        assert os.pread(vf.fileno(), len(data), 0) == data
        assert vf.still_verified(False) is True
        assert vf.still_verified(True, SCRATCH) is True
        assert vf.still_verified(True, None, nowait=False) is True
    assert vf.fd == -1
    # wrong size, wrong digest, scratch too small, not a sha256: never a file
    assert store.open_checked_nowait(sha, SCRATCH, expected_size=len(data) + 1) is None
    assert store.open_checked_nowait(sha, SCRATCH,
                                     digest=fast_digest(data + b"x", sha)) is None
    assert store.open_checked_nowait(sha, SCRATCH[:1000]) is None
    with pytest.raises(Exception):
        store.open_checked_nowait("../etc/passwd", SCRATCH)
    # changed in place after the check: size or ctime moves
    time.sleep(0.05)
    vf = store.open_checked_nowait(sha, SCRATCH, digest=digest)
    with open(store.local_path(sha), "r+b") as f:
        f.seek(10)
        f.write(bytes([data[10] ^ 1]))
    assert vf.still_verified(False) is False
    vf.close()
    with open(store.local_path(sha), "r+b") as f:
        f.seek(10)
        f.write(bytes([data[10]]))
    vf = store.open_checked_nowait(sha, SCRATCH, digest=digest)
    os.truncate(store.local_path(sha), 50)
    assert vf.still_verified(False) is False
    vf.close()


async def test_verified_file_recheck_catches_damage_behind_unchanged_times(tmp_path,
                                                                          monkeypatch):
    """After a send that waited, the bytes are read and checked again: damage that left
    the inode's times alone (a device returning other bytes) is caught."""
    data = os.urandom(100_000)
    store, sha = _store_with(tmp_path, data)
    vf = store.open_checked_nowait(sha, SCRATCH, digest=fast_digest(data, sha))
    real = os.preadv

    def damaged(fd, buffers, offset, *flags):
        n = real(fd, buffers, offset, *flags)
        memoryview(buffers[0])[0:1] = b"\xff" if data[offset] != 0xFF else b"\x00"
        return n
    monkeypatch.setattr(os, "preadv", damaged)
    assert vf.still_verified(False) is True     # no wait: the pages sent were checked
    assert vf.still_verified(True, SCRATCH) is False
    monkeypatch.setattr(os, "preadv", real)
    vf.close()
