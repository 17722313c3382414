"""QIDO-RS items spliced from stored JSON bytes (R-H1, issue 6) against the general path.

The fast path (``qido_sql.raw_items`` + ``services.query._body``) must answer exactly the
bytes the general path answers (``_item`` dicts, RetrieveURL added, ``orjson.dumps``):
same attributes, same values, same order, for every level, includefield, fuzzy matching,
paging and scope; and it must fall back to the general path for rows whose cut record
is missing or does not describe their JSON.
"""
from __future__ import annotations

import dataclasses

import orjson
import pytest
import sqlalchemy as sa

from pacsd.dicom.levels import (INSTANCE_CUT_KEYS, SERIES_CUT_KEYS, STUDY_CUT_KEYS,
                                cuts_struct, level_json)
from pacsd.index import Catalogue, parse_qido
from pacsd.index.schema import instances, series, studies
from pacsd.services.query import RETRIEVE_URL, _body, _retrieve_url
from tests.index.conftest import CT_IMAGE, MR_IMAGE, empty_db_url, make_instance, store

BASE = "http://pacs.example:8042/dicom-web"
SQ = {"vr": "SQ", "Value": [{"0020000D": {"vr": "UI", "Value": ["9.9"]},
                             "00080061": {"vr": "CS", "Value": ["XX"]},
                             "00081150": {"vr": "UI", "Value": ["1.2.3"]}}]}


def with_cuts(p, **extra_json):
    """``p`` with cut records, as ingest writes them (levels.level_json); ``extra_json``:
    more elements per level ({"study": {...}}), e.g. sequences or stored attributes that
    the query layer also computes."""
    out = {}
    for level, keys in (("study", STUDY_CUT_KEYS), ("series", SERIES_CUT_KEYS),
                        ("instance", INSTANCE_CUT_KEYS)):
        meta = orjson.loads(getattr(p, f"{level}_json"))
        meta.update(extra_json.get(level, {}))
        meta = dict(sorted(meta.items()))
        data, cuts = level_json(meta, tuple(meta), keys)
        assert data == orjson.dumps(meta)
        out[f"{level}_json"], out[f"{level}_cuts"] = data, cuts
    return dataclasses.replace(p, **out)


PATIENTS = [("P1", "Wang^XiaoMing=王^小明="), ("P2", "Smith^John"), ("P3", "李^娜"),
            ("P4", "Müller^Jürgen"), ("P5", "Zhang^Wei=张^伟=")]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def cat(request, tmp_path_factory):
    url = empty_db_url(request, request.param, tmp_path_factory.mktemp("splice"))
    catalogue = Catalogue(url)
    n = 0
    for s in range(10):
        pid, name = PATIENTS[s % len(PATIENTS)]
        study = f"1.2.{s}"
        attrs = dict(PatientID=pid, PatientName=name, StudyDate=f"2024010{s % 9 + 1}",
                     AccessionNumber=f"ACC{s}", StudyDescription=f"Study {s} \"quoted\" \\",
                     ReferringPhysicianName="House^Gregory" if s % 2 else None)
        visit = {"visit_number": f"V{s}" if s % 3 == 0 else None, "card_number": None,
                 "ordering_department": "Radiology" if s % 4 == 0 else None,
                 "visit_type": "inpatient" if s % 2 else None}
        for se in range(1 + s % 3):
            mr = se % 2 == 1
            for i in range(1 + (s + se) % 4):
                extra = {}
                if s == 3:  # sequences whose items hold cut-key tags
                    extra = {"study": {"00081110": SQ}, "series": {"00400275": SQ},
                             "instance": {"0040A043": SQ}}
                if s == 4:  # stored attributes that the query layer computes too
                    extra = {"study": {"00080061": {"vr": "CS", "Value": ["OT"]},
                                       "00201208": {"vr": "IS", "Value": [99]}},
                             "series": {"00201209": {"vr": "IS", "Value": [77]},
                                        "00080061": {"vr": "CS", "Value": ["ZZ"]}},
                             "instance": {"0020000D": {"vr": "UI", "Value": ["7.7"]},
                                          "00201209": {"vr": "IS", "Value": [55]},
                                          "00080056": {"vr": "CS", "Value": ["NEARLINE"]}}}
                p = make_instance(study, f"{study}.{se}", f"{study}.{se}.{i}",
                                  Modality="MR" if mr else "CT",
                                  sop_class_uid=MR_IMAGE if mr else CT_IMAGE,
                                  SeriesNumber=se + 1, InstanceNumber=i + 1,
                                  BodyPartExamined="HEAD" if mr else "CHEST",
                                  SeriesDate=None if s % 2 else "20240101", **attrs)
                p = dataclasses.replace(p, worklist=visit)
                if s == 5 and se == 0:
                    store(catalogue, p)  # no cut records: stored before migration 11
                else:
                    store(catalogue, with_cuts(p, **extra))
                n += 1
    # A writer that changed the JSON and not the cut record (length kept, hash not).
    with catalogue.engine.begin() as conn:
        row = conn.execute(sa.select(studies.c.pk, studies.c.study_json)
                           .where(studies.c.study_instance_uid == "1.2.6")).first()
        conn.execute(sa.update(studies).where(studies.c.pk == row.pk).values(
            study_json=row.study_json.replace(b"ACC6", b"ACC7")))
        row = conn.execute(sa.select(instances.c.pk, instances.c.instance_json)
                           .where(instances.c.sop_instance_uid == "1.2.7.0.0")).first()
        conn.execute(sa.update(instances).where(instances.c.pk == row.pk).values(
            instance_json=row.instance_json.replace(b'"00200013"', b'"00200012"')))
    yield catalogue
    catalogue.close()


