"""QIDO-RS through the HTTP adapter (R-A1, BI-28, BI-30). Matching itself is tested on both
index back ends in tests/index; here: URL decoding, headers, scoping, errors."""
from __future__ import annotations

import pytest
from dicomgen import make_dataset, to_part10
from pydicom.uid import generate_uid

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def archive3(stow):
    """Three studies; one with a Chinese name stored in GB18030 (BI-28)."""
    a = make_dataset(PatientName="Smith^John", PatientID="P1", StudyDate="20250105",
                     Modality="CT", AccessionNumber="A1")
    b = make_dataset(PatientName="Wang^XiaoMing=王^小明=wang^xiaoming", PatientID="P2",
                     StudyDate="20250610", Modality="MR", AccessionNumber="A2",
                     SpecificCharacterSet=["GB18030"])
    c = make_dataset(study=a.StudyInstanceUID, PatientName="Smith^John", PatientID="P1",
                     StudyDate="20250105", Modality="SR", SeriesNumber=2, AccessionNumber="A1")
    c.pop("PixelData")
    r = await stow([to_part10(x) for x in (a, b, c)])
    assert r.status == 200, await r.text()
    return a, b, c


def uids(items, tag="0020000D"):
    return [i[tag]["Value"][0] for i in items]


async def test_study_level_and_headers(client, archive3):
    a, b, _ = archive3
    r = await client.get("/dicom-web/studies")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("application/dicom+json")
    items = await r.json()
    assert r.headers["X-Total-Count"] == "2"
    assert uids(items) == [b.StudyInstanceUID, a.StudyInstanceUID]  # newest first
    study_a = items[1]
    assert sorted(study_a["00080061"]["Value"]) == ["CT", "SR"]  # ModalitiesInStudy
    assert study_a["00201206"]["Value"] == [2] and study_a["00201208"]["Value"] == [2]
    assert study_a["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{a.StudyInstanceUID}")


async def test_url_decoded_wildcards_ranges_and_chinese(client, archive3):
    a, b, _ = archive3
    cases = {
        "PatientName=Smi%2A": [a],
        "PatientName=%E7%8E%8B*": [b],       # 王* (BI-28)
        "PatientName=%E7%8E%8B%E5%B0%8F%E6%98%8E": [b],  # 王小明
        "00100020=P2": [b],
        "StudyDate=20250101-20250131": [a],
        "StudyDate=20250601-": [b],
        "ModalitiesInStudy=SR": [a],
        f"StudyInstanceUID={a.StudyInstanceUID},{b.StudyInstanceUID}": [b, a],
        "PatientName=smi&fuzzymatching=true": [a],
        "AccessionNumber=A?": [b, a],
        "PatientName=%25%27%20OR%201%3D1--": [],   # %' OR 1=1-- (BI-30): no match, no error
    }
    for query, expected in cases.items():
        r = await client.get(f"/dicom-web/studies?{query}")
        assert r.status == 200, (query, await r.text())
        assert uids(await r.json()) == [x.StudyInstanceUID for x in expected], query


async def test_chinese_name_in_json_is_utf8(client, archive3):
    _, b, _ = archive3
    r = await client.get(f"/dicom-web/studies?StudyInstanceUID={b.StudyInstanceUID}")
    pn = (await r.json())[0]["00100010"]["Value"][0]
    assert pn["Ideographic"] == "王^小明"
    assert pn["Alphabetic"] == "Wang^XiaoMing"


async def test_scoped_and_relational(client, archive3):
    a, _, c = archive3
    r = await client.get(f"/dicom-web/studies/{a.StudyInstanceUID}/series")
    assert sorted(i["00080060"]["Value"][0] for i in await r.json()) == ["CT", "SR"]
    r = await client.get(f"/dicom-web/studies/{a.StudyInstanceUID}/series/"
                         f"{c.SeriesInstanceUID}/instances")
    assert uids(await r.json(), "00080018") == [c.SOPInstanceUID]
    r = await client.get("/dicom-web/instances?PatientID=P1")
    assert len(await r.json()) == 2
    r = await client.get(f"/dicom-web/studies/{generate_uid()}/series")
    assert r.status == 200 and await r.json() == []


async def test_limit_offset_total_warning(client, archive3):
    r = await client.get("/dicom-web/studies?limit=1")
    assert len(await r.json()) == 1
    assert r.headers["X-Total-Count"] == "2"
    assert "additional results" in r.headers["Warning"]
    r = await client.get("/dicom-web/studies?limit=1&offset=1")
    assert len(await r.json()) == 1
    r = await client.get("/dicom-web/studies?limit=1000000000")
    assert r.status == 200  # clamped to qido_max_limit


async def test_includefield(client, archive3):
    r = await client.get("/dicom-web/series?includefield=all")
    assert r.status == 200
    r = await client.get("/dicom-web/studies?includefield=PatientBirthDate")
    assert all("00100030" in i for i in await r.json())


@pytest.mark.parametrize("query", [
    "StudyDate=2025", "StudyDate=20251301", "limit=-1", "offset=-5", "limit=abc",
    "GGGG0010=x", "NoSuchKeyword=1", "PatientName=" + "x" * 5000, "fuzzymatching=maybe",
    "includefield=NoSuchKeyword",
])
async def test_BI30_malformed_parameters_400(client, archive3, query):
    r = await client.get(f"/dicom-web/studies?{query}")
    assert r.status == 400, query
    assert r.headers["Content-Type"].startswith("text/plain")
    assert len(await r.text()) > 5


async def test_accept_xml_406(client):
    r = await client.get("/dicom-web/studies", headers={"Accept": "application/dicom+xml"})
    assert r.status == 406


async def test_RH1_answer_bytes_equal_the_item_dicts(client, archive3):
    """The QIDO-RS body is spliced from stored JSON (R-H1): byte for byte what the
    general path (QueryService.search: dicts, RetrieveURL last) encodes, real ingest,
    GB18030 / UTF-8 names, every level, includefield, paging and Warning headers."""
    import orjson

    from pacsd.services.security import LOCAL
    from pacsd.web.keys import QUERY
    a, b, c = archive3
    query = client.server.app[QUERY]
    cases = [("study", "/dicom-web/studies", [], {}),
             ("study", "/dicom-web/studies", [("PatientName", "王*")], {}),
             ("study", "/dicom-web/studies", [("includefield", "all"), ("limit", "1")], {}),
             ("series", "/dicom-web/series", [("includefield", "NumberOfSeriesRelatedInstances")], {}),
             ("series", f"/dicom-web/studies/{a.StudyInstanceUID}/series", [],
              {"study_uid": a.StudyInstanceUID}),
             ("instance", f"/dicom-web/studies/{a.StudyInstanceUID}/series/"
              f"{a.SeriesInstanceUID}/instances", [],
              {"study_uid": a.StudyInstanceUID, "series_uid": a.SeriesInstanceUID}),
             ("instance", "/dicom-web/instances", [("limit", "2"), ("offset", "1")], {})]
    for level, path, params, kw in cases:
        r = await client.get(path, params=params)
        assert r.status == 200
        body = await r.read()
        base = str(r.url).split("/dicom-web")[0] + "/dicom-web"
        want = await query.search(level, params, base_url=base, actor=LOCAL, **kw)
        assert body == orjson.dumps(want.items), (level, params)
        assert r.headers["X-Total-Count"] == str(want.total)
        assert (r.headers.get("Warning") is not None) == (
            want.total - want.offset - len(want.items) > 0 and bool(want.items))
