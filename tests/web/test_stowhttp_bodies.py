"""STOW-RS bodies through the app with pacsd's streaming multipart reader (issue 6):
what any RFC 2046 client may send is stored, bad bodies get precise answers and the
response matches what was committed (reliability-matrix BI-14, BI-19, BI-20)."""
from __future__ import annotations

import random

import pytest
from dicomgen import make_instance, multipart

pytestmark = pytest.mark.asyncio
CTYPE = 'multipart/related; type="application/dicom"; boundary=pacsdtestboundary'


def referenced(body: dict) -> list[str]:
    return [i["00081155"]["Value"][0] for i in body.get("00081199", {}).get("Value", [])]


async def count(client) -> int:
    r = await client.get("/dicom-web/instances")
    return int(r.headers["X-Total-Count"])


@pytest.mark.parametrize("seed", range(3))
async def test_chunked_body_in_random_pieces(client, seed):
    rng = random.Random(seed)
    datas = [make_instance(rows=rng.choice([4, 64]), columns=64) for _ in range(3)]
    body, ctype = multipart(datas)
    edges = sorted({0, len(body), *(rng.randrange(len(body)) for _ in range(40))})

    async def gen():
        for a, b in zip(edges, edges[1:]):
            yield body[a:b]

    r = await client.post("/dicom-web/studies", data=gen(), headers={"Content-Type": ctype})
    assert r.status == 200, await r.text()
    assert len(referenced(await r.json())) == 3
    assert await count(client) == 3


async def test_preamble_epilogue_padding_and_no_part_headers(client):
    a, b = make_instance(), make_instance()
    body = (b"a preamble to ignore\r\n--pacsdtestboundary \t\r\n\r\n" + a +
            b"\r\n--pacsdtestboundary\r\ncontent-type: Application/DICOM\r\n\r\n" + b +
            b"\r\n--pacsdtestboundary--\r\nan epilogue")
    r = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": CTYPE})
    assert r.status == 200, await r.text()
    assert len(referenced(await r.json())) == 2


@pytest.mark.parametrize("bad", [
    b"--pacsdtestboundary junk\r\n\r\n",                           # garbage after delimiter
    b"--pacsdtestboundary\r\nX: " + b"a" * 20000 + b"\r\n\r\n",     # header block too large
    b"--pacsdtestboundary\r\n" + b"X-A: 1\r\n" * 300 + b"\r\n",     # too many headers
    b"--pacsdtestboundary\r\nno colon\r\n\r\n",                     # malformed header
])
async def test_bad_second_part_keeps_the_first(client, bad):
    first = make_instance()
    body = (b"--pacsdtestboundary\r\nContent-Type: application/dicom\r\n\r\n" + first +
            b"\r\n" + bad + make_instance() + b"\r\n--pacsdtestboundary--\r\n")
    r = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": CTYPE})
    assert r.status == 202, await r.text()
    got = await r.json()
    assert len(referenced(got)) == 1
    assert got["00081198"]["Value"]  # the failure is listed
    assert await count(client) == 1   # response and commit state match (BI-19)


async def test_body_without_any_delimiter_is_400(client):
    r = await client.post("/dicom-web/studies", data=b"x" * 5000, headers={"Content-Type": CTYPE})
    assert r.status == 400
    assert await count(client) == 0


async def test_non_ascii_boundary_is_400(client):
    r = await client.post("/dicom-web/studies", data=b"--x--", headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary="b\u00e9"'})
    assert r.status == 400
