"""QIDO-RS request parsing and validation (R-A1, PS3.18 §8.3.4 / §10.6, PS3.4 C.2.2.2).

:func:`parse_qido` is pure: it turns the query parameters of a QIDO-RS request into a
:class:`QidoQuery` or raises :class:`pacsd.errors.BadRequest` naming the offending parameter
(never echoing its value, SEC-23). ``qido_sql.py`` turns the query into SQL with bound
parameters only (BI-30).

Documented choices (conformance statement material):

* Parameters: attribute keys (keyword ``PatientID`` or tag ``00100020``), ``includefield``
  (repeatable, comma-separated, keywords/tags/``all``), ``limit``, ``offset``,
  ``fuzzymatching``. Anything else -> 400; the web layer strips its own (``charset``...).
  Dotted sequence paths are refused (400).
* A valid keyword that is not matchable at the level is not an error: it goes to
  ``QidoQuery.unsupported`` (the web layer adds a Warning header) and is treated as an
  includefield.
* ``limit`` defaults to ``max_limit``; a larger limit is clamped to ``max_limit``;
  ``offset`` is clamped to 2**62 (beyond any archive). Both must be plain ASCII digits.
* Each attribute and ``limit``/``offset``/``fuzzymatching`` may appear once (400 else).
  Values longer than 1024 characters -> 400.
* Empty value, or a value made only of ``*``, is universal matching: no filter, the
  attribute is returned.
* UI: single UID or a list separated by ``,`` or ``\\``; no wildcards. CS attributes also
  accept such a list (each element may hold wildcards). Other text: single value or
  ``*``/``?`` wildcards, matched case-sensitively; PN: see ``names.py``.
* DA ``YYYYMMDD`` (a real calendar date); TM ``HH``, ``HHMM``, ``HHMMSS``,
  ``HHMMSS.f{1,6}``; DT ``YYYY[MM[DD[HH[MM[SS[.f{1,6}]]]]]]`` with an optional ``+HHMM``
  offset that is ignored (a ``-HHMM`` offset cannot be told from a range and is refused).
  Ranges ``A-B``, ``-B``, ``A-``. ``-`` alone, more than one ``-``, or a start after the
  end -> 400. A single TM/DT value matches the whole interval its precision names
  (``StudyTime=10`` matches 10:00:00-10:59:59.999999). Date and time are matched
  independently (no combined DA+TM range matching).
* IS/US attributes (SeriesNumber, InstanceNumber, Rows, Columns, NumberOfFrames): one
  integer, exact.
* pacsd worklist keys (R-D2, study level; lower-case, so never a DICOM keyword):
  ``visitnumber``, ``cardnumber``, ``department`` (text matching, wildcards) and
  ``visittype`` (``outpatient``, ``inpatient``, ``emergency``, ``physical-exam`` or a list
  of them), matched on the study's visit columns (services/visit.py). The standard keyword
  that ``[worklist]`` takes a column from (AdmissionID, RequestingService by default) is
  the same key (``aliases``). They are returned as private attributes (qido_sql.py).
  At the series / instance level they are unsupported (Warning), like other study keys.
* BodyPartExamined at the study level: the study has a series with that body part.
* ``orderby`` (study level): comma-separated ORDER_KEYS, ``-`` for descending; NULLs
  last; ties by the default order. Default: StudyDate, StudyTime newest first.
"""
from __future__ import annotations

import datetime as _dt
import functools
import re
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from pacsd.errors import BadRequest
from pacsd.model import VISIT_TYPES

LEVELS = ("study", "series", "instance")
RANK = {"study": 0, "series": 1, "instance": 2}
MAX_VALUE_LEN = 1024
MAX_OFFSET = 2 ** 62


@dataclass(frozen=True)
class Attr:
    """A matchable attribute: where it lives and how its values are parsed."""

    level: str    # 'study' | 'series' | 'instance' (patient attributes are study level)
    table: str    # 'patients' | 'studies' | 'series' | 'instances' | 'computed'
    column: str
    kind: str     # 'uid' | 'text' | 'cs' | 'pn' | 'date' | 'time' | 'int'


def _a(level: str, table: str, column: str, kind: str) -> Attr:
    return Attr(level, table, column, kind)


