"""The fast read-time digest (R-H1, issue 6) keeps "a bad copy is never served" (R-A6;
reliability matrix FT-6, FT-8): ingest records an XXH3-128 digest with every instance,
retrieval checks it instead of re-hashing with SHA-256, and one changed byte of a stored
object still never reaches a client: not in a single-instance answer, not in a whole-study
WADO-RS answer (503 before the first byte, or a connection cut after it, never a complete
body); with three copies the good ones serve and the bad one is repaired. Rows without a
digest (before migration 10) and stale digests fall back to SHA-256."""
from __future__ import annotations

import hashlib

import aiohttp
import pytest
import sqlalchemy as sa
from dicomgen import make_dataset, multipart, to_part10

from pacsd.config import Settings
from pacsd.index.schema import instances
from pacsd.store import HashingWriter, fast_digest, usable_digest
from pacsd.store.base import hash_digests
from pacsd.web import create_app
from pacsd.web.keys import ARCHIVE

from .conftest import three_copy_settings

pytestmark = pytest.mark.asyncio

SINGLE = {"Accept": "application/dicom; transfer-syntax=*"}
STUDY = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def one_copy_settings(tmp_path) -> Settings:
    s = Settings()
    s.server.data_dir = str(tmp_path / "data")
    s.server.worker_threads = 4
    return s


def study(n: int) -> list[tuple[object, bytes]]:
    """``n`` instances of one study and series (64x64, ~8 kB each)."""
    first = make_dataset(rows=64, columns=64, seed=1)
    out = [(first, to_part10(first))]
    for i in range(2, n + 1):
        ds = make_dataset(rows=64, columns=64, seed=i,
                          StudyInstanceUID=first.StudyInstanceUID,
                          SeriesInstanceUID=first.SeriesInstanceUID, InstanceNumber=i)
        out.append((ds, to_part10(ds)))
    return out


async def stow_all(client, items) -> None:
    body, ctype = multipart([data for _, data in items])
    r = await client.post("/dicom-web/studies", data=body, headers={
        "Content-Type": ctype, "Accept": "application/dicom+json"})
    assert r.status == 200, await r.text()


def study_url(ds) -> str:
    return f"/dicom-web/studies/{ds.StudyInstanceUID}"


def instance_url(ds) -> str:
    return (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flip_byte(archive, data: bytes, copy: int | None = None) -> str:
    """Change one byte inside the pixel data of ``data``'s stored object (same size);
    ``copy``: which copy of a replicated store. Returns the object's path."""
    store = archive.store
    if copy is not None:
        store = store.copies[copy]
    path = store.local_path(sha256(data))
    bad = bytearray(data)
    bad[-10] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bad)
    return path


async def fetch(client, url: str, headers: dict) -> tuple[int, bytes, bool]:
    """(status, the bytes received, whether the body arrived complete)."""
    r = await client.get(url, headers=headers)
    got = bytearray()
    try:
        async for chunk in r.content.iter_any():
            got += chunk
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
            aiohttp.ClientConnectionError):
        return r.status, bytes(got), False
    return r.status, bytes(got), True


def digests(archive) -> dict[str, str | None]:
    with archive.catalogue.engine.connect() as conn:
        return dict(conn.execute(sa.select(instances.c.sha256, instances.c.digest)).all())


# --- the digest itself ---------------------------------------------------------------------

async def test_digest_is_of_the_stored_bytes_and_names_its_object(tmp_path):
    data = b"DICM" * 1000
    sha = sha256(data)
    with HashingWriter(str(tmp_path)) as w:
        w.write(data[:1000])
        w.write(data[1000:])
        path, got_sha, size = w.finish()
    assert got_sha == sha and w.digest == fast_digest(data, sha)
    with open(path, "rb") as f:
        assert hash_digests(f) == (sha, size, w.digest)
    assert usable_digest(w.digest, sha)
    assert not usable_digest(w.digest, sha256(b"other"))  # stale: another object's
    assert not usable_digest(None, sha)
    assert not usable_digest("md5:" + "0" * 32, sha)       # unknown algorithm
    assert fast_digest(data[:-1] + b"\x00", sha) != w.digest


async def test_ingest_records_the_digest(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(one_copy_settings(tmp_path)))
    items = study(2)
    await stow_all(client, items)
    got = digests(client.app[ARCHIVE])
    for _, data in items:
        sha = sha256(data)
        assert got[sha] == fast_digest(data, sha)


# --- one copy: a changed byte is never served ----------------------------------------------

