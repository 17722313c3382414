"""STOW-RS behaviour and bad input (R-A1; reliability-matrix §6.1, BI-1..BI-27 for DICOMweb).

Each bad-input test asserts the status, that nothing of the bad part was stored, and that
an instance stored before is unchanged.
"""
from __future__ import annotations

import gzip

import pytest
from dicomgen import make_dataset, make_instance, multipart, to_part10
from pydicom.uid import generate_uid

pytestmark = pytest.mark.asyncio

REF_SEQ, FAILED_SEQ, FAILURE_REASON = "00081199", "00081198", "00081197"


def failure_reasons(body: dict) -> list[int]:
    return [item[FAILURE_REASON]["Value"][0] for item in body.get(FAILED_SEQ, {}).get("Value", [])]


def referenced(body: dict) -> list[str]:
    return [item["00081155"]["Value"][0] for item in body.get(REF_SEQ, {}).get("Value", [])]


async def count_instances(client) -> int:
    r = await client.get("/dicom-web/instances")
    assert r.status == 200
    return int(r.headers["X-Total-Count"])


async def fetch(client, study, series, sop) -> bytes:
    r = await client.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}",
                         headers={"Accept": 'multipart/related; type="application/dicom"; '
                                            "transfer-syntax=*"})
    assert r.status == 200, await r.text()
    body = await r.read()
    boundary = r.headers["Content-Type"].split("boundary=")[1]
    parts = body.split(b"--" + boundary.encode())
    payloads = [p.split(b"\r\n\r\n", 1)[1][:-2] for p in parts[1:-1]]
    assert len(payloads) == 1
    return payloads[0]


@pytest.fixture
async def earlier(stow, client):
    """An instance stored before each bad-input attempt; must stay unchanged."""
    ds = make_dataset(seed=7)
    data = to_part10(ds)
    r = await stow([data])
    assert r.status == 200
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, data


async def assert_earlier_intact(client, earlier, n_expected=1):
    study, series, sop, data = earlier
    assert await fetch(client, study, series, sop) == data
    assert await count_instances(client) == n_expected