#: Matching keys per PS3.18 Tables 10.6.1-5 (plus a few useful extras: SeriesTime,
#: ContentTime). Patient attributes other than the identity key match the study's copy.
MATCHABLE: dict[str, Attr] = {
    "StudyInstanceUID": _a("study", "studies", "study_instance_uid", "uid"),
    "StudyDate": _a("study", "studies", "study_date", "date"),
    "StudyTime": _a("study", "studies", "study_time", "time"),
    "AccessionNumber": _a("study", "studies", "accession_number", "text"),
    "ModalitiesInStudy": _a("study", "computed", "modalities", "cs"),
    "ReferringPhysicianName": _a("study", "studies", "referring_physician_name", "pn"),
    "PatientName": _a("study", "studies", "patient_name", "pn"),
    "PatientID": _a("study", "patients", "patient_id", "text"),
    "IssuerOfPatientID": _a("study", "patients", "issuer_of_patient_id", "text"),
    "PatientBirthDate": _a("study", "studies", "patient_birth_date", "date"),
    "PatientSex": _a("study", "studies", "patient_sex", "cs"),
    "StudyID": _a("study", "studies", "study_id", "text"),
    "StudyDescription": _a("study", "studies", "study_description", "text"),
    "SOPClassesInStudy": _a("study", "computed", "sop_classes", "uid"),
    "SeriesInstanceUID": _a("series", "series", "series_instance_uid", "uid"),
    "Modality": _a("series", "series", "modality", "cs"),
    "SeriesNumber": _a("series", "series", "series_number", "int"),
    "SeriesDescription": _a("series", "series", "series_description", "text"),
    "BodyPartExamined": _a("series", "series", "body_part_examined", "cs"),
    "PerformedProcedureStepStartDate": _a(
        "series", "series", "performed_procedure_step_start_date", "date"),
    "PerformedProcedureStepStartTime": _a(
        "series", "series", "performed_procedure_step_start_time", "time"),
    "SeriesDate": _a("series", "series", "series_date", "date"),
    "SeriesTime": _a("series", "series", "series_time", "time"),
    "InstitutionName": _a("series", "series", "institution_name", "text"),
    "StationName": _a("series", "series", "station_name", "text"),
    "SOPInstanceUID": _a("instance", "instances", "sop_instance_uid", "uid"),
    "SOPClassUID": _a("instance", "instances", "sop_class_uid", "uid"),
    "InstanceNumber": _a("instance", "instances", "instance_number", "int"),
    "Rows": _a("instance", "instances", "rows", "int"),
    "Columns": _a("instance", "instances", "columns", "int"),
    "NumberOfFrames": _a("instance", "instances", "number_of_frames", "int"),
    "ContentDate": _a("instance", "instances", "content_date", "date"),
    "ContentTime": _a("instance", "instances", "content_time", "time"),
}


#: pacsd query parameters for the worklist's visit columns (R-D2; services/visit.py):
#: lower-case names, which no DICOM keyword is. Study level.
PRIVATE_KEYS: dict[str, Attr] = {
    "visitnumber": _a("study", "studies", "visit_number", "text"),
    "cardnumber": _a("study", "studies", "card_number", "text"),
    "department": _a("study", "studies", "ordering_department", "text"),
    "visittype": _a("study", "studies", "visit_type", "visittype"),
}
#: Series attributes a study-level query may also match: the study has a series with
#: that value (pacsd extension, like ModalitiesInStudy; R-D2 body part search).
STUDY_VIA_SERIES: dict[str, Attr] = {
    "BodyPartExamined": _a("study", "computed", "body_parts", "cs"),
}
#: ``orderby`` keys (pacsd extension, study level; R-D2 sort by time, name, type, body
#: part): key -> study columns, compared in this order ("patients.<column>": the
#: study's patient row, which holds PatientID).
ORDER_KEYS: dict[str, tuple[str, ...]] = {
    "StudyDate": ("study_date", "study_time"),
    "PatientName": ("patient_name_alpha",),
    "PatientID": ("patients.patient_id",),
    "AccessionNumber": ("accession_number",),
    "StudyDescription": ("study_description",),
    "ModalitiesInStudy": ("modalities_in_study",),
    "BodyPartExamined": ("body_parts_in_study",),
    "visittype": ("visit_type",),
    "department": ("ordering_department",),
    "visitnumber": ("visit_number",),
}