def general(cat, level, q, extra_filter=None) -> bytes:
    """What QIDO-RS answered before the fast path: dicts, RetrieveURL, orjson."""
    items = cat.search(q, extra_filter).items
    for item in items:
        url = _retrieve_url(level, item, BASE)
        if url:
            item[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
    return orjson.dumps(items)


def fast(cat, level, q, extra_filter=None) -> tuple[bytes, int]:
    items = cat.search(q, extra_filter, raw=True).items
    return _body(level, items, BASE), sum(type(i) is tuple for i in items)


QUERIES = [
    ("study", [], {}),
    ("study", [("PatientID", "P1")], {}),
    ("study", [("PatientName", "Wang*")], {}),
    ("study", [("PatientName", "王*")], {}),
    ("study", [("PatientName", "Mü*")], {}),
    ("study", [("PatientName", "john"), ("fuzzymatching", "true")], {}),
    ("study", [("StudyDate", "20240102-20240105"), ("limit", "2"), ("offset", "1")], {}),
    ("study", [("includefield", "all")], {}),
    ("study", [("includefield", "SOPClassesInStudy,BodyPartExamined")], {}),
    ("study", [("includefield", "visitnumber,department,visittype,cardnumber")], {}),
    ("study", [("visitnumber", "V*"), ("includefield", "00080062")], {}),
    ("study", [("ModalitiesInStudy", "MR"), ("orderby", "PatientName")], {}),
    ("study", [("StudyInstanceUID", "1.2.3,1.2.4,1.2.5,1.2.6")], {}),
    ("series", [], {}),
    ("series", [("Modality", "MR"), ("limit", "3"), ("offset", "1")], {}),
    ("series", [("includefield", "ModalitiesInStudy,00201208,00201206")], {}),
    ("series", [("includefield", "NumberOfSeriesRelatedInstances")], {}),
    ("series", [("includefield", "PatientName")], {}),
    ("series", [("includefield", "all")], {}),
    ("series", [], {"study_uid": "1.2.4"}),
    ("series", [], {"study_uid": "1.2.3"}),
    ("instance", [], {}),
    ("instance", [], {"study_uid": "1.2.4", "series_uid": "1.2.4.1"}),
    ("instance", [], {"study_uid": "1.2.7"}),
    ("instance", [("includefield", "00201209,00201208")], {}),
    ("instance", [("includefield", "SeriesDescription")], {}),
    ("instance", [("includefield", "all"), ("limit", "7")], {}),
    ("instance", [("SOPClassUID", MR_IMAGE), ("limit", "4"), ("offset", "2")], {}),
]


@pytest.mark.parametrize("level,params,kw", QUERIES)
def test_RH1_spliced_items_equal_the_general_path(cat, level, params, kw):
    q = parse_qido(level, params, max_limit=1000, **kw)
    body, spliced = fast(cat, level, q)
    assert body == general(cat, level, q)
    if q.limit and q.level == "study" and not params:
        assert spliced >= 8  # most rows took the fast path


def test_RH1_spliced_items_with_a_scope_clause(cat):
    scope = studies.c.study_instance_uid.in_(["1.2.0", "1.2.2", "1.2.4"])
    for level in ("study", "series", "instance"):
        q = parse_qido(level, [], max_limit=1000)
        body, spliced = fast(cat, level, q, scope)
        assert body == general(cat, level, q, scope)
        assert spliced > 0
        assert b"Smith" not in body and b'"1.2.1"' not in body


def test_RH1_rows_without_or_with_stale_cut_records_use_the_general_path(cat):
    q = parse_qido("study", [], max_limit=1000)
    items = cat.search(q, raw=True).items
    kinds = {}
    for item in items:
        uid = item[1] if type(item) is tuple else item["0020000D"]["Value"][0]
        kinds[uid] = type(item)
    assert kinds["1.2.6"] is dict          # JSON changed, cut record not
    assert kinds["1.2.3"] is tuple          # sequences are no obstacle
    assert kinds["1.2.4"] is tuple
    q = parse_qido("instance", [], study_uid="1.2.7", max_limit=1000)
    kinds = {(item[3] if type(item) is tuple else item["00080018"]["Value"][0]): type(item)
             for item in cat.search(q, raw=True).items}
    assert kinds["1.2.7.0.0"] is dict and kinds["1.2.7.1.0"] is tuple
    q = parse_qido("series", [], study_uid="1.2.5", max_limit=1000)
    kinds = {(item[2] if type(item) is tuple else item["0020000E"]["Value"][0]): type(item)
             for item in cat.search(q, raw=True).items}
    assert kinds["1.2.5.0"] is dict and kinds["1.2.5.1"] is tuple


def test_RH1_stored_attributes_the_query_layer_computes_keep_their_precedence(cat):
    def one(level, **kw):
        q = parse_qido(level, [], max_limit=1000, **kw)
        body, spliced = fast(cat, level, q)
        assert spliced and body == general(cat, level, q)
        item = orjson.loads(body)[0]
        assert list(item)[:-1] == sorted(list(item)[:-1]) and list(item)[-1] == RETRIEVE_URL
        return item
    item = one("instance", study_uid="1.2.4")
    assert item["0020000D"]["Value"] == ["1.2.4"]         # the parent UID always wins
    assert item["00080056"]["Value"] == ["ONLINE"]
    assert item["00201209"]["Value"] == [55]              # stored, nothing computes it
    item = one("series", study_uid="1.2.4")
    assert item["00201209"]["Value"] == [1]               # the counter wins
    assert item["00080061"]["Value"] == ["ZZ"]            # stored, not asked for
    item = one("study", study_uid="1.2.4")
    assert item["00080061"]["Value"] == ["CT", "MR"]
    assert item["00201208"]["Value"] == [3]


def test_RH1_level_json_is_the_plain_encoding_and_cuts_locate_each_key():
    meta = {"00080020": {"vr": "DA", "Value": ["20240101"]},
            "00081110": SQ,
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Wang^XiaoMing",
                                                "Ideographic": "王^小明"}]},
            "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
            "00321060": {"vr": "LO", "Value": ["a,\"b\"}{,"]},
            "00771001": {"vr": "LO"}}
    data, cuts = level_json(meta, tuple(sorted(meta)), STUDY_CUT_KEYS)
    assert data == orjson.dumps(meta)
    v = cuts_struct(STUDY_CUT_KEYS).unpack(cuts)
    framed = b"," + data[1:]  # positions count the brace as a comma
    for i, key in enumerate(STUDY_CUT_KEYS):
        start, end = v[3 + 2 * i], v[4 + 2 * i]
        if key in meta:
            assert framed[start:end] == b"," + orjson.dumps({key: meta[key]})[1:-1]
        else:
            assert start == end
            before = [k for k in meta if k < key]
            assert framed[:start] == (b"," + orjson.dumps(
                {k: meta[k] for k in before})[1:-1] if before else b"")
    # Empty, and too long for the record: the JSON alone.
    assert level_json({}, (), SERIES_CUT_KEYS)[0] == b"{}"
    big = {"00081030": {"vr": "LO", "Value": ["x" * 70000]}}
    assert level_json(big, tuple(big), STUDY_CUT_KEYS) == (orjson.dumps(big), None)
