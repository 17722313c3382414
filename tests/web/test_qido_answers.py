"""QIDO-RS answers kept per series version (R-H1, issue 6; services/query.py Answers):
the instances of one series are answered from the bytes built for the series' current
version, byte for byte what a fresh query gives (QueryService.search: dicts, RetrieveURL
last), and never stale: an ingest, a delete, a series deleted and stored again (SQLite may
give it the same pk and revision) or a correction below the series changes the version.
Per base URL; answers that read study attributes, and scoped actors, are never kept.
Other pages of studies or series are kept under their page's stamp (pks, revisions,
total: qido_sql.stamp_of) and never stale either."""
from __future__ import annotations

import orjson
import pytest
from dicomgen import make_dataset, to_part10

from pacsd.index import qido_sql
from pacsd.index.qido import parse_qido
from pacsd.services.query import (SHARED_MIN_ITEMS, STAMPED_MIN_ITEMS, Answers, QueryJson,
                                  QueryService)
from pacsd.services.retention import RetentionService
from pacsd.services.security import LOCAL
from pacsd.web.keys import ARCHIVE, QUERY

pytestmark = pytest.mark.asyncio
SOP = "00080018"


@pytest.fixture
def fetches(monkeypatch):
    """How many times the page query ran (qido_sql.fetch)."""
    calls = []
    real = qido_sql.fetch

    def counting(*a, **kw):
        calls.append("stamp" if kw.get("stamp") else "page")
        return real(*a, **kw)
    monkeypatch.setattr(qido_sql, "fetch", counting)
    return calls


async def _series(stow, n: int, **kw):
    first = make_dataset(Modality="CT", **kw)
    parts = [first]
    for i in range(1, n):
        ds = make_dataset(study=first.StudyInstanceUID, series=first.SeriesInstanceUID,
                          Modality="CT", seed=i, **kw)
        ds.InstanceNumber = i + 1
        parts.append(ds)
    r = await stow([to_part10(x) for x in parts])
    assert r.status == 200, await r.text()
    return parts


def _url(ds) -> str:
    return (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            "/instances")


async def _fresh(client, ds, params, base) -> bytes:
    want = await client.server.app[QUERY].search(
        "instance", params, base_url=base, actor=LOCAL, study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID)
    return orjson.dumps(want.items)


async def test_RH1_series_answer_kept_and_equal_to_a_fresh_query(client, stow, fetches):
    parts = await _series(stow, 5, PatientName="Wang^XiaoMing=王^小明=wang^xiaoming",
                          SpecificCharacterSet=["GB18030"])
    ds = parts[0]
    cases = [[], [("limit", "2"), ("offset", "1")], [("includefield", "00200013")],
             [("SOPInstanceUID", parts[3].SOPInstanceUID)]]
    for params in cases:
        r1 = await client.get(_url(ds), params=params)
        runs = len(fetches)
        r2 = await client.get(_url(ds), params=params)
        assert r1.status == r2.status == 200
        body = await r2.read()
        assert body == await r1.read()
        assert len(fetches) == runs, params  # the second answer was the kept one
        base = str(r2.url).split("/dicom-web")[0] + "/dicom-web"
        assert body == await _fresh(client, ds, params, base), params
        for h in ("X-Total-Count", "Warning"):
            assert r1.headers.get(h) == r2.headers.get(h), (params, h)
    assert len(client.server.app[QUERY].answers) == len(cases)
    r = await client.get(_url(ds), params=[("limit", "2"), ("offset", "1")])
    assert r.headers["X-Total-Count"] == "5" and "2 additional" in r.headers["Warning"]