@pytest.mark.parametrize("bad", [0, 2], ids=["first_object", "middle_object"])
async def test_flipped_byte_never_served_whole_study(aiohttp_client, tmp_path, bad):
    client = await aiohttp_client(create_app(one_copy_settings(tmp_path)))
    items = study(4)
    await stow_all(client, items)
    archive = client.app[ARCHIVE]
    status, body, complete = await fetch(client, study_url(items[0][0]), STUDY)
    assert status == 200 and complete
    assert all(data in body for _, data in items)
    # Instance order in the answer is the index's: damage the object served first or
    # one in the middle (the answer is then already streaming).
    rows = await client.app[ARCHIVE].run(lambda: list(
        archive.catalogue.iter_instances(items[0][0].StudyInstanceUID)))
    by_sha = {sha256(d): (ds, d) for ds, d in items}
    ds, data = by_sha[rows[bad].sha256]
    assert rows[bad].digest is not None  # the fast path is the one under test
    flip_byte(archive, data)
    bad_bytes = bytearray(data)
    bad_bytes[-10] ^= 0xFF
    status, body, complete = await fetch(client, study_url(ds), STUDY)
    assert bytes(bad_bytes) not in body
    assert status == 503 or not complete   # never a complete-looking answer
    if bad == 0:
        assert status == 503               # nothing was sent yet: a proper status
    status, body, complete = await fetch(client, instance_url(ds), SINGLE)
    assert status == 503 and bytes(bad_bytes) not in body
    # The other instances are still served.
    other = by_sha[rows[1 - min(bad, 1)].sha256]
    status, body, complete = await fetch(client, instance_url(other[0]), SINGLE)
    assert status == 200 and complete and body == other[1]


async def test_truncated_object_never_served(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(one_copy_settings(tmp_path)))
    items = study(1)
    await stow_all(client, items)
    ds, data = items[0]
    path = client.app[ARCHIVE].store.local_path(sha256(data))
    with open(path, "r+b") as f:
        f.truncate(len(data) - 1)
    status, body, _ = await fetch(client, instance_url(ds), SINGLE)
    assert status == 503 and body != data[:-1]


@pytest.mark.parametrize("digest", [None, "stale"])
async def test_rows_without_usable_digest_are_checked_by_sha256(aiohttp_client, tmp_path,
                                                                 digest):
    client = await aiohttp_client(create_app(one_copy_settings(tmp_path)))
    items = study(2)
    await stow_all(client, items)
    archive = client.app[ARCHIVE]
    other = fast_digest(b"x", sha256(b"x"))  # a valid digest of another object
    with archive.catalogue.engine.begin() as conn:
        conn.execute(sa.update(instances).values(
            digest=None if digest is None else other))
    status, body, complete = await fetch(client, study_url(items[0][0]), STUDY)
    assert status == 200 and complete and all(d in body for _, d in items)
    ds, data = items[0]
    flip_byte(archive, data)
    status, body, _ = await fetch(client, instance_url(ds), SINGLE)
    assert status == 503 and data[:-10] not in body


# --- three copies: a bad copy falls back to a good one and is repaired ---------------------

async def test_three_copies_bad_copy_falls_back_and_is_repaired(aiohttp_client, tmp_path):
    settings = three_copy_settings(tmp_path)
    client = await aiohttp_client(create_app(settings))
    items = study(3)
    await stow_all(client, items)
    archive = client.app[ARCHIVE]
    assert all(d is not None for d in digests(archive).values())
    paths = [flip_byte(archive, data, copy=0) for _, data in items[:2]]
    status, body, complete = await fetch(client, study_url(items[0][0]), STUDY)
    assert status == 200 and complete
    assert all(data in body for _, data in items)
    ds, data = items[0]
    status, body, complete = await fetch(client, instance_url(ds), SINGLE)
    assert status == 200 and complete and body == data
    archive.store.wait_repairs(10)
    for path, (_, data) in zip(paths, items):
        with open(path, "rb") as f:
            assert f.read() == data


# --- the scrubber fills in digests of older rows -------------------------------------------

async def test_scrub_backfills_missing_digests_from_good_bytes_only(aiohttp_client, tmp_path):
    """`pacsd verify` (Scrubber.run) records the digest of rows stored before migration
    10, computed over a SHA-256-verified read; an object with no good copy gets none."""
    from pacsd.services.scrub import Scrubber
    client = await aiohttp_client(create_app(one_copy_settings(tmp_path)))
    items = study(3)
    await stow_all(client, items)
    archive = client.app[ARCHIVE]
    with archive.catalogue.engine.begin() as conn:
        conn.execute(sa.update(instances).values(digest=None))
    bad_ds, bad = items[2]
    flip_byte(archive, bad)
    report = await archive.run(Scrubber(archive.store, archive.catalogue, orphans=False).run)
    assert report.digests == 2 and report.as_dict()["digests"] == 2
    got = digests(archive)
    for _, data in items[:2]:
        assert got[sha256(data)] == fast_digest(data, sha256(data))
    assert got[sha256(bad)] is None
    # A second run has nothing left to fill in but the damaged object.
    report = await archive.run(Scrubber(archive.store, archive.catalogue, orphans=False).run)
    assert report.digests == 0
    status, body, complete = await fetch(client, instance_url(items[0][0]), SINGLE)
    assert status == 200 and complete and body == items[0][1]
