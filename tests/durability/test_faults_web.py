"""Faults on one of three copies, seen through the real DICOMweb app (R-A6; reliability
matrix FT-3, FT-4, FT-6, FT-8): a copy that cannot be written blocks the acknowledgement
(STOW 503 + Retry-After, FailureReason A700, no index row); reads of stored objects fall
back to the good copies and never return bad bytes; no good copy at all answers 503."""
from __future__ import annotations

import errno
import os
import subprocess
import uuid

import pytest
from dicomgen import make_dataset, multipart, to_part10

from pacsd.services.scrub import Scrubber
from pacsd.web import create_app
from pacsd.web.keys import ARCHIVE
from tests.s3server import s3_server

from .conftest import object_path, three_copy_settings

pytestmark = pytest.mark.asyncio

SINGLE = {"Accept": "application/dicom; transfer-syntax=*"}
FRAMES = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
A700 = 0xA700


def instance(n: int, **kw):
    ds = make_dataset(rows=32, columns=32, seed=n, **kw)
    return ds, to_part10(ds)


def wado_url(ds) -> str:
    return (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


async def stow(client, data: bytes):
    body, ctype = multipart([data])
    return await client.post("/dicom-web/studies", data=body, headers={
        "Content-Type": ctype, "Accept": "application/dicom+json"})


async def instance_count(client) -> int:
    r = await client.get("/api/v1/health")
    return (await r.json())["counts"]["instances"]


def sha256(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()


# --- FT-3: one copy's filesystem is full -------------------------------------------------

@pytest.fixture
def tiny_fs(tmp_path):
    """A 256 KiB tmpfs (needs root to mount; skipped with the reason otherwise)."""
    d = tmp_path / "tiny"
    d.mkdir()
    if os.geteuid() != 0:
        pytest.skip("FT-3 needs root to mount a size-limited tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def fill(directory) -> str:
    """Fill the filesystem of ``directory`` until ENOSPC; return the filler's path."""
    path = os.path.join(str(directory), "filler")
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return path


@pytest.mark.parametrize("position", [0, 1], ids=["primary_full", "secondary_full"])
async def test_FT3_disk_full_on_one_copy_blocks_ack(aiohttp_client, tmp_path, tiny_fs,
                                                    position):
    settings = three_copy_settings(tmp_path)
    settings.storage.copies[position] = {"url": str(tiny_fs / "copy")}
    client = await aiohttp_client(create_app(settings))
    before_ds, before = instance(0)
    assert (await stow(client, before)).status == 200
    filler = fill(tiny_fs)

    ds, data = instance(1)
    r = await stow(client, data)
    assert r.status == 503 and r.headers["Retry-After"]
    # Primary full: the upload cannot even be staged; a copy full: the part was received
    # and then a copy could not be written. Either way the body names the failure.
    failed = (await r.json())["00081198"]["Value"]
    assert [item["00081197"]["Value"][0] for item in failed] == [A700]
    assert await instance_count(client) == 1  # no index row: nothing acknowledged
    assert (await client.get(wado_url(ds), headers=SINGLE)).status == 404
    for sub in ("tmp", "staging"):  # no partial files left on the full copy
        assert os.listdir(tiny_fs / "copy" / sub) == []
    # Existing data stays readable.
    r = await client.get(wado_url(before_ds), headers=SINGLE)
    assert r.status == 200 and await r.read() == before

    os.unlink(filler)  # space returns: the service recovers by itself
    assert (await stow(client, data)).status == 200
    for c in settings.storage.copies[:2]:
        assert os.path.exists(object_path(c["url"], sha256(data)))


# --- FT-4: the S3 copy is down -------------------------------------------------------------

async def test_FT4_s3_copy_down_stow_503_reads_fall_back(aiohttp_client, tmp_path):
    with s3_server() as srv:
        srv.create_bucket("ft4")
        opts = srv.store_options()
        settings = three_copy_settings(tmp_path, {
            "url": f"s3://ft4/{uuid.uuid4().hex}", "endpoint_url": opts["endpoint_url"],
            "key": opts["key"], "secret": opts["secret"], "region": opts["region"]})
        client = await aiohttp_client(create_app(settings))
        ds0, data0 = instance(0)
        assert (await stow(client, data0)).status == 200
    # The S3 server is stopped now.
    ds, data = instance(1)
    r = await stow(client, data)
    assert r.status == 503 and r.headers["Retry-After"]
    assert (await r.json())["00081198"]["Value"][0]["00081197"]["Value"] == [A700]
    assert await instance_count(client) == 1
    r = await client.get(wado_url(ds0), headers=SINGLE)
    assert r.status == 200 and await r.read() == data0
    # The scrubber calls the copy UNREACHABLE (never corrupt), repairs nothing, and the
    # run is not OK; the copy that was written before the outage is an orphan.
    archive = client.app[ARCHIVE]
    report = Scrubber(archive.store, archive.catalogue, repair=True, orphans=False).run()
    assert report.counts == {"OK": 2, "UNREACHABLE": 1}
    assert report.repairs == 0 and report.remaining == 1 and not report.ok


# --- FT-6 / FT-8 through WADO --------------------------------------------------------------

async def test_FT6_wado_serves_good_copy_never_bad_bytes(aiohttp_client, tmp_path):
    settings = three_copy_settings(tmp_path)
    client = await aiohttp_client(create_app(settings))
    ds, data = instance(0, frames=2)
    assert (await stow(client, data)).status == 200
    path = object_path(settings.storage.copies[0]["url"], sha256(data))
    bad = bytearray(data)
    bad[-10] ^= 0xFF  # inside the pixel data of frame 2
    with open(path, "wb") as f:
        f.write(bad)
    # Frames are cut by byte range and checked by CRC32: the bad copy's frame is caught
    # and the frame is read again from a good copy; never bad bytes.
    r = await client.get(wado_url(ds) + "/frames/2", headers=FRAMES)
    assert r.status == 200
    assert ds.pixel_array[1].tobytes() in await r.read()
    r = await client.get(wado_url(ds), headers=SINGLE)
    assert r.status == 200 and await r.read() == data
    # The bad copy was reported and is rewritten in the background (repair-on-read).
    archive = client.app[ARCHIVE]
    archive.store.wait_repairs(10)
    with open(path, "rb") as f:
        assert f.read() == data


async def test_FT8_all_copies_bad_wado_503(aiohttp_client, tmp_path):
    settings = three_copy_settings(tmp_path, {"url": str(tmp_path / "copy-c")})
    client = await aiohttp_client(create_app(settings))
    ds, data = instance(0)
    assert (await stow(client, data)).status == 200
    for n, c in enumerate(settings.storage.copies):
        path = object_path(c["url"], sha256(data))
        if n == 1:
            os.unlink(path)
        else:
            with open(path, "wb") as f:
                f.write(data[:-1] + b"\x01")
    r = await client.get(wado_url(ds), headers=SINGLE)
    assert r.status == 503 and data not in await r.read()
    r = await client.get(wado_url(ds) + "/metadata")
    assert r.status == 200  # the index still knows it; only the bytes are unavailable
