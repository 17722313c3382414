"""WADO-RS, WADO-URI and DELETE through the real aiohttp app (R-A1, R-A5, BI-31, BI-32,
SEC-3, SEC-14, SEC-24)."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pydicom
import pytest
from dicomgen import make_dataset, to_part10
from PIL import Image

pytestmark = pytest.mark.asyncio

OCTET_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def split_multipart(body: bytes, content_type: str) -> list[tuple[dict, bytes]]:
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    out = []
    for chunk in body.split(b"--" + boundary.encode())[1:-1]:
        head, payload = chunk.split(b"\r\n\r\n", 1)
        headers = {}
        for line in head.decode().strip().split("\r\n"):
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        out.append((headers, payload[:-2]))
    return out


@pytest.fixture
async def stored(stow):
    ds = make_dataset(frames=4, rows=20, columns=30, seed=3,
                      WindowCenter=1000, WindowWidth=2000)
    data = to_part10(ds)
    r = await stow([data])
    assert r.status == 200
    base = (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")
    return ds, data, base


async def test_frames_as_stored_are_exact(client, stored):
    ds, _, base = stored
    r = await client.get(f"{base}/frames/1,3", headers={"Accept": OCTET_ANY})
    assert r.status == 200
    parts = split_multipart(await r.read(), r.headers["Content-Type"])
    assert [h["content-type"] for h, _ in parts] == [
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"] * 2
    pixels = ds.pixel_array
    assert parts[0][1] == pixels[0].tobytes()
    assert parts[1][1] == pixels[2].tobytes()


async def test_frames_default_accept_is_explicit_le(client, stored):
    ds, _, base = stored
    r = await client.get(f"{base}/frames/2")
    assert r.status == 200
    ((h, payload),) = split_multipart(await r.read(), r.headers["Content-Type"])
    assert h["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert payload == ds.pixel_array[1].tobytes()


@pytest.mark.parametrize("frames,status", [("0", 400), ("5", 404), ("1,x", 400),
                                           (",".join(["1"] * 5000), 400), ("-1", 400)])
async def test_BI31_bad_frame_numbers(client, stored, frames, status):
    _, _, base = stored
    r = await client.get(f"{base}/frames/{frames}", headers={"Accept": OCTET_ANY})
    assert r.status == status


async def test_BI31_unsupported_transfer_syntax_406(client, stored):
    _, _, base = stored
    r = await client.get(f"{base}/frames/1", headers={
        "Accept": 'multipart/related; type="application/octet-stream"; '
                  "transfer-syntax=1.2.840.10008.1.2.4.50"})
    assert r.status == 406
    r = await client.get(base, headers={
        "Accept": 'multipart/related; type="application/dicom"; '
                  "transfer-syntax=1.2.840.10008.1.2.4.50"})  # lossy: never (R-A5)
    assert r.status == 406


async def test_metadata_etag_gzip(client, stored):
    ds, _, base = stored
    study_meta = f"/dicom-web/studies/{ds.StudyInstanceUID}/metadata"
    r = await client.get(study_meta, headers={"Accept-Encoding": "gzip"})
    assert r.status == 200
    assert r.headers.get("Content-Encoding") == "gzip"
    items = await r.json(content_type=None)
    assert len(items) == 1
    md = items[0]
    assert md["00080018"]["Value"] == [ds.SOPInstanceUID]
    assert md["00280010"]["Value"] == [20]
    uri = md["7FE00010"]["BulkDataURI"]
    assert uri.startswith("http://") and uri.endswith("/bulkdata/7FE00010")
    etag = r.headers["ETag"]
    r2 = await client.get(study_meta, headers={"If-None-Match": etag})
    assert r2.status == 304
    for url in (f"{base}/metadata",
                f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata"):
        r3 = await client.get(url)
        assert r3.status == 200 and len(await r3.json(content_type=None)) == 1


async def test_bulkdata_pixel_data_and_range(client, stored):
    ds, data, base = stored
    r = await client.get(f"{base}/metadata")
    uri = (await r.json(content_type=None))[0]["7FE00010"]["BulkDataURI"]
    path = uri[uri.index("/dicom-web"):]
    r = await client.get(path, headers={"Accept": "application/octet-stream"})
    assert r.status == 200
    assert await r.read() == ds.PixelData
    r = await client.get(path, headers={"Accept": "application/octet-stream",
                                        "Range": "bytes=10-19"})
    assert r.status == 206
    assert await r.read() == ds.PixelData[10:20]
    r = await client.get(path)  # multipart by default
    assert r.status == 200
    ((_, payload),) = split_multipart(await r.read(), r.headers["Content-Type"])
    assert payload == ds.PixelData


async def test_rendered_and_thumbnail(client, stored, stow):
    ds, _, base = stored
    r = await client.get(f"{base}/rendered", headers={"Accept": "image/png"})
    assert r.status == 200 and r.headers["Content-Type"] == "image/png"
    img = Image.open(io.BytesIO(await r.read()))
    assert img.size == (30, 20)
    r = await client.get(f"{base}/frames/2/rendered?window=100,50&viewport=60,40&quality=80")
    assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(await r.read())).size == (60, 40)
    r = await client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/thumbnail")
    assert r.status == 200
    Image.open(io.BytesIO(await r.read())).verify()
    big = make_dataset(rows=300, columns=200, frames=2)
    await stow([to_part10(big)])
    r = await client.get(f"/dicom-web/studies/{big.StudyInstanceUID}/series/"
                         f"{big.SeriesInstanceUID}/instances/{big.SOPInstanceUID}"
                         "/frames/2/thumbnail")
    assert r.status == 200
    assert max(Image.open(io.BytesIO(await r.read())).size) == 128
    r = await client.get(f"{base}/rendered?window=abc")
    assert r.status == 400
    r = await client.get(f"{base}/rendered", headers={"Accept": "application/pdf"})
    assert r.status == 406


async def test_transcode_to_implicit_and_explicit_bit_exact(client, stored):
    ds, _, base = stored
    for ts in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1"):
        r = await client.get(base, headers={
            "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={ts}'})
        assert r.status == 200
        ((h, payload),) = split_multipart(await r.read(), r.headers["Content-Type"])
        got = pydicom.dcmread(io.BytesIO(payload))
        assert got.file_meta.TransferSyntaxUID == ts
        assert np.array_equal(got.pixel_array, ds.pixel_array)
        assert got.SOPInstanceUID == ds.SOPInstanceUID


async def test_zip_download(client, stored):
    ds, data, _ = stored
    r = await client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}",
                         headers={"Accept": "application/zip"})
    assert r.status == 200
    zf = zipfile.ZipFile(io.BytesIO(await r.read()))
    names = zf.namelist()
    assert names == [f"{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"]
    assert zf.read(names[0]) == data


async def test_wado_uri(client, stored):
    ds, data, _ = stored
    q = (f"requestType=WADO&studyUID={ds.StudyInstanceUID}&seriesUID={ds.SeriesInstanceUID}"
         f"&objectUID={ds.SOPInstanceUID}")
    for prefix in ("/wado", "/dicom-web/wado"):
        r = await client.get(f"{prefix}?{q}&contentType=application%2Fdicom")
        assert r.status == 200 and await r.read() == data
    r = await client.get(f"/wado?{q}")  # default image/jpeg
    assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"
    r = await client.get(f"/wado?{q}&contentType=image/png&rows=40&frameNumber=2"
                         "&windowCenter=100&windowWidth=400")
    assert r.status == 200
    assert Image.open(io.BytesIO(await r.read())).size[1] == 40
    r = await client.get(f"/wado?{q}&contentType=application/dicom"
                         "&transferSyntax=1.2.840.10008.1.2")
    got = pydicom.dcmread(io.BytesIO(await r.read()))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    for bad in ("requestType=XYZ", q.replace("objectUID=", "objectUID=..%2F"),
                q + "&frameNumber=0", q + "&bogus=1"):
        r = await client.get(f"/wado?{bad}")
        assert r.status == 400, bad


async def test_404_unknown_and_SEC3_cross_hierarchy(client, stored, stow):
    ds, _, base = stored
    other = make_dataset()
    await stow([to_part10(other)])
    assert (await client.get("/dicom-web/studies/1.2.3.4")).status == 404
    assert (await client.get("/dicom-web/studies/1.2.3.4/metadata")).status == 404
    # instance of study B addressed under study A
    r = await client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/series/"
                         f"{other.SeriesInstanceUID}/instances/{other.SOPInstanceUID}")
    assert r.status == 404


@pytest.mark.parametrize("path", [
    "/dicom-web/studies/..%2f..%2fetc%2fpasswd",
    "/dicom-web/studies/%252e%252e%252fetc",
    "/dicom-web/studies/1.2.3/series/..%5c..%5cwin.ini/metadata",
    "/dicom-web/studies/1.2.3%00",
])
async def test_BI32_path_traversal(client, stored, path):
    r = await client.get(path)
    assert r.status in (400, 404)
    assert b"root:" not in await r.read()


async def test_SEC24_error_bodies_are_plain_text(client):
    r = await client.get("/dicom-web/rnm94%3Cscript%3Ealert(1)%3C/script%3E")
    assert r.status == 404
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in await r.text()


async def test_SEC14_method_not_allowed(client):
    r = await client.put("/dicom-web/studies")
    assert r.status == 405
    assert "Allow" in r.headers


async def test_delete_levels(client, stow):
    a = make_dataset(seed=1)
    b = make_dataset(study=a.StudyInstanceUID, series=a.SeriesInstanceUID, seed=2,
                     InstanceNumber=2)
    c = make_dataset(study=a.StudyInstanceUID, seed=3)
    assert (await stow([to_part10(x) for x in (a, b, c)])).status == 200
    st = f"/dicom-web/studies/{a.StudyInstanceUID}"
    r = await client.delete(f"{st}/series/{a.SeriesInstanceUID}/instances/{a.SOPInstanceUID}")
    assert r.status == 204
    assert (await client.get(f"{st}/series/{a.SeriesInstanceUID}/instances/"
                             f"{a.SOPInstanceUID}")).status == 404
    q = await (await client.get(f"/dicom-web/studies?StudyInstanceUID={a.StudyInstanceUID}")).json()
    assert q[0]["00201208"]["Value"] == [2]
    assert (await client.delete(f"{st}/series/{c.SeriesInstanceUID}")).status == 204
    assert (await client.delete(st)).status == 204
    assert (await client.get(st)).status == 404
    assert (await client.delete(st)).status == 404


async def test_health(client):
    r = await client.get("/api/v1/health")
    assert r.status == 200
    assert (await r.json())["status"] == "ok"


async def test_cors_only_allowed_origins(aiohttp_client, settings):
    from pacsd.web import create_app
    settings.dicomweb.cors_allowed_origins = ["https://viewer.example"]
    client = await aiohttp_client(create_app(settings))
    pre = {"Origin": "https://viewer.example", "Access-Control-Request-Method": "GET",
           "Access-Control-Request-Headers": "accept"}
    r = await client.options("/dicom-web/studies", headers=pre)
    assert r.status == 204
    assert r.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
    assert "Accept" in r.headers["Access-Control-Allow-Headers"]
    r = await client.options("/dicom-web/studies", headers={**pre, "Origin": "https://evil.example"})
    assert r.status == 403
    r = await client.get("/dicom-web/studies", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    r = await client.get("/dicom-web/studies", headers={"Origin": "https://viewer.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
    assert r.headers["Access-Control-Allow-Origin"] != "*"


async def test_cors_headers_on_streamed_wado_responses(aiohttp_client, settings):
    """Issue 8 item 5 (a stock OHIF on another origin): WADO-RS metadata, frames and
    instances are streamed (prepared inside the handler), and still carry the CORS headers
    for an allowed origin; a browser blocked OHIF's metadata requests without them."""
    from pacsd.web import create_app
    from dicomgen import make_dataset, multipart, to_part10
    settings.dicomweb.cors_allowed_origins = ["https://ohif.example"]
    client = await aiohttp_client(create_app(settings))
    ds = make_dataset(rows=8, columns=8)
    body, ctype = multipart([to_part10(ds)])
    assert (await client.post("/dicom-web/studies", data=body,
                              headers={"Content-Type": ctype})).status == 200
    base = (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")
    for url in (f"/dicom-web/studies/{ds.StudyInstanceUID}/metadata",
                f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                "/metadata", base + "/metadata", base + "/frames/1", base, base + "/thumbnail"):
        r = await client.get(url, headers={"Origin": "https://ohif.example"})
        assert r.status == 200, url
        assert r.headers.get("Access-Control-Allow-Origin") == "https://ohif.example", url
        assert "X-Total-Count" in r.headers["Access-Control-Expose-Headers"]
        assert "Origin" in r.headers["Vary"]
        await r.read()
        r = await client.get(url, headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in r.headers, url
        await r.read()


async def test_deflated_instance_bulkdata_and_frames(client, stow):
    """Deflated files have no file offsets: bulk data and frames go through a lossless
    inflate (transcode) and still come back exact."""
    from pydicom.data import get_testdata_file
    path = get_testdata_file("image_dfl.dcm")
    data = open(path, "rb").read()
    ds = pydicom.dcmread(path)
    assert (await stow([data])).status == 200
    base = (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")
    r = await client.get(f"{base}/bulkdata/7FE00010", headers={"Accept": "application/octet-stream"})
    assert r.status == 200 and await r.read() == ds.PixelData
    r = await client.get(f"{base}/frames/1")
    assert r.status == 200
    ((_, payload),) = split_multipart(await r.read(), r.headers["Content-Type"])
    assert payload == ds.pixel_array.tobytes()


async def test_study_as_stored_has_exact_content_length(client, stow):
    """Issue 6 (R-H1): a study retrieved as stored is announced with its Content-Length
    (sizes are known and every read is checked against size and sha256, R-A6) instead of
    chunked encoding; the parts are the stored objects byte for byte."""
    objs = [to_part10(make_dataset(frames=1, rows=8 + i, columns=8, seed=20 + i,
                                   StudyInstanceUID="1.2.826.0.1.3680043.99.71"))
            for i in range(3)]
    assert (await stow(objs)).status == 200
    r = await client.get("/dicom-web/studies/1.2.826.0.1.3680043.99.71", headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert r.status == 200
    body = await r.read()
    assert "chunked" not in r.headers.get("Transfer-Encoding", "")
    assert int(r.headers["Content-Length"]) == len(body)
    parts = split_multipart(body, r.headers["Content-Type"])
    assert sorted(p for _, p in parts) == sorted(objs)