@dataclass(frozen=True)
class Match:
    """One filter. ``op``: 'eq' (values=(v,)), 'like' (values=(pattern with * ?,)),
    'in' (values=(v1, v2, ...), CS elements may hold wildcards), 'range'
    (values=(low|None, high|None), inclusive, TM/DT high already padded), 'pn'
    (values=(raw query,))."""

    keyword: str
    tag: str
    attr: Attr
    op: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class QidoQuery:
    """A validated QIDO-RS query. Tags are 8 upper-case hex digits."""

    level: str
    matches: tuple[Match, ...] = ()
    includefields: frozenset[str] = frozenset()  # includefield + every attribute key given
    include_all: bool = False
    fuzzy: bool = False
    limit: int = 1000
    offset: int = 0
    unsupported: tuple[str, ...] = ()           # valid keywords not matchable at the level
    study_uid: str | None = None
    series_uid: str | None = None
    #: pacsd worklist columns to return (PRIVATE_KEYS names; R-D2).
    private: frozenset[str] = frozenset()
    #: ``orderby`` (key of ORDER_KEYS, descending?) pairs; () = the default order.
    order: tuple[tuple[str, bool], ...] = ()


@dataclass(frozen=True)
class QidoResult:
    """DICOM JSON objects (tag-sorted dicts) and the number of matches before limit/offset.
    A ``raw`` search (``Catalogue.search(raw=True)``, QIDO-RS answers) gives, where it
    can, spliced byte pieces instead of dicts (``qido_sql.raw_items``)."""

    items: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    #: False when the matches were counted up to a bound and reached it: ``total`` is
    #: then a lower bound (qido_sql.COUNT_AHEAD, issue 6 item 3).
    exact: bool = True


# --- helpers -------------------------------------------------------------------------------

_HEX8 = re.compile(r"[0-9A-Fa-f]{8}")
_NAME = re.compile(r"[A-Za-z0-9]{1,64}")
_DIGITS = re.compile(r"[0-9]+")
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_INT = re.compile(r"[+-]?[0-9]{1,10}")
_DA = re.compile(r"[0-9]{8}")
_TM = re.compile(r"([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:\.([0-9]{1,6}))?)?)?")
_DT = re.compile(r"([0-9]{4})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})"
                 r"(?:([0-9]{2})(?:\.([0-9]{1,6}))?)?)?)?)?)?(\+[0-9]{4})?")
_LIST_SPLIT = re.compile(r"[,\\]")


def _safe(name: str) -> str:
    """A parameter name fit for an error message (never a value, SEC-23)."""
    return name if _NAME.fullmatch(name) else "(a parameter)"


