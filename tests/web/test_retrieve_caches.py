"""Retrieve-path caches (issue 6, R-A1, R-H1). Series/study metadata served from the
answers kept under their ETag: byte-for-byte the array the per-instance join produced
before the cache, with GB18030 / UTF-8 names and private tags (BI-28), gzip compressed
once, and never stale after an ingest or a delete below the series. Rendered frames and
thumbnails kept per object sha256 and parameters, and (worker processes) in the files the
workers share, checked by their hash on every read."""
from __future__ import annotations

import gzip

import orjson
import pytest
from dicomgen import make_dataset, to_part10

from pacsd.model import BULK_BASE
from pacsd.services.cache import BytesLRU, SharedFileCache
from pacsd.web.dicomweb.wado import accepts_gzip
from pacsd.web.keys import ARCHIVE, RETRIEVE

pytestmark = pytest.mark.asyncio

JSON = {"Accept": "application/dicom+json"}
PLAIN = {**JSON, "Accept-Encoding": "identity"}
GZIP = {**JSON, "Accept-Encoding": "gzip"}


def reference_body(catalogue, study: str, series: str | None, base: str) -> bytes:
    """The answer as built before the cache (git e57b8e4, RetrieveService.metadata_chunks):
    per-instance stored objects joined in groups of 256, the bulk data template replaced
    in each group."""
    placeholder = b'"BulkDataURI":"' + BULK_BASE.encode()
    replacement = b'"BulkDataURI":"' + base.encode()
    items = list(catalogue.iter_metadata(study, series))
    out = [b"["]
    for start in range(0, len(items), 256):
        body = b",".join(items[start:start + 256]).replace(placeholder, replacement)
        out.append(body if start == 0 else b"," + body)
    out.append(b"]")
    return b"".join(out)


def _with_private(ds, value: str):
    block = ds.private_block(0x0029, "ACME PERF 1.0", create=True)
    block.add_new(0x10, "LO", value)
    block.add_new(0x11, "OB", b"\x00\x01\x02\x03")
    return ds


@pytest.fixture
async def two_series(stow):
    """Study 1: one series of 258 instances (over the old 256-item grouping) in GB18030
    with private tags; study 2: a UTF-8 series of 3."""
    first = make_dataset(PatientName="Wang^XiaoMing=王^小明=wang^xiaoming",
                         SpecificCharacterSet=["GB18030"], SeriesDescription="胸部 CT",
                         Modality="CT")
    parts = []
    for i in range(258):
        ds = make_dataset(study=first.StudyInstanceUID, series=first.SeriesInstanceUID,
                          PatientName=first.PatientName, SpecificCharacterSet=["GB18030"],
                          SeriesDescription="胸部 CT", Modality="CT", seed=i % 7)
        ds.InstanceNumber = i + 1
        parts.append(to_part10(_with_private(ds, f"私有 {i}")))
    for start in range(0, len(parts), 100):
        r = await stow(parts[start:start + 100])
        assert r.status == 200, await r.text()
    second = [make_dataset(PatientName="Müller^Jürgen", SpecificCharacterSet=["ISO_IR 192"],
                           StudyDescription="Schädel", Modality="MR", seed=i)
              for i in range(3)]
    for i, ds in enumerate(second[1:], start=2):
        ds.StudyInstanceUID, ds.SeriesInstanceUID = (second[0].StudyInstanceUID,
                                                    second[0].SeriesInstanceUID)
        ds.InstanceNumber = i
    r = await stow([to_part10(_with_private(ds, "Größe")) for ds in second])
    assert r.status == 200, await r.text()
    return first, second[0]


