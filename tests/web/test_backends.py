"""The same DICOMweb flow on the scale-out back ends: PostgreSQL index and S3 object
storage (a real S3-protocol server), through s3fs (issue 2 "Tests"; R-A6, R-H1)."""
from __future__ import annotations

import uuid

import pytest
from dicomgen import make_dataset, multipart, to_part10

from pacsd.web import create_app

pytestmark = pytest.mark.asyncio


def _empty(url: str) -> None:
    """The session's PostgreSQL database is shared with other tests (tests/index,
    tests/security) that leave rows behind: start from an empty catalogue."""
    import sqlalchemy as sa

    from pacsd.index import Catalogue
    cat = Catalogue(url)
    cat.migrate()
    with cat.engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE instances, series, studies, patients "
                             "RESTART IDENTITY CASCADE"))
    cat.close()


@pytest.fixture
async def scaled_client(aiohttp_client, settings, pg_server_url, s3_endpoint):
    _empty(pg_server_url)
    settings.index.url = pg_server_url
    settings.storage.url = f"s3://pacsd-e2e/{uuid.uuid4().hex}"
    opts = s3_endpoint.store_options()
    settings.storage.endpoint_url = opts["endpoint_url"]
    settings.storage.key, settings.storage.secret = opts["key"], opts["secret"]
    settings.storage.region = opts["region"]
    return await aiohttp_client(create_app(settings))


async def test_postgres_and_s3_round_trip(scaled_client):
    client = scaled_client
    ds = make_dataset(frames=2, rows=8, columns=8, PatientName="Li^Na=李^娜",
                      SpecificCharacterSet="ISO_IR 192")
    data = to_part10(ds)
    body, ctype = multipart([data, data])
    r = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert r.status == 200
    r = await client.get("/dicom-web/studies?PatientName=李*")
    assert [i["0020000D"]["Value"][0] for i in await r.json()] == [ds.StudyInstanceUID]
    base = (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")
    r = await client.get(base, headers={"Accept": 'multipart/related; '
                                                  'type="application/dicom"; transfer-syntax=*'})
    assert r.status == 200 and data in await r.read()
    r = await client.get(f"{base}/frames/2", headers={
        "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
    assert r.status == 200 and ds.pixel_array[1].tobytes() in await r.read()
    assert (await client.delete(f"/dicom-web/studies/{ds.StudyInstanceUID}")).status == 204
    assert (await client.get(base)).status == 404