async def test_RH1_series_answer_never_stale(client, stow, fetches):
    parts = await _series(stow, 2)
    a = parts[0]

    async def sops() -> list[str]:
        r = await client.get(_url(a))
        assert r.status == 200
        return [i[SOP]["Value"][0] for i in orjson.loads(await r.read())]
    assert await sops() == [p.SOPInstanceUID for p in parts]
    assert await sops() == [p.SOPInstanceUID for p in parts]
    # An ingest below the series.
    c = make_dataset(study=a.StudyInstanceUID, series=a.SeriesInstanceUID, Modality="CT",
                     seed=9)
    c.InstanceNumber = 3
    assert (await stow([to_part10(c)])).status == 200
    assert await sops() == [parts[0].SOPInstanceUID, parts[1].SOPInstanceUID, c.SOPInstanceUID]
    # A delete below the series.
    d = await client.delete(f"{_url(a)}/{parts[1].SOPInstanceUID}")
    assert d.status == 204
    assert await sops() == [parts[0].SOPInstanceUID, c.SOPInstanceUID]
    # The study deleted and the same series UIDs stored again with one other instance:
    # SQLite may hand out the same pk, revision and count again; the time tells them apart.
    assert (await client.delete(f"/dicom-web/studies/{a.StudyInstanceUID}")).status == 204
    assert await sops() == []
    e = make_dataset(study=a.StudyInstanceUID, series=a.SeriesInstanceUID, Modality="CT",
                     seed=11)
    assert (await stow([to_part10(e)])).status == 200
    assert await sops() == [e.SOPInstanceUID]
    f = make_dataset(study=a.StudyInstanceUID, series=a.SeriesInstanceUID, Modality="CT",
                     seed=12)
    assert (await client.delete(f"/dicom-web/studies/{a.StudyInstanceUID}")).status == 204
    assert (await stow([to_part10(f)])).status == 200
    assert await sops() == [f.SOPInstanceUID]


async def test_RH1_series_answer_rebuilt_after_a_correction(client, stow, fetches):
    parts = await _series(stow, 2, PatientName="Old^Name")
    a = parts[0]
    assert (await client.get(_url(a))).status == 200
    runs = len(fetches)
    r = await client.post(f"/api/v1/studies/{a.StudyInstanceUID}/corrections",
                          json={"changes": {"PatientName": "New^Name"}, "reason": "typo"})
    assert r.status == 201, await r.text()
    r = await client.get(_url(a))
    assert r.status == 200
    assert len(fetches) == runs + 1  # the series version changed: queried again
    base = str(r.url).split("/dicom-web")[0] + "/dicom-web"
    assert await r.read() == await _fresh(client, a, [], base)


async def test_RH1_series_answer_per_base_url(client, stow):
    a = (await _series(stow, 1))[0]
    one = orjson.loads(await (await client.get(_url(a))).read())
    two = orjson.loads(await (await client.get(
        _url(a), headers={"Host": "viewer.example:8042"})).read())
    assert one[0]["00081190"]["Value"][0].startswith(str(client.make_url("/dicom-web")))
    assert two[0]["00081190"]["Value"][0].startswith("http://viewer.example:8042/dicom-web/")


async def test_RH1_answers_that_read_the_study_are_not_kept(client, stow, fetches):
    a = (await _series(stow, 2))[0]
    query = client.server.app[QUERY]
    for params in ([("includefield", "NumberOfStudyRelatedInstances")],
                   [("includefield", "NumberOfSeriesRelatedInstances")],
                   [("includefield", "all")], [("includefield", "StudyDescription")]):
        for _ in range(2):
            runs = len(fetches)
            r = await client.get(_url(a), params=params)
            assert r.status == 200
            assert len(fetches) == runs + 1, params
    assert len(query.answers) == 0
    # Other levels and forms are not kept either.
    for url in ("/dicom-web/instances", "/dicom-web/series",
                f"/dicom-web/studies/{a.StudyInstanceUID}/instances"):
        assert (await client.get(url)).status == 200
    assert len(query.answers) == 0
    r = await client.get(f"/dicom-web/studies/{a.StudyInstanceUID}/series",
                         params=[("includefield", "StudyDescription")])
    assert r.status == 200 and len(query.answers) == 0


async def test_RH1_series_of_a_study_kept_and_never_stale(client, stow, fetches):
    """The series of one study, kept under the study version (every ingest, delete and
    correction below the study bumps it): equal to a fresh query, rebuilt after each."""
    a = (await _series(stow, 2))[0]
    url = f"/dicom-web/studies/{a.StudyInstanceUID}/series"
    query = client.server.app[QUERY]

    async def series_answer(params=()):
        r = await client.get(url, params=list(params))
        assert r.status == 200
        body = await r.read()
        base = str(r.url).split("/dicom-web")[0] + "/dicom-web"
        want = await query.search("series", list(params), base_url=base, actor=LOCAL,
                                  study_uid=a.StudyInstanceUID)
        assert body == orjson.dumps(want.items)
        return [i["0020000E"]["Value"][0] for i in want.items], \
            [i["00201209"]["Value"][0] for i in want.items]
    assert await series_answer() == ([a.SeriesInstanceUID], [2])
    runs = len(fetches)
    assert await series_answer() == ([a.SeriesInstanceUID], [2])
    assert len(fetches) == runs + 1  # the HTTP answer was the kept one (+1: the reference)
    assert await series_answer([("Modality", "CT")]) == ([a.SeriesInstanceUID], [2])
    b = make_dataset(study=a.StudyInstanceUID, Modality="MR", seed=5)
    b.SeriesNumber = 9
    assert (await stow([to_part10(b)])).status == 200
    assert await series_answer() == ([a.SeriesInstanceUID, b.SeriesInstanceUID], [2, 1])
    c = make_dataset(study=a.StudyInstanceUID, series=a.SeriesInstanceUID, Modality="CT",
                     seed=6)
    assert (await stow([to_part10(c)])).status == 200
    assert await series_answer() == ([a.SeriesInstanceUID, b.SeriesInstanceUID], [3, 1])
    d = await client.delete(f"{url}/{b.SeriesInstanceUID}")
    assert d.status == 204
    assert await series_answer() == ([a.SeriesInstanceUID], [3])
    assert await series_answer([("Modality", "MR")]) == ([], [])