async def test_R_A1_metadata_bytes_equal_the_per_instance_join(client, two_series):
    catalogue = client.server.app[ARCHIVE].catalogue
    base = str(client.make_url("/dicom-web"))
    for ds in two_series:
        for url, series in (
                (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/"
                 f"{ds.SeriesInstanceUID}/metadata", ds.SeriesInstanceUID),
                (f"/dicom-web/studies/{ds.StudyInstanceUID}/metadata", None)):
            want = reference_body(catalogue, ds.StudyInstanceUID, series, base)
            for _ in range(2):          # first built, then from the cache
                r = await client.get(url, headers=PLAIN)
                assert r.status == 200
                assert r.headers.get("Content-Encoding") is None
                assert await r.read() == want
                rz = await client.get(url, headers=GZIP, auto_decompress=False)
                assert rz.status == 200 and rz.headers["Content-Encoding"] == "gzip"
                assert gzip.decompress(await rz.read()) == want
                assert rz.headers["ETag"] == r.headers["ETag"]
                assert "Accept-Encoding" in r.headers["Vary"]
    retrieve = client.server.app[RETRIEVE]
    assert retrieve.metadata_cache.hits >= 8
    # The decoded text: names in their own scripts, private tags with their creator.
    first, second = two_series
    r = await client.get(f"/dicom-web/studies/{first.StudyInstanceUID}/metadata", headers=JSON)
    items = orjson.loads(await r.read())
    assert len(items) == 258
    assert items[0]["00100010"]["Value"][0]["Ideographic"] == "王^小明"
    assert items[0]["00290010"]["Value"] == ["ACME PERF 1.0"]
    assert [it["00291010"]["Value"][0] for it in items] == [f"私有 {i}" for i in range(258)]
    assert items[0]["00291011"]["vr"] == "OB"
    assert {"BulkDataURI", "InlineBinary"} & set(items[0]["00291011"])
    r = await client.get(f"/dicom-web/studies/{second.StudyInstanceUID}/metadata",
                         headers=JSON)
    items = orjson.loads(await r.read())
    assert items[0]["00100010"]["Value"][0]["Alphabetic"] == "Müller^Jürgen"
    assert items[0]["00291010"]["Value"] == ["Größe"]


async def test_R_A1_metadata_never_stale_after_ingest_or_delete(client, stow):
    a = make_dataset(Modality="CT")
    r = await stow([to_part10(a)])
    assert r.status == 200
    url = f"/dicom-web/studies/{a.StudyInstanceUID}/series/{a.SeriesInstanceUID}/metadata"
    r1 = await client.get(url, headers=PLAIN)
    etag1 = r1.headers["ETag"]
    assert len(orjson.loads(await r1.read())) == 1
    assert (await client.get(url, headers={**PLAIN, "If-None-Match": etag1})).status == 304
    b = make_dataset(study=a.StudyInstanceUID, series=a.SeriesInstanceUID, Modality="CT",
                     seed=2)
    b.InstanceNumber = 2
    assert (await stow([to_part10(b)])).status == 200
    for headers in (PLAIN, GZIP):
        r2 = await client.get(url, headers={**headers, "If-None-Match": etag1})
        assert r2.status == 200 and r2.headers["ETag"] != etag1
        got = [it["00080018"]["Value"][0] for it in orjson.loads(await r2.read())]
        assert got == [a.SOPInstanceUID, b.SOPInstanceUID]
    d = await client.delete(f"/dicom-web/studies/{a.StudyInstanceUID}/series/"
                            f"{a.SeriesInstanceUID}/instances/{b.SOPInstanceUID}")
    assert d.status == 204
    r3 = await client.get(url, headers=PLAIN)
    assert [it["00080018"]["Value"][0] for it in orjson.loads(await r3.read())] == \
        [a.SOPInstanceUID]
    d = await client.delete(f"/dicom-web/studies/{a.StudyInstanceUID}")
    assert d.status == 204
    assert (await client.get(url, headers=PLAIN)).status == 404


async def test_R_A1_bulkdata_uri_follows_the_host_asked(client, stow):
    """The cached answer is per base URL: a second host name gets its own URIs."""
    a = make_dataset()
    assert (await stow([to_part10(a)])).status == 200
    url = f"/dicom-web/studies/{a.StudyInstanceUID}/metadata"
    one = orjson.loads(await (await client.get(url, headers=PLAIN)).read())
    two = orjson.loads(await (await client.get(
        url, headers={**PLAIN, "Host": "viewer.example:8042"})).read())
    assert one[0]["7FE00010"]["BulkDataURI"].startswith(str(client.make_url("/dicom-web")))
    assert two[0]["7FE00010"]["BulkDataURI"].startswith("http://viewer.example:8042/")


@pytest.mark.parametrize("header,want", [
    (None, False), ("", False), ("identity", False), ("gzip", True), ("GZIP", True),
    ("deflate, gzip;q=0.5", True), ("gzip;q=0", False), ("gzip; q=0.0, deflate", False),
    ("*", True), ("*;q=0", False), ("*, gzip;q=0", False), ("x-gzip", True),
    ("br, deflate", False), ("gzip;q=bad", False)])
async def test_accepts_gzip(header, want):
    assert accepts_gzip(header) is want