@functools.lru_cache(maxsize=1024)
def resolve_attribute(name: str) -> tuple[str, str]:
    """Keyword or 8-hex tag -> (keyword, 'GGGGEEEE'); BadRequest when unknown."""
    if "." in name:
        raise BadRequest(f"sequence matching is not supported ({_safe(name.split('.')[0])}.*)")
    if _HEX8.fullmatch(name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise BadRequest(f"unknown attribute tag {name.upper()}")
        return keyword, name.upper()
    tag = tag_for_keyword(name) if _NAME.fullmatch(name) else None
    if tag is None:
        raise BadRequest(f"unknown query parameter or attribute {_safe(name)}")
    return name, f"{tag:08X}"


def _bad(keyword: str, what: str) -> BadRequest:
    return BadRequest(f"{keyword}: {what}")


def _check_da(keyword: str, s: str) -> str:
    if not _DA.fullmatch(s):
        raise _bad(keyword, "date must be YYYYMMDD")
    try:
        _dt.date(int(s[:4]), int(s[4:6]), int(s[6:]))
    except ValueError:
        raise _bad(keyword, "not a calendar date") from None
    return s


def _check_tm(keyword: str, s: str) -> str:
    m = _TM.fullmatch(s)
    if not m:
        raise _bad(keyword, "time must be HH, HHMM, HHMMSS or HHMMSS.ffffff")
    hh, mm, ss = m.group(1), m.group(2), m.group(3)
    if int(hh) > 23 or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        raise _bad(keyword, "time component out of range")
    return s


def _upper_tm(s: str) -> str:
    """Last instant named by a TM prefix: '10' -> '105959.999999'."""
    if "." in s:
        whole, frac = s.split(".")
        return f"{whole}.{frac.ljust(6, '9')}"
    return s + "5959.999999"[len(s) - 2:] if len(s) < 6 else s + ".999999"


def _check_dt(keyword: str, s: str) -> str:
    m = _DT.fullmatch(s)
    if not m:
        raise _bad(keyword, "date-time must be YYYY[MM[DD[HH[MM[SS[.ffffff]]]]]]")
    year, month, day, hh, mi, ss = m.group(1, 2, 3, 4, 5, 6)
    try:
        _dt.date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        raise _bad(keyword, "not a calendar date") from None
    if (hh and int(hh) > 23) or (mi and int(mi) > 59) or (ss and int(ss) > 60):
        raise _bad(keyword, "time component out of range")
    return s[:-5] if m.group(8) else s  # the +HHMM offset is ignored (module docstring)


def _upper_dt(s: str) -> str:
    if "." in s:
        whole, frac = s.split(".")
        return f"{whole}.{frac.ljust(6, '9')}"
    return s + "1231235959.999999"[len(s) - 4:] if len(s) < 14 else s + ".999999"


_RANGE_KINDS = {
    "date": (_check_da, lambda s: s),
    "time": (_check_tm, _upper_tm),
    "datetime": (_check_dt, _upper_dt),
}


def parse_range(keyword: str, kind: str, value: str) -> tuple[str | None, str | None]:
    """DA/TM/DT single value or range -> inclusive (low, high) string bounds."""
    check, upper = _RANGE_KINDS[kind]
    if "-" not in value:
        v = check(keyword, value)
        return v, upper(v)
    if value.count("-") != 1:
        raise _bad(keyword, "a range has exactly one '-'")
    lo, hi = value.split("-")
    if not lo and not hi:
        raise _bad(keyword, "a range needs a start, an end or both")
    low = check(keyword, lo) if lo else None
    high = upper(check(keyword, hi)) if hi else None
    if low is not None and high is not None and low > high:
        raise _bad(keyword, "range start is after its end")
    return low, high


def _parse_match(keyword: str, tag: str, attr: Attr, value: str) -> Match:
    kind = attr.kind
    if kind in ("date", "time", "datetime"):
        return Match(keyword, tag, attr, "range", parse_range(keyword, kind, value))
    if kind == "int":
        if not _INT.fullmatch(value) or not -2 ** 31 <= int(value) < 2 ** 31:
            raise _bad(keyword, "must be one integer")
        return Match(keyword, tag, attr, "eq", (int(value),))
    if kind == "uid":
        uids = _LIST_SPLIT.split(value)
        for uid in uids:
            if not _UID.fullmatch(uid) or len(uid) > 64:
                raise _bad(keyword, "must be a UID or a list of UIDs (no wildcards)")
        return Match(keyword, tag, attr, "eq" if len(uids) == 1 else "in", tuple(uids))
    if kind == "cs":
        items = _LIST_SPLIT.split(value)
        if any(not item for item in items):
            raise _bad(keyword, "empty element in value list")
        if len(items) > 1:
            return Match(keyword, tag, attr, "in", tuple(items))
    if kind == "pn":
        return Match(keyword, tag, attr, "pn", (value,))
    if kind == "visittype":
        items = tuple(_LIST_SPLIT.split(value.lower()))
        if any(item not in VISIT_TYPES for item in items):
            raise _bad(keyword, "visit type is " + ", ".join(VISIT_TYPES))
        return Match(keyword, tag, attr, "eq" if len(items) == 1 else "in", items)
    op = "like" if ("*" in value or "?" in value) else "eq"
    return Match(keyword, tag, attr, op, (value,))


def _non_negative(name: str, value: str) -> int:
    if not _DIGITS.fullmatch(value):
        raise BadRequest(f"{name} must be a non-negative integer")
    return int(value)


# --- the parser ----------------------------------------------------------------------------

def _parse_order(level: str, value: str) -> tuple[tuple[str, bool], ...]:
    if level != "study":
        raise BadRequest("orderby is supported at the study level only")
    out: list[tuple[str, bool]] = []
    for item in (x.strip() for x in value.split(",")):
        desc = item.startswith("-")
        key = item.lstrip("+-")
        if key not in ORDER_KEYS:
            raise BadRequest("orderby keys are " + ", ".join(ORDER_KEYS)
                             + " (a leading - sorts descending)")
        if any(k == key for k, _ in out):
            raise BadRequest(f"orderby names {key} twice")
        out.append((key, desc))
    return tuple(out)


def parse_qido(level: str, params: list[tuple[str, str]], *, study_uid: str | None = None,
               series_uid: str | None = None, max_limit: int = 1000,
               aliases: dict[str, str] | None = None) -> QidoQuery:
    """Validate QIDO-RS parameters (already URL-decoded) for ``level``; see module doc.
    ``aliases``: DICOM keyword -> PRIVATE_KEYS name, for the standard attributes the
    ``[worklist]`` settings take a visit column from (AdmissionID -> visitnumber ...)."""
    aliases = aliases or {}
    private: set[str] = set()
    order: tuple[tuple[str, bool], ...] = ()
    if level not in RANK:
        raise BadRequest("unknown query level")
    seen: set[str] = set()
    matches: list[Match] = []
    includes: set[str] = set()
    unsupported: list[str] = []
    include_all = False
    fuzzy = False
    limit = max_limit
    offset = 0
    for key, value in params:
        if len(value) > MAX_VALUE_LEN:
            raise BadRequest(f"value of {_safe(key)} is longer than {MAX_VALUE_LEN} characters")
        lowered = key.lower()
        if lowered == "includefield":
            for item in (x.strip() for x in value.split(",")):
                if item.lower() == "all":
                    include_all = True
                elif item in PRIVATE_KEYS:
                    private.add(item)
                elif item:
                    includes.add(resolve_attribute(item)[1])
            continue
        if key in PRIVATE_KEYS or (level == "study" and key in aliases):
            name = aliases.get(key, key)
            if name in seen:
                raise BadRequest(f"{name} given more than once")
            seen.add(name)
            private.add(name)
            if key in aliases:
                includes.add(resolve_attribute(key)[1])
            if RANK[level] > 0 and key in PRIVATE_KEYS:
                unsupported.append(key)
                continue
            if value.strip("*") != "":
                matches.append(_parse_match(name, "", PRIVATE_KEYS[name], value))
            continue
        if key == "orderby":
            if "orderby" in seen:
                raise BadRequest("orderby given more than once")
            seen.add("orderby")
            order = _parse_order(level, value)
            continue
        if lowered in ("limit", "offset", "fuzzymatching"):
            if lowered in seen:
                raise BadRequest(f"{lowered} given more than once")
            seen.add(lowered)
            if lowered == "limit":
                limit = min(_non_negative("limit", value), max_limit)
            elif lowered == "offset":
                offset = min(_non_negative("offset", value), MAX_OFFSET)
            elif value.lower() in ("true", "false"):
                fuzzy = value.lower() == "true"
            else:
                raise BadRequest("fuzzymatching must be true or false")
            continue
        keyword, tag = resolve_attribute(key)
        if keyword in seen:
            raise BadRequest(f"{keyword} given more than once")
        seen.add(keyword)
        includes.add(tag)  # matching keys are returned (PS3.18 §10.6.3.3)
        attr = MATCHABLE.get(keyword)
        if level == "study" and keyword in STUDY_VIA_SERIES:
            attr = STUDY_VIA_SERIES[keyword]
        if attr is None or RANK[attr.level] > RANK[level]:
            unsupported.append(keyword)
            continue
        if value.strip("*") == "":
            continue  # universal matching
        matches.append(_parse_match(keyword, tag, attr, value))
    return QidoQuery(
        level=level, matches=tuple(matches), includefields=frozenset(includes),
        include_all=include_all, fuzzy=fuzzy, limit=limit, offset=offset,
        unsupported=tuple(unsupported), study_uid=study_uid, series_uid=series_uid,
        private=frozenset(private), order=order,
    )
