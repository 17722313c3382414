"""Objects read on the event loop (R-H1, issue 6): a WADO-RS study answer reads each
object whose bytes are all in the page cache with ``preadv(RWF_NOWAIT)`` and checks its
digest right there (``BlobStore.read_framed_nowait``), and uses the worker pool only on
a miss. The answer stays bit-exact, a bad copy is still never served (R-A6, FT-6): the
inline read only ever says "not now", and the pool read raises, falls back and repairs
as before."""
from __future__ import annotations

import os

import pytest

from pacsd.store import fast_digest
from pacsd.store.replicated import open_replicated
from pacsd.web import create_app
from pacsd.web.keys import ARCHIVE

from .conftest import three_copy_settings
from .test_fast_digest import (STUDY, fetch, flip_byte, instance_url, one_copy_settings,
                               sha256, stow_all, study, study_url)

pytestmark = pytest.mark.asyncio


def parts(body: bytes, items) -> list[bytes]:
    """The stored objects in the order they appear in a multipart answer."""
    found = sorted((body.index(data), data) for _, data in items)
    return [data for _, data in found]


def count_pool_reads(monkeypatch, store, method: str = "read_framed") -> list[str]:
    """The objects ``store.<method>`` is called for (default: the worker-pool read)."""
    calls: list[str] = []
    original = getattr(store, method)

    def counted(sha, *a, **kw):
        calls.append(sha)
        return original(sha, *a, **kw)
    monkeypatch.setattr(store, method, counted)
    return calls


async def test_cached_study_is_read_inline_bit_exact(aiohttp_client, tmp_path, monkeypatch):
    client = await aiohttp_client(create_app(one_copy_settings(tmp_path)))
    items = study(5)
    await stow_all(client, items)
    archive = client.app[ARCHIVE]
    pool = count_pool_reads(monkeypatch, archive.store)
    status, body, complete = await fetch(client, study_url(items[0][0]), STUDY)
    assert status == 200 and complete
    rows = await archive.run(lambda: list(
        archive.catalogue.iter_instances(items[0][0].StudyInstanceUID)))
    by_sha = {sha256(d): d for _, d in items}
    assert parts(body, items) == [by_sha[r.sha256] for r in rows]  # index order, exact
    assert pool == []   # just stored: every object was in the page cache


@pytest.mark.parametrize("miss", ["eagain", "partial"])
async def test_not_cached_is_read_on_the_pool(aiohttp_client, tmp_path, monkeypatch, miss):
    """EAGAIN (pages not cached), or part of the object cached then EAGAIN: the inline
    read gives up and the worker pool reads the object; same bytes."""
    client = await aiohttp_client(create_app(one_copy_settings(tmp_path)))
    items = study(3)
    await stow_all(client, items)
    archive = client.app[ARCHIVE]
    pool = count_pool_reads(monkeypatch, archive.store)
    real = os.preadv

    def preadv(fd, buffers, offset, flags=0):
        if miss == "partial" and offset == 0:
            view = memoryview(buffers[0])[:100]
            return real(fd, [view], offset, flags)
        raise BlockingIOError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(os, "preadv", preadv)
    status, body, complete = await fetch(client, study_url(items[0][0]), STUDY)
    assert status == 200 and complete
    assert sorted(parts(body, items)) == sorted(d for _, d in items)
    assert len(pool) == len(items)


async def test_bad_copy_never_read_inline(aiohttp_client, tmp_path, monkeypatch):
    """A changed byte in a cached object: the inline read refuses it (digest), the pool
    read fails it, and the client never gets a complete answer with it."""
    client = await aiohttp_client(create_app(one_copy_settings(tmp_path)))
    items = study(3)
    await stow_all(client, items)
    archive = client.app[ARCHIVE]
    ds, data = items[1]
    flip_byte(archive, data)
    sha = sha256(data)
    assert archive.store.read_framed_nowait(sha, b"", b"", expected_size=len(data),
                                            digest=fast_digest(data, sha)) is None
    bad = bytearray(data)
    bad[-10] ^= 0xFF
    status, body, complete = await fetch(client, study_url(ds), STUDY)
    assert bytes(bad) not in body and (status == 503 or not complete)
    status, body, _ = await fetch(client, instance_url(ds), {
        "Accept": "application/dicom; transfer-syntax=*"})
    assert status == 503


async def test_replicated_inline_read_takes_a_good_copy_only(tmp_path):
    """Three copies, the first one damaged: the inline read of the first copy in read
    order says "not now"; the pool read falls back (and marks the bad copy), after
    which the inline read is served by a good copy."""
    s = three_copy_settings(tmp_path)
    store = open_replicated(s.storage.copies)
    try:
        data = os.urandom(50_000)
        sha = store.put_bytes(data)
        digest = fast_digest(data, sha)
        path = store.copies[0].local_path(sha)
        with open(path, "r+b") as f:
            f.seek(1000)
            f.write(bytes([data[1000] ^ 1]))
        assert store.read_framed_nowait(sha, b"H", b"T", expected_size=len(data),
                                        digest=digest) is None
        assert bytes(store.read_framed(sha, b"H", b"T", expected_size=len(data),
                                       digest=digest)) == b"H" + data + b"T"
        got = store.read_framed_nowait(sha, b"H", b"T", expected_size=len(data),
                                       digest=digest)
        assert got is not None and bytes(got) == b"H" + data + b"T"
        store.wait_repairs(10)
        with open(path, "rb") as f:
            assert f.read() == data
    finally:
        store.close()


async def test_whole_study_lookup_scoped_and_not_found(aiohttp_client, tmp_path):
    """The whole-object listing (instance_files) keeps the lookup rules: a series of
    another study, an unknown study or instance is 404, never a 500."""
    client = await aiohttp_client(create_app(one_copy_settings(tmp_path)))
    items = study(2)
    other = study(1)       # UIDs are generated: another study
    await stow_all(client, items + other)
    ds = items[0][0]
    for url in (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/"
                f"{other[0][0].SeriesInstanceUID}",
                "/dicom-web/studies/1.2.3.4.5.6.7",
                f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                "/instances/1.2.3"):
        status, _, _ = await fetch(client, url, STUDY)
        assert status == 404, url
    status, body, complete = await fetch(
        client, f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}",
        STUDY)
    assert status == 200 and complete and all(d in body for _, d in items)