async def test_bytes_lru_bound():
    c = BytesLRU(100)
    c.put("a", b"x" * 20)
    c.put("b", b"y" * 20)
    c.put("huge", b"z" * 26)        # over a quarter of the bound: not kept
    assert c.get("huge") is None and len(c) == 2
    for i in range(10):
        c.put(i, b"w" * 20)
    assert c.size <= 100 and c.get("a") is None and c.get(9) == b"w" * 20


async def test_rendered_and_thumbnail_kept_per_object_and_parameters(client, stow):
    """A second /rendered or /thumbnail of the same object and parameters is the same
    image from the cache; other parameters render again; a deleted instance is gone."""
    ds = make_dataset(rows=64, columns=48, WindowCenter=1000, WindowWidth=2000)
    assert (await stow([to_part10(ds)])).status == 200
    base = (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")
    cache = client.server.app[RETRIEVE].render_cache
    jpeg = {"Accept": "image/jpeg"}
    first = await (await client.get(f"{base}/rendered", headers=jpeg)).read()
    hits = cache.hits
    again = await client.get(f"{base}/rendered", headers=jpeg)
    assert again.status == 200 and await again.read() == first and cache.hits == hits + 1
    other = await client.get(f"{base}/rendered?quality=20", headers=jpeg)
    assert other.status == 200 and await other.read() != first
    assert cache.hits == hits + 1
    thumb = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/thumbnail"
    t1 = await (await client.get(thumb, headers=jpeg)).read()
    t2 = await (await client.get(thumb, headers=jpeg)).read()
    assert t1 == t2 and t1[:2] == b"\xff\xd8" and cache.hits == hits + 2
    # Two more instances: the series' middle instance changes, and so does its thumbnail
    # (the kept one was filed under the series' old ETag).
    more = []
    for n in (2, 3):
        m = make_dataset(study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID, rows=64,
                         columns=48, seed=10 + n, WindowCenter=1000, WindowWidth=2000)
        m.InstanceNumber = n
        more.append(to_part10(m))
    assert (await stow(more)).status == 200
    t3 = await (await client.get(thumb, headers=jpeg)).read()
    assert t3[:2] == b"\xff\xd8" and t3 != t1
    assert (await client.delete(f"/dicom-web/studies/{ds.StudyInstanceUID}")).status == 204
    assert (await client.get(f"{base}/rendered", headers=jpeg)).status == 404
    assert (await client.get(thumb, headers=jpeg)).status == 404


async def test_RH1_shared_file_cache_checked_and_bounded(tmp_path):
    c = SharedFileCache(tmp_path, 4000)
    assert c.get(("rendered", "ab", 1)) is None and c.misses == 1
    c.put(("rendered", "ab", 1), b"jpeg-1")
    assert SharedFileCache(tmp_path, 4000).get(("rendered", "ab", 1)) == b"jpeg-1"
    assert c.get(("rendered", "ab", 2)) is None
    # A damaged file is a miss (and removed), never served.
    (path,) = [f for f in tmp_path.iterdir()]
    path.write_bytes(path.read_bytes()[:-1] + b"X")
    assert c.get(("rendered", "ab", 1)) is None and not path.exists()
    for i in range(40):
        c.put(i, bytes([i]) * 300)
    assert sum(f.stat().st_size for f in tmp_path.iterdir()) <= 4000
    assert c.get(39) == bytes([39]) * 300 and c.get(0) is None
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no temp left


async def test_RH1_rendered_and_thumbnail_shared_between_workers(client, stow, tmp_path):
    """With worker processes a preview rendered by one is served to the others from the
    shared files (server.py): emptying this process's memory cache, as another worker's
    is, gives the same bytes without rendering again."""
    retrieve = client.server.app[RETRIEVE]
    retrieve.shared_render = shared = SharedFileCache(tmp_path / "render-cache", 2**20)
    shared.dir.mkdir()
    ds = make_dataset(rows=64, columns=48, WindowCenter=1000, WindowWidth=2000)
    assert (await stow([to_part10(ds)])).status == 200
    series = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    jpeg = {"Accept": "image/jpeg"}
    for url in (f"{series}/instances/{ds.SOPInstanceUID}/rendered", f"{series}/thumbnail"):
        first = await (await client.get(url, headers=jpeg)).read()
        retrieve.render_cache.clear()
        hits = shared.hits
        again = await client.get(url, headers=jpeg)
        assert again.status == 200 and await again.read() == first
        assert shared.hits == hits + 1
    assert (await client.delete(f"/dicom-web/studies/{ds.StudyInstanceUID}")).status == 204
    assert (await client.get(f"{series}/thumbnail", headers=jpeg)).status == 404
