"""QIDO-RS matching and result assembly on SQLite and PostgreSQL (R-A1, BI-30, PS3.4 C.2.2.2)."""
from __future__ import annotations

import pytest

from pacsd.index import Catalogue, parse_qido
from pacsd.index.schema import studies
from tests.index.conftest import CT_IMAGE, MR_IMAGE, empty_db_url, make_instance, store

STUDIES = {
    "1.1": dict(PatientID="P1", PatientName="Wang^XiaoMing=王^小明=", StudyDate="20240101",
                StudyTime="101500", AccessionNumber="ACC1", StudyID="S1",
                StudyDescription="CT Chest", ReferringPhysicianName="House^Gregory",
                PatientBirthDate="19800101", PatientSex="M"),
    "1.2": dict(PatientID="P2", PatientName="Smith^John", StudyDate="20230505",
                StudyTime="083000", AccessionNumber="ACC2", StudyDescription="MR Brain",
                PatientBirthDate="19700315", PatientSex="F"),
    "1.3": dict(PatientID="P3", IssuerOfPatientID="HOSP2", PatientName="John^Smith",
                StudyDate="20220101", StudyTime="230000", AccessionNumber="ACC_3",
                StudyDescription="100% done"),
    "1.4": dict(PatientID="P1", IssuerOfPatientID="HOSP2", PatientName="Müller^Jürgen",
                StudyDate="20210101", StudyTime="120000", AccessionNumber="acc1"),
    "1.5": dict(PatientID="P5", PatientName="李^娜", StudyDate=None, StudyTime=None),
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def archive(request, tmp_path_factory):
    """Five studies; 1.1 has a CT series (2 instances) and an MR series; 1.2 is MR.
    Built once per backend: every test in this module only reads."""
    url = empty_db_url(request, request.param, tmp_path_factory.mktemp("qido"))
    catalogue = Catalogue(url)
    for uid, attrs in STUDIES.items():
        mr = uid == "1.2"
        store(catalogue, make_instance(uid, f"{uid}.1", f"{uid}.1.1",
                                       Modality="MR" if mr else "CT",
                                       sop_class_uid=MR_IMAGE if mr else CT_IMAGE,
                                       SeriesNumber=1, InstanceNumber=1, **attrs))
    store(catalogue, make_instance("1.1", "1.1.1", "1.1.1.2", InstanceNumber=2,
                                   **STUDIES["1.1"]))
    store(catalogue, make_instance("1.1", "1.1.2", "1.1.2.1", Modality="MR", SeriesNumber=2,
                                   sop_class_uid=MR_IMAGE, Rows=256, Columns=256,
                                   BodyPartExamined="HEAD", InstitutionName="Peking Union",
                                   StationName="MR01", SeriesDescription="T1 axial",
                                   SeriesDate="20240101", ContentDate="20240102",
                                   **STUDIES["1.1"]))
    yield catalogue
    catalogue.close()


def uids(result, tag="0020000D") -> list[str]:
    return [item[tag]["Value"][0] for item in result.items]


def find(cat, params, level="study", **kw) -> list[str]:
    tag = {"study": "0020000D", "series": "0020000E", "instance": "00080018"}[level]
    return uids(cat.search(parse_qido(level, list(params), **kw)), tag)


def test_default_study_order_date_desc_nulls_last(archive):
    assert find(archive, []) == ["1.1", "1.2", "1.3", "1.4", "1.5"]


def test_single_value_matching_is_case_sensitive(archive):
    assert find(archive, [("AccessionNumber", "ACC1")]) == ["1.1"]
    assert find(archive, [("AccessionNumber", "acc1")]) == ["1.4"]
    assert find(archive, [("StudyID", "S1")]) == ["1.1"]
    assert find(archive, [("PatientSex", "F")]) == ["1.2"]


def test_wildcards_and_escaping_of_like_metacharacters(archive):
    assert find(archive, [("AccessionNumber", "ACC*")]) == ["1.1", "1.2", "1.3"]
    assert find(archive, [("AccessionNumber", "ACC?")]) == ["1.1", "1.2"]
    assert find(archive, [("AccessionNumber", "ACC_*")]) == ["1.3"]  # '_' is literal
    assert find(archive, [("AccessionNumber", "*C_3")]) == ["1.3"]
    assert find(archive, [("StudyDescription", "100%*")]) == ["1.3"]  # '%' is literal
    assert find(archive, [("StudyDescription", "100*")]) == ["1.3"]
    assert find(archive, [("StudyDescription", "*%*")]) == ["1.3"]
    assert find(archive, [("StudyDescription", "CT*")]) == ["1.1"]
    assert find(archive, [("StudyDescription", "ct*")]) == []
    assert find(archive, [("StudyDescription", "*Br?in")]) == ["1.2"]


@pytest.mark.parametrize("query,expected", [
    ("Wang^XiaoMing", ["1.1"]), ("WANG^XIAOMING", ["1.1"]), ("wang*", ["1.1"]),
    ("王*", ["1.1"]), ("王小明", ["1.1"]), ("王^小明", ["1.1"]), ("王 小明", ["1.1"]),
    ("=王^小明", ["1.1"]), ("Wang^XiaoMing=王^小明=", ["1.1"]), ("Wang*=王*", ["1.1"]),
    ("Wang^XiaoMing=李*", []), ("ＷＡＮＧ*", ["1.1"]), ("*小明", ["1.1"]),
    ("Smith^John", ["1.2"]), ("smith^john", ["1.2"]), ("*smith*", ["1.2", "1.3"]),
    ("Smith", []), ("MÜLLER^JÜRGEN", ["1.4"]), ("muller*", []), ("李娜", ["1.5"]),
    ("李*", ["1.5"]), ("李^娜", ["1.5"]), ("?^娜", ["1.5"]),
])
def test_person_name_matching(archive, query, expected):
    assert find(archive, [("PatientName", query)]) == expected


@pytest.mark.parametrize("query,expected", [
    ("smi", ["1.2", "1.3"]), ("jo", ["1.2", "1.3"]), ("xiao", ["1.1"]), ("SMI", ["1.2", "1.3"]),
    ("jo smi", ["1.2", "1.3"]), ("john^smith", ["1.2", "1.3"]), ("王", ["1.1"]),
    ("小", ["1.1"]), ("王小", ["1.1"]), ("mül", ["1.4"]), ("mith", []), ("Thoma\"s", []),
    ("%", []), ("_", []),
])
def test_fuzzy_person_name_matching(archive, query, expected):
    got = find(archive, [("PatientName", query), ("fuzzymatching", "true")])
    assert got == expected


def test_referring_physician_name(archive):
    assert find(archive, [("ReferringPhysicianName", "house*")]) == ["1.1"]
    assert find(archive, [("ReferringPhysicianName", "gre"), ("fuzzymatching", "true")]) \
        == ["1.1"]


def test_uid_list_matching(archive):
    assert find(archive, [("StudyInstanceUID", "1.3,1.1")]) == ["1.1", "1.3"]
    assert find(archive, [("StudyInstanceUID", "1.2\\1.9")]) == ["1.2"]
    assert find(archive, [("0020000D", "1.4")]) == ["1.4"]


def test_date_and_time_ranges(archive):
    assert find(archive, [("StudyDate", "20230101-20241231")]) == ["1.1", "1.2"]
    assert find(archive, [("StudyDate", "-20220101")]) == ["1.3", "1.4"]
    assert find(archive, [("StudyDate", "20230505-")]) == ["1.1", "1.2"]
    assert find(archive, [("StudyDate", "20230505")]) == ["1.2"]
    assert find(archive, [("StudyTime", "10")]) == ["1.1"]
    assert find(archive, [("StudyTime", "08-10")]) == ["1.1", "1.2"]
    assert find(archive, [("StudyTime", "2300-")]) == ["1.3"]
    assert find(archive, [("StudyTime", "0830")]) == ["1.2"]
    assert find(archive, [("PatientBirthDate", "19750101-19851231")]) == ["1.1"]
    assert find(archive, [("StudyDate", "20240101"), ("StudyTime", "-09")]) == []


def test_patient_identity(archive):
    assert find(archive, [("PatientID", "P1")]) == ["1.1", "1.4"]
    assert find(archive, [("PatientID", "P1"), ("IssuerOfPatientID", "HOSP2")]) == ["1.4"]
    assert find(archive, [("IssuerOfPatientID", "HOSP*")]) == ["1.3", "1.4"]
    assert find(archive, [("PatientID", "P?")]) == ["1.1", "1.2", "1.3", "1.4", "1.5"]


def test_modalities_and_sop_classes_in_study(archive):
    assert find(archive, [("ModalitiesInStudy", "MR")]) == ["1.1", "1.2"]
    assert find(archive, [("ModalitiesInStudy", "CT")]) == ["1.1", "1.3", "1.4", "1.5"]
    assert find(archive, [("ModalitiesInStudy", "MR,US")]) == ["1.1", "1.2"]
    assert find(archive, [("ModalitiesInStudy", "US\\M*")]) == ["1.1", "1.2"]
    assert find(archive, [("SOPClassesInStudy", MR_IMAGE)]) == ["1.1", "1.2"]
    item = archive.search(parse_qido("study", [("StudyInstanceUID", "1.1")])).items[0]
    assert item["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert item["00201206"]["Value"] == [2] and item["00201208"]["Value"] == [3]
    assert item["00080056"]["Value"] == ["ONLINE"]
    assert "00080062" not in item and "00081190" not in item  # not asked / web layer's
    item = archive.search(parse_qido("study", [("StudyInstanceUID", "1.1"),
                                               ("includefield", "SOPClassesInStudy")])).items[0]
    assert item["00080062"] == {"vr": "UI", "Value": sorted([CT_IMAGE, MR_IMAGE])}


def test_series_level_matching_and_order(archive):
    assert find(archive, [], "series", study_uid="1.1") == ["1.1.1", "1.1.2"]
    # SeriesNumber first (1.2.1 is number 1), then pk
    assert find(archive, [("Modality", "MR")], "series") == ["1.2.1", "1.1.2"]
    assert find(archive, [("Modality", "MR,CT")], "series", study_uid="1.1") == \
        ["1.1.1", "1.1.2"]
    assert find(archive, [("SeriesNumber", "2")], "series") == ["1.1.2"]
    assert find(archive, [("BodyPartExamined", "HEAD")], "series") == ["1.1.2"]
    assert find(archive, [("InstitutionName", "Peking*")], "series") == ["1.1.2"]
    assert find(archive, [("StationName", "MR01")], "series") == ["1.1.2"]
    assert find(archive, [("SeriesDescription", "T1*")], "series") == ["1.1.2"]
    assert find(archive, [("SeriesDate", "20240101-")], "series") == ["1.1.2"]
    assert find(archive, [("PatientID", "P2")], "series") == ["1.2.1"]  # relational
    assert find(archive, [("StudyDate", "20240101")], "series") == ["1.1.1", "1.1.2"]
    res = archive.search(parse_qido("series", [], study_uid="1.1"))
    assert [i["00201209"]["Value"] for i in res.items] == [[2], [1]]
    assert all(i["0020000D"]["Value"] == ["1.1"] for i in res.items)


def test_instance_level_matching_relational_and_scope(archive):
    assert find(archive, [("PatientID", "P1")], "instance") == \
        ["1.1.1.1", "1.4.1.1", "1.1.2.1", "1.1.1.2"]  # InstanceNumber, then pk
    assert find(archive, [("SOPClassUID", MR_IMAGE)], "instance") == ["1.2.1.1", "1.1.2.1"]
    assert find(archive, [("Rows", "256")], "instance") == ["1.1.2.1"]
    assert find(archive, [("Columns", "512"), ("InstanceNumber", "2")], "instance") == \
        ["1.1.1.2"]
    assert find(archive, [("ContentDate", "20240102")], "instance") == ["1.1.2.1"]
    assert find(archive, [("SOPInstanceUID", "1.1.1.2,1.2.1.1")], "instance") == \
        ["1.2.1.1", "1.1.1.2"]
    assert find(archive, [], "instance", study_uid="1.1", series_uid="1.1.1") == \
        ["1.1.1.1", "1.1.1.2"]
    assert find(archive, [], "instance", study_uid="1.2", series_uid="1.1.1") == []
    assert find(archive, [("Modality", "MR")], "instance", study_uid="1.1") == ["1.1.2.1"]
    item = archive.search(parse_qido("instance", [("PatientID", "P2")])).items[0]
    assert item["00100020"]["Value"] == ["P2"]  # matching key from an upper level returned
    assert item["0020000D"]["Value"] == ["1.2"] and item["0020000E"]["Value"] == ["1.2.1"]


def test_scope_unknown_study_gives_nothing(archive):
    res = archive.search(parse_qido("series", [], study_uid="9.9.9"))
    assert (res.items, res.total) == ([], 0)


def test_limit_offset_total(archive):
    res = archive.search(parse_qido("study", [("limit", "2"), ("offset", "1")]))
    assert (uids(res), res.total) == (["1.2", "1.3"], 5)
    res = archive.search(parse_qido("study", [("offset", "10")]))
    assert (res.items, res.total) == ([], 5)
    res = archive.search(parse_qido("study", [("limit", "0")]))
    assert (res.items, res.total) == ([], 5)
    res = archive.search(parse_qido("study", [("limit", "1000000000")], max_limit=3))
    assert (len(res.items), res.total) == (3, 5)
    res = archive.search(parse_qido("instance", [("limit", "2")], study_uid="1.1"))
    assert (len(res.items), res.total) == (2, 3)


def test_includefield(archive):
    plain = archive.search(parse_qido("series", [], study_uid="1.2")).items[0]
    assert "00080020" not in plain and "00100010" not in plain
    one = archive.search(parse_qido("series", [("includefield", "StudyDate")],
                                    study_uid="1.2")).items[0]
    assert one["00080020"]["Value"] == ["20230505"] and "00100010" not in one
    every = archive.search(parse_qido("series", [("includefield", "all")],
                                      study_uid="1.2")).items[0]
    assert every["00100010"]["Value"] == [{"Alphabetic": "Smith^John"}]
    assert every["00080061"]["Value"] == ["MR"] and every["00201208"]["Value"] == [1]
    assert every["00080060"]["Value"] == ["MR"]  # the series' own attributes stay
    inst = archive.search(parse_qido("instance", [("includefield", "all")],
                                     study_uid="1.1", series_uid="1.1.2")).items[0]
    assert inst["00080060"]["Value"] == ["MR"] and inst["00201209"]["Value"] == [1]
    assert inst["00100020"]["Value"] == ["P1"] and inst["00280010"]["Value"] == [256]
    cnt = archive.search(parse_qido("instance", [("includefield", "00201209")],
                                    study_uid="1.1", series_uid="1.1.1")).items[0]
    assert cnt["00201209"]["Value"] == [2] and "00080060" not in cnt
    study = archive.search(parse_qido("study", [("includefield", "PatientBirthDate")],
                                      study_uid="1.1")).items[0]
    assert study["00100030"]["Value"] == ["19800101"]


def test_items_are_tag_sorted_json_ready(archive):
    import orjson
    for level in ("study", "series", "instance"):
        for item in archive.search(parse_qido(level, [("includefield", "all")])).items:
            assert list(item) == sorted(item)
            assert all(len(k) == 8 and k == k.upper() for k in item)
            orjson.dumps(item)


def test_unsupported_attribute_does_not_filter(archive):
    qq = parse_qido("study", [("Modality", "MR")])
    assert qq.unsupported == ("Modality",)
    assert len(archive.search(qq).items) == 5


@pytest.mark.parametrize("params", [
    [("PatientName", "%' OR 1=1--")], [("PatientID", "%' OR 1=1--")],
    [("PatientID", "' OR ''='")], [("AccessionNumber", "%")], [("AccessionNumber", "_CC1")],
    [("StudyDescription", "\\")], [("PatientName", "Thoma\"s"), ("fuzzymatching", "true")],
    [("PatientID", "P1'); DROP TABLE studies;--")],
])
def test_BI30_injection_matches_nothing(archive, params):
    res = archive.search(parse_qido("study", params))
    assert (res.items, res.total) == ([], 0)
    assert archive.counts()["studies"] == 5


def test_BI30_includefield_all_and_clamped_limit(archive):
    res = archive.search(parse_qido("study", [("includefield", "all"),
                                              ("limit", "1000000000")]))
    assert res.total == 5 and len(res.items) == 5


def test_extra_filter_anded_into_every_level(archive):
    flt = studies.c.study_instance_uid != "1.1"
    assert "1.1" not in find_with(archive, "study", flt)
    assert all(not u.startswith("1.1.") for u in find_with(archive, "series", flt))
    assert all(not u.startswith("1.1.") for u in find_with(archive, "instance", flt))
    assert archive.search(parse_qido("study", []), flt).total == 4


def find_with(cat, level, flt) -> list[str]:
    tag = {"study": "0020000D", "series": "0020000E", "instance": "00080018"}[level]
    return uids(cat.search(parse_qido(level, []), flt), tag)


def test_R_H1_name_prefix_plans_agree(catalogue, monkeypatch):
    """Issue 6: a common PatientName prefix pages by walking the study order, a rare one
    through the name indexes (``qido_sql._walk_order``); every page, total and order is
    the same either way, on both databases, ties (same date and time) by pk."""
    from pacsd.index import qido_sql
    from tests.index.conftest import bulk_store
    rows = []
    for s in range(24):
        name = ("Smith^N%d" % s) if s % 4 else ("Jones^N%d=%s^%d=smith" % (s, "史", s))
        if s % 8 == 1:
            name += "==smith"  # alphabetic and phonetic groups both match: counted once
        rows.append(make_instance(f"9.{s}", PatientID=f"P{s}", PatientName=name,
                                  StudyDate=f"2024{1 + s % 3:02d}01" if s % 5 else None,
                                  StudyTime="120000" if s % 2 else "080000"))
    bulk_store(catalogue, rows)
    answers = {}
    for forced in (True, False):
        monkeypatch.setattr(qido_sql, "_walk_order", lambda conn, q, total, f=forced, **kw: f)
        for pattern in ("Smi*", "smi*", "Jon*", "S*", "Smith^N1*"):
            for offset in (0, 5, 20):
                r = catalogue.search(parse_qido("study", [
                    ("PatientName", pattern), ("limit", "5"), ("offset", str(offset))]))
                answers.setdefault((pattern, offset), []).append((uids(r), r.total))
    for (pattern, offset), (walked, indexed) in answers.items():
        assert walked == indexed, (pattern, offset)
    assert answers[("Smi*", 0)][0][1] == 24  # the Jones studies have a Smith phonetic group
    assert answers[("Jon*", 0)][0][1] == 6
    monkeypatch.undo()
    assert uids(catalogue.search(parse_qido("study", [("PatientName", "Smi*"),
                                                      ("limit", "2")]))) == \
        answers[("Smi*", 0)][0][0][:2]