async def test_RH1_study_page_kept_under_its_stamp_and_never_stale(client, stow, fetches):
    """A page of studies (``PatientName=Wang*``) is kept under the generation of the
    studies and series rows (SQLite) and its stamp: asked again, nothing but the
    generation is read and the bytes are a fresh query's; an instance more in a matching
    study, a new match, a deleted match and HIS visit data (no revision bump) each give a
    fresh answer; a change elsewhere costs the stamp only. Pages under STAMPED_MIN_ITEMS
    are not kept."""
    studies = [make_dataset(PatientName=f"Wang^{i}", PatientID=f"W{i}", seed=i)
               for i in range(STAMPED_MIN_ITEMS + 1)]
    assert (await stow([to_part10(x) for x in studies])).status == 200
    params = [("PatientName", "Wang*"), ("includefield", "visittype")]
    query = "&".join(f"{k}={v}" for k, v in params)

    async def answer() -> tuple[bytes, list[str]]:
        before = len(fetches)
        r = await client.get(f"/dicom-web/studies?{query}",
                             headers={"Accept": "application/dicom+json"})
        assert r.status == 200
        body = await r.read()
        ran = fetches[before:]
        base = str(r.url).split("/dicom-web")[0] + "/dicom-web"
        want = await client.server.app[QUERY].search("study", params, base_url=base,
                                                     actor=LOCAL)
        assert body == orjson.dumps(want.items)
        return body, ran

    first, ran = await answer()
    assert ran == ["page"]
    again, ran = await answer()
    assert (again, ran) == (first, [])  # the kept bytes: only the generation was read
    more = make_dataset(study=studies[2].StudyInstanceUID, PatientName="Wang^2",
                        PatientID="W2", seed=50)
    assert (await stow([to_part10(more)])).status == 200
    changed, ran = await answer()
    assert changed != first and ran == ["stamp", "page"]
    assert (await answer())[1] == []
    other = make_dataset(PatientName="Li^Lei", PatientID="L1", seed=70)
    assert (await stow([to_part10(other)])).status == 200
    assert await answer() == (changed, ["stamp"])  # no match changed
    assert (await answer())[1] == []
    new = make_dataset(PatientName="Wang^new", PatientID="W99", seed=60)
    assert (await stow([to_part10(new)])).status == 200
    body, ran = await answer()
    assert ran == ["stamp", "page"] and new.StudyInstanceUID.encode() in body
    r = await client.delete(f"/dicom-web/studies/{studies[0].StudyInstanceUID}")
    assert r.status == 204
    body, ran = await answer()
    assert ran == ["stamp", "page"] and studies[0].StudyInstanceUID.encode() not in body
    RetentionService(client.server.app[ARCHIVE]).set_visit(
        studies[1].StudyInstanceUID, "inpatient", "20240101")
    body, ran = await answer()
    assert ran == ["stamp", "page"] and b'"inpatient"' in body
    # A small page is not kept: its stamp would cost what the page does.
    for _ in range(2):
        before = len(fetches)
        r = await client.get("/dicom-web/studies?PatientName=Wang%5Enew")
        assert r.status == 200 and len(await r.json()) == 1
        assert fetches[before:] == ["page"]


async def test_RH1_scoped_queries_are_not_kept(client):
    service = client.server.app[QUERY]
    q = parse_qido("instance", [], study_uid="1.2.3", series_uid="1.2.3.4")
    assert service._kept(q, ()) is not None
    assert service._kept(q, None) is not None
    assert service._kept(q, ("a constraint",)) is None
    q = parse_qido("series", [], study_uid="1.2.3")
    assert service._kept(q, ()) is not None
    assert service._kept(q, ("a constraint",)) is None
    q = parse_qido("study", [("PatientName", "Wang*")])
    assert service._kept(q, ()) is not None
    assert service._kept(q, ("a constraint",)) is None


