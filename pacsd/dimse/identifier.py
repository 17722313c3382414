"""C-FIND / C-GET / C-MOVE identifiers -> the parameters QIDO-RS uses, and back.

C-FIND reuses QIDO's matching exactly (``pacsd.index.parse_qido`` via
``QueryService.search``): each attribute of the identifier becomes one QIDO parameter
``(keyword, value)`` — the value as DICOM writes it (``Wang^*``, ``20260101-20261231``,
``CT\\MR``, UID lists separated by ``\\``) — so wildcards, ranges, lists, person-name
rules, limits and the 400-class checks are the same on both protocols (BI-30). Matching
keys are also returned (QIDO adds them to ``includefield``).

Documented choices (docs/dimse-conformance.md §4):

* Levels: PATIENT (Patient Root only), STUDY, SERIES, IMAGE. QueryRetrieveLevel missing
  or not allowed by the model -> 0xA900. Malformed values -> 0xC000 (QIDO's 400s).
* Relational queries are accepted: upper-level unique keys are not required.
* Sequence attributes are never matched (returned when stored, else empty); private and
  group 0000/0002 attributes are ignored.
* PATIENT level is answered from study rows grouped by (PatientID, IssuerOfPatientID):
  only Patient module keys match there; other keys are returned empty.
"""
from __future__ import annotations

from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .. import errors
from .status import IdentifierMismatch

LEVELS = {"PATIENT": ("PATIENT", "STUDY", "SERIES", "IMAGE"),
          "STUDY": ("STUDY", "SERIES", "IMAGE")}
#: DIMSE level -> QIDO level (PATIENT is answered from study rows).
QIDO_LEVEL = {"PATIENT": "study", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}

#: Unique keys per level, hierarchy order.
UNIQUE = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
          "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}

#: Attributes answerable at PATIENT level (Patient module + Patient-level counters).
PATIENT_KEYS = frozenset({
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "PatientBirthTime", "OtherPatientIDsSequence", "OtherPatientNames", "EthnicGroup",
    "PatientComments", "PatientSpeciesDescription", "PatientBreedDescription",
    "ResponsiblePerson", "ResponsibleOrganization", "PatientIdentityRemoved",
    "IssuerOfPatientIDQualifiersSequence",
})
#: Filled in by the adapter itself, never sent to the index.
LOCAL_KEYS = frozenset({
    "QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle",
    "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
})
#: Attributes with the same keyword in every group (never matched).
_SKIP_GROUPS = (0x0000, 0x0002)


@dataclass(frozen=True)
class FindRequest:
    level: str                        # PATIENT | STUDY | SERIES | IMAGE
    qido_level: str                   # study | series | instance
    params: list[tuple[str, str]]     # QIDO parameters
    requested: tuple[str, ...]        # tags (8 hex) the response must carry
    unique: tuple[str, ...]           # unique keys of this level and above (tags)


def tag_hex(keyword_or_tag: str | int) -> str:
    if isinstance(keyword_or_tag, int):
        return f"{keyword_or_tag:08X}"
    tag = tag_for_keyword(keyword_or_tag)
    if tag is None:
        raise KeyError(keyword_or_tag)
    return f"{tag:08X}"


def _value(elem) -> str:
    """An element's value as QIDO text: multiple values joined with backslash."""
    value = elem.value
    if value is None or value == "":
        return ""
    if isinstance(value, (bytes, bytearray)):
        raise errors.BadRequest(f"{elem.keyword}: binary values cannot be matched")
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join("" if v is None else str(v) for v in value)
    return str(value)


def query_level(identifier: Dataset, root: str) -> str:
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS[root]:
        raise IdentifierMismatch(
            f"QueryRetrieveLevel must be one of {', '.join(LEVELS[root])} for this model")
    return level


def unique_tags(level: str, root: str) -> tuple[str, ...]:
    order = LEVELS[root]
    return tuple(tag_hex(UNIQUE[lv]) for lv in order[: order.index(level) + 1])


def parse_find(identifier: Dataset, root: str) -> FindRequest:
    """Translate a C-FIND identifier (see module docstring)."""
    level = query_level(identifier, root)
    params: list[tuple[str, str]] = []
    requested: list[str] = []
    try:
        elements = list(identifier)
    except Exception:  # noqa: BLE001 - undecodable element (bad VR, length, charset)
        raise errors.BadRequest("the identifier cannot be decoded") from None
    for elem in elements:
        tag = int(elem.tag)
        if elem.tag.group in _SKIP_GROUPS or elem.tag.is_private:
            continue
        keyword = elem.keyword or keyword_for_tag(tag)
        if not keyword:
            continue
        requested.append(f"{tag:08X}")
        if keyword in LOCAL_KEYS or elem.VR == "SQ":
            continue
        if level == "PATIENT" and keyword not in PATIENT_KEYS:
            continue  # a lower-level key at PATIENT level: returned empty, never matched
        params.append((keyword, _value(elem)))
    return FindRequest(level=level, qido_level=QIDO_LEVEL[level], params=params,
                       requested=tuple(requested), unique=unique_tags(level, root))


def uid_values(identifier: Dataset, keyword: str) -> list[str]:
    """The values of a unique key in a retrieve identifier (list matching allowed)."""
    elem = identifier.get(keyword)
    if elem is None:
        return []
    text = _value(identifier[keyword])
    return [v.strip() for v in text.replace(",", "\\").split("\\") if v.strip()]


def empty_json(tag: str) -> dict:
    """A zero-length DICOM JSON element for a requested key pacsd has no value for."""
    vr = dictionary_VR(int(tag, 16))
    return {"vr": vr.split(" or ")[0]}
