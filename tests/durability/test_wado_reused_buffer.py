"""One read buffer per WADO-RS study answer (issue 6): page-cached objects of a local
store are read and checked in a buffer reused for every part of the answer
(``RetrieveService.objects_as_stored(reuse=True)``), only where the transport copies
what the socket did not take. The answer stays bit-exact with parts of different sizes,
a bad copy is never served (R-A6, FT-6), and elsewhere the store's own inline read is
used as before."""
from __future__ import annotations

import pytest

from dicomgen import make_dataset, to_part10
from pacsd.web import create_app
from pacsd.web.dicomweb import wado
from pacsd.web.keys import ARCHIVE

from .test_fast_digest import (STUDY, fetch, flip_byte, one_copy_settings, sha256,
                               stow_all, study_url)
from .test_inline_read import count_pool_reads

pytestmark = pytest.mark.asyncio


def mixed_study() -> list[tuple[object, bytes]]:
    """Instances of one series whose sizes differ (the largest not first)."""
    first = make_dataset(rows=16, columns=16, seed=1)
    out = [(first, to_part10(first))]
    for i, side in enumerate((128, 8, 64, 128, 16), start=2):
        ds = make_dataset(rows=side, columns=side, seed=i,
                          StudyInstanceUID=first.StudyInstanceUID,
                          SeriesInstanceUID=first.SeriesInstanceUID, InstanceNumber=i)
        out.append((ds, to_part10(ds)))
    return out


def in_order(body: bytes, items) -> list[bytes]:
    return [data for _, data in sorted((body.index(d), d) for _, d in items)]


async def test_reused_buffer_answer_bit_exact_twice(aiohttp_client, tmp_path, monkeypatch):
    client = await aiohttp_client(create_app(one_copy_settings(tmp_path)))
    items = mixed_study()
    await stow_all(client, items)
    archive = client.app[ARCHIVE]
    store_inline = count_pool_reads(monkeypatch, archive.store, "read_framed_nowait")
    rows = await archive.run(lambda: list(
        archive.catalogue.iter_instances(items[0][0].StudyInstanceUID)))
    by_sha = {sha256(d): d for _, d in items}
    for _ in range(2):   # the same keep-alive connection: the buffer of the last answer
        status, body, complete = await fetch(client, study_url(items[0][0]), STUDY)
        assert status == 200 and complete
        assert in_order(body, items) == [by_sha[r.sha256] for r in rows]
        # every part delimited right where its object ends
        assert body.count(b"\r\n--pacsd-") == len(items)
    assert store_inline == []   # read into the answer's buffer, not a new one per part


async def test_bad_copy_in_reused_buffer_never_served(aiohttp_client, tmp_path):
    """A changed byte in the object after the largest: the reused buffer holds the good
    bytes of the part before, the bad object is refused by its digest, the pool read
    fails it, and the client never gets a complete answer with it."""
    client = await aiohttp_client(create_app(one_copy_settings(tmp_path)))
    items = mixed_study()
    await stow_all(client, items)
    archive = client.app[ARCHIVE]
    ds, data = items[3]
    flip_byte(archive, data)
    bad = bytearray(data)
    bad[-10] ^= 0xFF
    status, body, complete = await fetch(client, study_url(ds), STUDY)
    assert bytes(bad) not in body and (status == 503 or not complete)


async def test_no_reuse_when_the_transport_keeps_buffers(aiohttp_client, tmp_path,
                                                          monkeypatch):
    """Where a write may keep a reference (TLS, Python >= 3.12), each object is read into
    its own buffer by the store, as before."""
    monkeypatch.setattr(wado, "_transport_copies", lambda request, response: False)
    client = await aiohttp_client(create_app(one_copy_settings(tmp_path)))
    items = mixed_study()
    await stow_all(client, items)
    archive = client.app[ARCHIVE]
    store_inline = count_pool_reads(monkeypatch, archive.store, "read_framed_nowait")
    status, body, complete = await fetch(client, study_url(items[0][0]), STUDY)
    assert status == 200 and complete
    assert sorted(in_order(body, items)) == sorted(d for _, d in items)
    assert len(store_inline) == len(items)