async def test_RH1_answers_bounded():
    def answer(n: int) -> QueryJson:
        return QueryJson(body=b"x" * n, count=1, total=1, offset=0, limit=100,
                         unsupported=())
    cache = Answers(max_bytes=10_000)
    cache.put("a", (1,), answer(1500))
    cache.put("b", (1,), answer(1500))
    assert cache.get("a", (1,)) is not None
    assert cache.get("a", (2,)) is None  # another version
    cache.put("big", (1,), answer(2400))  # with its overhead over a quarter: not kept
    assert cache.get("big", (1,)) is None
    for k in "cdef":
        cache.put(k, (1,), answer(1500))
    assert cache.get("b", (1,)) is None  # least recently used went first
    assert cache.get("f", (1,)) is not None
    assert cache._size <= 10_000


async def test_RH1_answers_charge_their_keys():
    """Many empty answers under long query parameters stay within the bound."""
    cache = Answers(max_bytes=100_000)
    empty = QueryJson(body=b"[]", count=0, total=0, offset=0, limit=100, unsupported=())
    for i in range(10_000):
        key = ("instance", "1.2", "1.2.3", (("SOPInstanceUID", f"{i}." + "9" * 3000),),
               "http://h/dicom-web")
        cache.put(key, (1,), empty)
    assert cache._size <= 100_000
    assert len(cache) == 100_000 // Answers.cost(key, empty)


async def test_RH1_kept_answers_shared_by_workers_and_never_stale(client, stow, fetches,
                                                                  tmp_path):
    """Workers share their kept answers (server.py: QueryService.shared, the workers'
    SharedFileCache): a page one worker built is served by another after its version is
    read again (on SQLite: the generation alone, no page query, no splice); after a new
    match, a worker that finds the stale shared answer builds a fresh one; a damaged
    shared file is a miss. Each answer is byte for byte a fresh query's."""
    from pacsd.services.cache import SharedFileCache
    archive = client.server.app[ARCHIVE]
    shared = SharedFileCache(tmp_path / "shared", 1 << 24)
    shared.dir.mkdir()

    def worker() -> QueryService:
        service = QueryService(archive)
        service.shared = shared
        return service
    studies = [make_dataset(PatientName=f"Zhou^{i}", PatientID=f"Z{i}", seed=100 + i)
               for i in range(STAMPED_MIN_ITEMS + 1)]
    assert (await stow([to_part10(x) for x in studies])).status == 200
    params = [("PatientName", "Zhou*")]
    base = "http://pacsd.test/dicom-web"

    async def answer(service) -> tuple[bytes, list[str]]:
        before = len(fetches)
        got = await service.search_json("study", params, base_url=base, actor=LOCAL)
        ran = fetches[before:]
        want = await client.server.app[QUERY].search("study", params, base_url=base,
                                                     actor=LOCAL)
        assert got.body == orjson.dumps(want.items)
        assert (got.count, got.total) == (len(want.items), want.total)
        return got.body, ran

    first, ran = await answer(worker())
    assert ran == ["page"] and len(orjson.loads(first)) == STAMPED_MIN_ITEMS + 1
    other = worker()
    again, ran = await answer(other)
    assert again == first and ran in ([], ["stamp"])  # SQLite: [], PostgreSQL: the stamp
    assert len(other.answers) == 1  # and kept in its own memory now
    new = make_dataset(PatientName="Zhou^new", PatientID="Z99", seed=160)
    assert (await stow([to_part10(new)])).status == 200
    third = worker()
    body, ran = await answer(third)  # the shared answer is stale: built afresh
    assert ran == ["stamp", "page"] and new.StudyInstanceUID.encode() in body
    assert (await answer(worker()))[1] in ([], ["stamp"])  # ... and shared anew
    key = ("qido", "study", None, None, tuple(params), base)
    shared.put(key, b"\x00\x00\x00\x05[1,2]damaged")
    assert await answer(worker()) == (body, ["page"])
    # Kept but not shared: the instances of a one-instance series (SHARED_MIN_ITEMS).
    files = set(shared.dir.iterdir())
    small = worker()
    got = await small.search_json("instance", [], base_url=base, actor=LOCAL,
                                  study_uid=new.StudyInstanceUID,
                                  series_uid=new.SeriesInstanceUID)
    assert got.count == 1 < SHARED_MIN_ITEMS and len(small.answers) == 1
    assert set(shared.dir.iterdir()) == files
