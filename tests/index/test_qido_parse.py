"""parse_qido: pure validation of QIDO-RS parameters (R-A1, BI-30). No database."""
from __future__ import annotations

import pytest

from pacsd.errors import BadRequest
from pacsd.index import parse_qido
from pacsd.index.qido import MAX_OFFSET, parse_range


def q(params, level="study", **kw):
    return parse_qido(level, list(params), **kw)


def bad(params, level="study", **kw) -> str:
    with pytest.raises(BadRequest) as ei:
        q(params, level, **kw)
    assert ei.value.http_status == 400
    return ei.value.reason


def test_keyword_and_tag_are_the_same_attribute():
    a = q([("PatientID", "X")]).matches[0]
    b = q([("00100020", "X")]).matches[0]
    assert (a.keyword, a.tag) == (b.keyword, b.tag) == ("PatientID", "00100020")
    assert q([("0020000d", "")]).includefields == {"0020000D"}  # lower-case hex, universal
    assert "more than once" in bad([("PatientID", "X"), ("00100020", "Y")])


@pytest.mark.parametrize("key", ["GGGG0010", "NoSuchKeyword", "foo", "charset", "0009101Z",
                                 "Patient-ID", "x" * 100])
def test_BI30_unknown_parameter_or_attribute_400(key):
    bad([(key, "x")])


def test_unknown_private_tag_400():
    assert "unknown attribute tag" in bad([("00091010", "x")])


def test_sequence_paths_refused():
    assert "sequence" in bad([("RequestAttributesSequence.ScheduledProcedureStepID", "1")])


@pytest.mark.parametrize("value", ["-1", "abc", "+5", " 5", "1.5", "", "٣"])
def test_BI30_limit_must_be_non_negative_integer(value):
    assert "limit" in bad([("limit", value)])


def test_BI30_limit_clamped_and_default():
    assert q([("limit", "1000000000")], max_limit=200).limit == 200
    assert q([], max_limit=200).limit == 200
    assert q([("limit", "0")]).limit == 0
    assert q([("limit", "7")]).limit == 7
    assert "more than once" in bad([("limit", "1"), ("limit", "2")])


def test_BI30_offset():
    assert "offset" in bad([("offset", "-5")])
    assert q([("offset", "12")]).offset == 12
    assert q([("offset", "9" * 40)]).offset == MAX_OFFSET


def test_fuzzymatching_values():
    assert q([("fuzzymatching", "true")]).fuzzy
    assert q([("fuzzymatching", "TRUE")]).fuzzy
    assert not q([("fuzzymatching", "false")]).fuzzy
    assert "fuzzymatching" in bad([("fuzzymatching", "maybe")])


def test_BI30_value_length_limit_and_no_value_echo():
    secret = "Zhang^Secret" + "x" * 5000
    reason = bad([("PatientName", secret)])
    assert "1024" in reason and "Zhang" not in reason
    assert q([("PatientName", "x" * 1024)]).matches
    bad([("includefield", "x" * 1025)])


def test_error_messages_never_contain_values():
    for params in ([("StudyDate", "20251301")], [("StudyInstanceUID", "Wang^Wei")],
                   [("SeriesNumber", "Wang")]):
        reason = bad(params, level="series")
        assert params[0][1] not in reason and params[0][0] in reason


def test_includefield_forms():
    qq = q([("includefield", "PatientBirthDate,00100040"), ("includefield", "StudyID"),
            ("includefield", "")])
    assert {"00100030", "00100040", "00200010"} <= qq.includefields
    assert not qq.include_all
    assert q([("includefield", "all")]).include_all
    assert "unknown" in bad([("includefield", "NoSuchKeyword")])
    assert "unknown" in bad([("includefield", "GGGG0010")])


def test_matching_keys_are_returned_keys():
    qq = q([("AccessionNumber", "A1"), ("StudyDescription", "")])
    assert {"00080050", "00081030"} <= qq.includefields
    assert [m.keyword for m in qq.matches] == ["AccessionNumber"]  # empty = universal


def test_unsupported_valid_keyword_becomes_includefield():
    qq = q([("Modality", "CT"), ("Manufacturer", "X")], level="study")
    assert qq.unsupported == ("Modality", "Manufacturer")
    assert qq.matches == () and {"00080060", "00080070"} <= qq.includefields
    assert q([("Modality", "CT")], level="series").unsupported == ()
    assert q([("SOPInstanceUID", "1.2")], level="series").unsupported == ("SOPInstanceUID",)
    assert q([("NumberOfStudyRelatedInstances", "3")]).unsupported == (
        "NumberOfStudyRelatedInstances",)