async def test_store_and_retrieve_bit_exact(stow, client):
    ds = make_dataset(frames=3, rows=32, columns=24)
    data = to_part10(ds)
    r = await stow([data])
    assert r.status == 200
    body = await r.json()
    assert referenced(body) == [ds.SOPInstanceUID]
    assert FAILED_SEQ not in body
    assert body["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{ds.StudyInstanceUID}")
    assert await fetch(client, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == data


async def test_BI25_identical_resend_is_idempotent(stow, client, earlier):
    r = await stow([earlier[3]])
    assert r.status == 200
    assert referenced(await r.json()) == [earlier[2]]
    await assert_earlier_intact(client, earlier)


async def test_BI26_same_uid_other_content_refused(stow, client, earlier):
    study, series, sop, _ = earlier
    other = make_instance(study=study, series=series, sop=sop, seed=99)
    r = await stow([other])
    assert r.status == 409
    assert failure_reasons(await r.json()) == [0x0111]
    await assert_earlier_intact(client, earlier)


async def test_BI5_study_mismatch_with_url(stow, client, earlier):
    r = await stow([make_instance()], study=earlier[0])
    assert r.status == 409
    body = await r.json()
    assert failure_reasons(body) == [0xC409]
    assert "differs from the study" in r.headers["Warning"]
    await assert_earlier_intact(client, earlier)


async def test_BI27_instance_moved_to_other_study_refused(stow, client, earlier):
    _, series, sop, _ = earlier
    r = await stow([make_instance(series=series, sop=generate_uid())])  # series of another study
    assert r.status == 409
    await assert_earlier_intact(client, earlier)


@pytest.mark.parametrize("payload", [b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b"garbage" * 100],
                         ids=["empty", "png", "random"])
async def test_BI1_not_dicom(stow, client, earlier, payload):
    r = await stow([payload])
    assert r.status == 409
    assert failure_reasons(await r.json()) == [0xC000]
    await assert_earlier_intact(client, earlier)


async def test_BI2_no_meta_header_refused(stow, client, earlier):
    data = make_instance()
    r = await stow([data[132:]])  # strip preamble + DICM: no Part-10 header
    assert r.status == 409
    assert failure_reasons(await r.json()) == [0xC000]
    await assert_earlier_intact(client, earlier)


@pytest.mark.parametrize("missing", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
async def test_BI3_missing_uid(stow, client, earlier, missing):
    import io
    from pydicom import dcmread
    f = dcmread(io.BytesIO(make_instance()))
    delattr(f, missing)  # the File Meta still names the instance
    buf = io.BytesIO()
    f.save_as(buf)
    r = await stow([buf.getvalue()])
    assert r.status == 409
    assert failure_reasons(await r.json()) == [0xA900]
    await assert_earlier_intact(client, earlier)


async def test_BI4_only_sop_class_and_instance(stow, client, earlier):
    from pydicom.dataset import Dataset
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    r = await stow([to_part10(ds)])
    assert r.status == 409
    assert failure_reasons(await r.json()) == [0xA900]
    await assert_earlier_intact(client, earlier)


@pytest.mark.parametrize("bad_uid", ["1.2.../../etc", "1.2.03.4", "1.2.abc", "1" * 65,
                                     "1.2/3", "1.2\\3"])
async def test_BI6_bad_uids_refused(stow, client, earlier, bad_uid):
    ds = make_dataset()
    ds.SeriesInstanceUID = bad_uid
    r = await stow([to_part10(ds)])
    assert r.status == 409
    assert failure_reasons(await r.json()) == [0xA900]
    await assert_earlier_intact(client, earlier)


@pytest.mark.parametrize("cut", [200, 400, -100, -1])
async def test_BI7_truncated_file(stow, client, earlier, cut):
    data = make_instance(rows=64, columns=64)
    r = await stow([data[:cut]])
    assert r.status == 409
    assert failure_reasons(await r.json()) == [0xC000]
    await assert_earlier_intact(client, earlier)


async def test_mixed_request_202_lists_every_part(stow, client, earlier):
    good = make_dataset()
    r = await stow([to_part10(good), b"not dicom", earlier[3]])
    assert r.status == 202
    body = await r.json()
    assert set(referenced(body)) == {good.SOPInstanceUID, earlier[2]}
    assert failure_reasons(body) == [0xC000]
    assert "part 2" in r.headers["Warning"]
    await assert_earlier_intact(client, earlier, n_expected=2)


async def test_whole_study_in_one_request(stow, client):
    study, series = generate_uid(), generate_uid()
    datas = [make_instance(study=study, series=series, InstanceNumber=i, seed=i)
             for i in range(1, 21)]
    r = await stow(datas, study=study)
    assert r.status == 200
    assert len(referenced(await r.json())) == 20
    q = await client.get(f"/dicom-web/studies?StudyInstanceUID={study}")
    item = (await q.json())[0]
    assert item["00201208"]["Value"] == [20]  # NumberOfStudyRelatedInstances


async def test_BI14_chunked_transfer_encoding_stored(client, earlier):
    data = make_instance()
    body, ctype = multipart([data])

    async def gen():
        for i in range(0, len(body), 100):
            yield body[i:i + 100]

    r = await client.post("/dicom-web/studies", data=gen(), headers={"Content-Type": ctype})
    assert r.status == 200, await r.text()
    assert len(referenced(await r.json())) == 1
    assert await count_instances(client) == 2


async def test_BI15_huge_content_length_refused_at_once(client, earlier):
    body, ctype = multipart([make_instance()])
    r = await client.post("/dicom-web/studies", data=body, headers={
        "Content-Type": ctype, "Content-Length": str(2**40)})
    assert r.status in (413, 400)
    await assert_earlier_intact(client, earlier)


async def test_BI16_gzip_request_refused(client, earlier):
    body, ctype = multipart([make_instance()])
    r = await client.post("/dicom-web/studies", data=gzip.compress(body), headers={
        "Content-Type": ctype, "Content-Encoding": "gzip"})
    assert r.status == 415
    await assert_earlier_intact(client, earlier)


async def test_BI17_body_over_limit_while_streaming(client, settings, earlier):
    settings.dicomweb.max_request_bytes = 20_000
    first = make_dataset()
    datas = [to_part10(first)] + [make_instance(rows=64, columns=64) for _ in range(5)]
    body, ctype = multipart(datas)

    async def gen():  # chunked: no Content-Length to refuse up front
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    r = await client.post("/dicom-web/studies", data=gen(), headers={"Content-Type": ctype})
    assert r.status == 413
    body_json = await r.json()
    stored = referenced(body_json)
    # The response says exactly what was stored before the limit hit (BI-19 rule).
    assert await count_instances(client) == 1 + len(stored)
    assert 0xA700 in failure_reasons(body_json)


@pytest.mark.parametrize("ctype,status", [
    ("multipart/related; type=\"application/dicom\"", 400),           # no boundary
    ("multipart/related; type=\"application/dicom\"; boundary=" + "b" * 71, 400),
    ("multipart/form-data; boundary=abc", 415),
    ("application/dicom", 415),
    ("multipart/related; type=\"application/dicom+json\"; boundary=abc", 415),
    # BI-22: XML metadata is never parsed, so no DTD / external entity can be resolved
    ("multipart/related; type=\"application/dicom+xml\"; boundary=abc", 415),
])
async def test_BI18_bad_content_type(client, earlier, ctype, status):
    r = await client.post("/dicom-web/studies", data=b"--abc--\r\n",
                          headers={"Content-Type": ctype})
    assert r.status == status
    assert r.headers["Content-Type"].startswith("text/plain")
    await assert_earlier_intact(client, earlier)


async def test_BI19_missing_final_boundary(client, earlier):
    good = make_dataset()
    body, ctype = multipart([to_part10(good), make_instance()])
    truncated = body[: body.rindex(b"--pacsdtestboundary") - 400]  # cut inside part 2
    r = await client.post("/dicom-web/studies", data=truncated, headers={"Content-Type": ctype})
    assert r.status in (202, 400)
    body_json = await r.json()
    stored = referenced(body_json)
    assert await count_instances(client) == 1 + len(stored)
    assert failure_reasons(body_json)


async def test_BI20_too_many_parts(client, settings, earlier):
    settings.dicomweb.max_parts = 3
    body, ctype = multipart([make_instance() for _ in range(5)])
    r = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert r.status == 413
    body_json = await r.json()
    assert len(referenced(body_json)) == 3
    assert await count_instances(client) == 4


async def test_BI21_base64_part_refused(client, earlier):
    import base64
    b = "bnd"
    body = (f"--{b}\r\nContent-Type: application/dicom\r\nContent-Transfer-Encoding: base64"
            f"\r\n\r\n").encode() + base64.b64encode(make_instance()) + f"\r\n--{b}--\r\n".encode()
    r = await client.post("/dicom-web/studies", data=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={b}'})
    assert r.status == 409
    await assert_earlier_intact(client, earlier)


async def test_BI23_unsupported_part_type(client, earlier):
    body, ctype = multipart([b"\xff\xd8\xff\xe0jpeg"], part_type="image/jpeg")
    r = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert r.status == 409
    assert failure_reasons(await r.json()) == [0xC000]
    await assert_earlier_intact(client, earlier)


async def test_no_parts_is_400(client):
    r = await client.post("/dicom-web/studies", data=b"--abc--\r\n", headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=abc'})
    assert r.status == 400


async def test_stow_accept_xml_406(client):
    body, ctype = multipart([make_instance()])
    r = await client.post("/dicom-web/studies", data=body, headers={
        "Content-Type": ctype, "Accept": "application/dicom+xml"})
    assert r.status == 406
    assert await count_instances(client) == 0


async def test_instance_too_large(client, settings, earlier):
    settings.dicomweb.max_instance_bytes = 2000
    r = await client.post("/dicom-web/studies", data=multipart(
        [make_instance(rows=64, columns=64)])[0], headers={"Content-Type": multipart([])[1]})
    assert r.status == 413
    await assert_earlier_intact(client, earlier)


@pytest.mark.parametrize("magic", [b"MZ\x90\x00", b"\x7fELF", b"#!/bin/sh\n"])
async def test_BI24_executable_preamble_zeroed(stow, client, magic):
    ds = make_dataset()
    data = to_part10(ds)
    hostile = magic + b"\x01" * (128 - len(magic)) + data[128:]
    r = await stow([hostile])
    assert r.status == 200
    got = await fetch(client, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert got[:128] == bytes(128)
    assert got[128:] == data[128:]  # dataset bytes untouched


async def test_BI24_tiff_dual_format_preamble_kept(stow, client):
    ds = make_dataset()
    data = to_part10(ds)
    tiff = b"II*\x00" + bytes(124) + data[128:]
    assert (await stow([tiff])).status == 200
    got = await fetch(client, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert got == tiff