def test_upper_level_attributes_match_at_lower_levels():
    m = q([("PatientID", "P1"), ("StudyDate", "20240101")], level="instance").matches
    assert [x.keyword for x in m] == ["PatientID", "StudyDate"]


def test_universal_matching_for_star():
    assert q([("PatientName", "*"), ("StudyDate", "*"), ("StudyInstanceUID", "**")]
             ).matches == ()


@pytest.mark.parametrize("value", ["2025", "20251301", "20240230", "2024-01-01",
                                   "20240101-20231231", "-", "--", "20240101--",
                                   "2024010A", "20240101-2025"])
def test_BI30_bad_dates_400(value):
    assert "StudyDate" in bad([("StudyDate", value)])


def test_date_ranges():
    r = lambda v: q([("StudyDate", v)]).matches[0].values  # noqa: E731
    assert r("20240101") == ("20240101", "20240101")
    assert r("20240101-20241231") == ("20240101", "20241231")
    assert r("-20241231") == (None, "20241231")
    assert r("20240101-") == ("20240101", None)
    assert r("20240229-20240229") == ("20240229", "20240229")


@pytest.mark.parametrize("value", ["25", "1060", "106070", "1", "10.5", "1015.5",
                                   "101530.1234567", "10:15", "12-10"])
def test_bad_times_400(value):
    assert "StudyTime" in bad([("StudyTime", value)])


def test_time_ranges_cover_their_precision():
    r = lambda v: q([("StudyTime", v)]).matches[0].values  # noqa: E731
    assert r("10") == ("10", "105959.999999")
    assert r("1015") == ("1015", "101559.999999")
    assert r("101530") == ("101530", "101530.999999")
    assert r("101530.5") == ("101530.5", "101530.599999")
    assert r("08-10") == ("08", "105959.999999")
    assert r("-0930") == (None, "093059.999999")
    assert r("2300-") == ("2300", None)
    assert r("1000-10") == ("1000", "105959.999999")  # start inside the end hour is fine


def test_datetime_ranges():
    assert parse_range("X", "datetime", "2024") == ("2024", "20241231235959.999999")
    assert parse_range("X", "datetime", "20240315-202404") == (
        "20240315", "20240431235959.999999")
    assert parse_range("X", "datetime", "20240315101530.25+0800") == (
        "20240315101530.25", "20240315101530.259999")
    for v in ("2024131", "202413", "20240315256000", "-", "2024-2023"):
        with pytest.raises(BadRequest):
            parse_range("X", "datetime", v)


def test_uid_lists():
    m = q([("StudyInstanceUID", "1.2.3,1.2.4\\1.2.5")]).matches[0]
    assert (m.op, m.values) == ("in", ("1.2.3", "1.2.4", "1.2.5"))
    assert q([("StudyInstanceUID", "1.2.3")]).matches[0].op == "eq"
    for v in ("1.2.*", "1.2,", "abc", "1..2", "1." + "2" * 70):
        assert "StudyInstanceUID" in bad([("StudyInstanceUID", v)])


def test_integers():
    assert q([("SeriesNumber", "12")], level="series").matches[0].values == (12,)
    for v in ("x", "1*", "1.5", "99999999999"):
        assert "SeriesNumber" in bad([("SeriesNumber", v)], level="series")


def test_cs_lists_and_wildcards():
    m = q([("ModalitiesInStudy", "CT,MR")]).matches[0]
    assert (m.op, m.values) == ("in", ("CT", "MR"))
    assert q([("ModalitiesInStudy", "C*")]).matches[0].op == "like"
    assert "empty element" in bad([("ModalitiesInStudy", "CT,")])


def test_BI30_injection_text_is_just_a_value():
    m = q([("PatientName", "%' OR 1=1--")]).matches[0]
    assert (m.op, m.values) == ("pn", ("%' OR 1=1--",))
    m = q([("AccessionNumber", "'; DROP TABLE studies;--")]).matches[0]
    assert m.op == "eq"


def test_bad_level_and_scope_kept():
    bad([], level="patient")
    qq = q([], level="instance", study_uid="1.2", series_uid="1.2.3")
    assert (qq.study_uid, qq.series_uid) == ("1.2", "1.2.3")
