"""Ingest hot path: one stored Part 10 file -> :class:`pacsd.model.ParsedInstance`.

Steps: mmap the file (never read into memory); :func:`structure.walk_file` validates
every length and nesting level (BI-1, BI-2, BI-7 .. BI-10) and returns the element tree;
:class:`dicomjson.JsonBuilder` turns it into DICOM JSON from bounded slices; bulk values
(pixel data, top-level binaries over 1024 bytes) are *never* read, only their offsets
recorded for BulkDataURIs and the frame index (whose CRC32 pass reads pixel data once,
through the page cache). Everything QIDO/WADO needs later (level JSON, metadata JSON,
frame ranges + CRC32) is computed here once ("precompute at ingest", ARCHITECTURE).
pydicom is used only for its dictionaries and character set codecs.

Policy (documented for docs/conformance.md): files without the 128-byte preamble,
``DICM`` and File Meta TransferSyntaxUID are refused with InvalidDicom (BI-2 option
"0xC000"), as are native Pixel Data shorter than its declared dimensions and
encapsulated Pixel Data without fragments. Text in an unknown or wrong character set
is decoded with replacement characters, never refused (BI-29).
"""
from __future__ import annotations

import mmap
import os
from typing import Any

import orjson
from pydicom.datadict import tag_for_keyword
from pacsd.dicom import frames as frames_mod
from pacsd.dicom.dicomjson import DEFAULT_ENCODINGS, JsonBuilder, charset_values
from pacsd.dicom.levels import (INSTANCE_CUT_KEYS, INSTANCE_LEVEL_TAGS, SERIES_CUT_KEYS,
                                SERIES_LEVEL_TAGS, STUDY_CUT_KEYS, STUDY_LEVEL_TAGS,
                                level_json)
from pacsd.dicom.structure import Element, dict_vr, walk_file
from pacsd.dicom.text import pn_string
from pacsd.dicom.uids import is_valid_uid
from pacsd.errors import (InvalidDicom, InvalidUID, MissingAttribute, OutOfResources,
                          PacsdError)
from pacsd.model import BULK_BASE, ParsedInstance

#: Top-level binary values longer than this become BulkDataURIs (PS3.18 F.2.6 leaves
#: the threshold to the origin server; 1 KiB keeps metadata small and inline tags whole).
BULK_THRESHOLD = 1024
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW",
                       "US or SS or OW"})
_REQUIRED_UIDS = (("StudyInstanceUID", "0020000D"), ("SeriesInstanceUID", "0020000E"),
                  ("SOPInstanceUID", "00080018"), ("SOPClassUID", "00080016"))

PATIENT_FIELDS = {"PatientID": "00100020", "IssuerOfPatientID": "00100021",
                  "PatientName": "00100010", "PatientBirthDate": "00100030",
                  "PatientSex": "00100040"}
STUDY_FIELDS = {"StudyDate": "00080020", "StudyTime": "00080030",
                "AccessionNumber": "00080050", "StudyID": "00200010",
                "StudyDescription": "00081030", "ReferringPhysicianName": "00080090"}
SERIES_FIELDS = {"Modality": "00080060", "SeriesNumber": "00200011",
                 "SeriesDescription": "0008103E", "BodyPartExamined": "00180015",
                 "SeriesDate": "00080021", "SeriesTime": "00080031",
                 "PerformedProcedureStepStartDate": "00400244",
                 "PerformedProcedureStepStartTime": "00400245",
                 "InstitutionName": "00080080", "StationName": "00081010"}
INSTANCE_FIELDS = {"InstanceNumber": "00200013", "Rows": "00280010", "Columns": "00280011",
                   "NumberOfFrames": "00280008", "BitsAllocated": "00280100",
                   "ContentDate": "00080023", "ContentTime": "00080033"}


def parse_instance(path: str | os.PathLike | bytes, *, max_depth: int = 16) -> ParsedInstance:
    """Parse and validate one Part 10 file (a path; ``bytes`` are accepted for tests).

    Raises InvalidDicom (not DICOM, no Part-10 meta, truncated, bad lengths, too deep,
    undelimited), MissingAttribute (Study/Series/SOP Instance/SOP Class UID missing or
    empty) or InvalidUID; never a pydicom exception.
    """
    if isinstance(path, bytes | bytearray | memoryview):
        return _guarded(bytes(path), max_depth)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise InvalidDicom("Empty file")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            return _guarded(mm, max_depth)
        finally:
            mm.close()


def _guarded(buf, max_depth: int) -> ParsedInstance:
    try:
        return _parse(buf, max_depth)
    except PacsdError:
        raise
    except RecursionError as exc:
        raise InvalidDicom("Sequences are nested too deeply") from exc
    except MemoryError as exc:
        raise OutOfResources("Not enough memory to parse the instance") from exc
    except Exception as exc:  # noqa: BLE001 - never let a parser exception escape
        raise InvalidDicom(f"Unparsable DICOM data ({type(exc).__name__})") from exc


def _parse(buf, max_depth: int) -> ParsedInstance:
    layout = walk_file(buf, max_depth=max_depth)
    data = layout.buffer
    bulk_els: list[Element] = []
    pixel: Element | None = None
    for el in layout.elements:
        if el.tag in PIXEL_TAGS:
            if pixel is None or el.tag == 0x7FE00010:
                pixel = el
            bulk_els.append(el)
        elif (el.value_length > BULK_THRESHOLD or el.kind == "frag") and _is_bulk(el):
            bulk_els.append(el)
    charset = charset_values(data, layout.elements) or []
    meta = JsonBuilder(data, layout.little).dataset(
        layout.elements, DEFAULT_ENCODINGS, {"pr": None},
        skip=frozenset(el.tag for el in bulk_els))

    uids: dict[str, str] = {}
    for keyword, key in _REQUIRED_UIDS:
        if not any(meta.get(key, {}).get("Value") or ()):
            raise MissingAttribute(f"{keyword} is missing or empty")
    for keyword, key in _REQUIRED_UIDS:
        values = meta[key]["Value"]
        # a backslash makes two values ("1.2\\3"): invalid, not "the first one" (BI-6)
        if len(values) != 1 or not is_valid_uid(values[0]):
            raise InvalidUID(f"{keyword} is not a valid DICOM UID")
        uids[keyword] = values[0]
    study, series, sop = (uids["StudyInstanceUID"], uids["SeriesInstanceUID"],
                          uids["SOPInstanceUID"])
    # A File Meta MediaStorageSOPInstanceUID that differs from the dataset's is common in
    # real files (re-identified exports, old modalities; pydicom's rtdose/rtplan samples).
    # The dataset's SOPInstanceUID is authoritative for the archive; the file is stored
    # as received (conformance statement §1), so the mismatch is kept, not repaired.

    # Bulk data: URIs in the metadata, (offset, length) in the stored file.
    uri = f"{BULK_BASE}/studies/{study}/series/{series}/instances/{sop}/bulkdata/"
    bulk: dict[str, tuple[int, int]] = {}
    for el in bulk_els:
        key = f"{el.tag:08X}"
        meta[key] = {"vr": _bulk_vr(el), "BulkDataURI": uri + key}
        if not layout.deflated:  # inflated offsets are not file offsets
            bulk[key] = (el.value_offset, el.value_length)
    meta = dict(sorted(meta.items()))

    frame_index = None
    if pixel is not None:
        frame_index = frames_mod.build(
            layout, pixel, rows=_int(meta, "00280010"), columns=_int(meta, "00280011"),
            samples=_int(meta, "00280002"), bits_allocated=_int(meta, "00280100"),
            number_of_frames=_int(meta, "00280008") or 1,
            photometric=_str(meta, "00280004"))

    instance = _fields(meta, INSTANCE_FIELDS)
    instance["NumberOfFrames"] = ((instance["NumberOfFrames"] or 1) if pixel is not None
                                  else None)
    if instance["NumberOfFrames"] is not None and instance["NumberOfFrames"] < 1:
        instance["NumberOfFrames"] = 1
    study_json, study_cuts = _level(meta, STUDY_LEVEL_TAGS, STUDY_CUT_KEYS)
    series_json, series_cuts = _level(meta, SERIES_LEVEL_TAGS, SERIES_CUT_KEYS)
    instance_json, instance_cuts = _level(meta, INSTANCE_LEVEL_TAGS, INSTANCE_CUT_KEYS)
    return ParsedInstance(
        study_instance_uid=study, series_instance_uid=series, sop_instance_uid=sop,
        sop_class_uid=uids["SOPClassUID"], transfer_syntax_uid=layout.transfer_syntax_uid,
        specific_character_set="\\".join(charset),
        patient=_fields(meta, PATIENT_FIELDS), study=_fields(meta, STUDY_FIELDS),
        series=_fields(meta, SERIES_FIELDS), instance=instance,
        study_json=study_json, series_json=series_json, instance_json=instance_json,
        study_cuts=study_cuts, series_cuts=series_cuts, instance_cuts=instance_cuts,
        metadata=orjson.dumps(meta), frames=frame_index, bulk=bulk, visit=visit_values(meta))


def _is_bulk(el: Element) -> bool:
    if el.kind == "frag":
        return True
    if el.kind == "sq" or el.value_length <= BULK_THRESHOLD:
        return False
    return _effective_vr(el) in _BULK_VRS


def _effective_vr(el: Element) -> str:
    if el.vr is not None and el.vr != "UN":
        return el.vr
    return dict_vr(el.tag) or "UN"


def _bulk_vr(el: Element) -> str:
    if el.tag == 0x7FE00010:
        if el.kind == "frag":
            return "OB"
        if el.vr in ("OB", "OW"):
            return el.vr
        return "OW"  # implicit VR little endian: Pixel Data is OW (PS3.5 §A.1)
    vr = _effective_vr(el)
    return "OW" if " or " in vr else vr


def _first(meta: dict, key: str) -> Any:
    values = meta.get(key, {}).get("Value")
    return values[0] if values else None


def _str(meta: dict, key: str) -> str | None:
    return _str_value(_first(meta, key))


def _str_value(v: Any) -> str | None:
    if isinstance(v, dict):  # PN
        groups = [v.get("Alphabetic", ""), v.get("Ideographic", ""), v.get("Phonetic", "")]
        while groups and not groups[-1]:
            groups.pop()
        return pn_string(tuple(groups)) or None
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _int(meta: dict, key: str) -> int | None:
    return _int_value(_first(meta, key))


def _int_value(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return int(v) if float(v).is_integer() else None


_INT_FIELDS = {"SeriesNumber", "InstanceNumber", "Rows", "Columns", "NumberOfFrames",
               "BitsAllocated"}
#: Per field spec: (name, JSON key, converter), made once (issue 6 ingest CPU).
_FIELD_PLANS: dict[int, tuple] = {}


def _fields(meta: dict, spec: dict[str, str]) -> dict[str, Any]:
    plan = _FIELD_PLANS.get(id(spec))
    if plan is None or plan[0] is not spec:
        plan = _FIELD_PLANS[id(spec)] = (spec, tuple(
            (name, key, _int_value if name in _INT_FIELDS else _str_value)
            for name, key in spec.items()))
    out: dict[str, Any] = {}
    get = meta.get
    for name, key, conv in plan[1]:
        el = get(key)
        values = el.get("Value") if el else None
        out[name] = conv(values[0]) if values else None
    return out


#: Attributes the worklist's visit columns are commonly configured from (R-D2, [worklist]
#: settings): read here while the dataset is at hand, so ingest never parses the metadata
#: again. Other keywords are read from ``ParsedInstance.metadata`` (services/visit.py).
VISIT_KEYWORDS = ("AdmissionID", "OtherPatientIDsSequence", "OtherPatientIDs",
                  "RequestingService", "InstitutionalDepartmentName", "RouteOfAdmissions",
                  "CurrentPatientLocation", "VisitStatusID", "PatientState")
_VISIT_TAGS = {kw: f"{tag_for_keyword(kw):08X}" for kw in VISIT_KEYWORDS}
_PATIENT_ID = "00100020"


def first_text(meta: dict, key: str) -> str | None:
    """First value of the element ``key`` (8 hex digits) of a DICOM JSON dataset as
    stripped text; of a sequence, the first item's Patient ID (OtherPatientIDsSequence)
    or else its first text value; None when absent or empty."""
    element = meta.get(key)
    if not element:
        return None
    if element.get("vr") == "SQ":
        for item in element.get("Value") or ():
            if not isinstance(item, dict):
                continue
            text = _str(item, _PATIENT_ID)
            if text:
                return text
            for k in sorted(item):
                if item[k].get("vr") != "SQ":
                    text = _str(item, k)
                    if text:
                        return text
        return None
    return _str(meta, key)


def visit_values(meta: dict) -> dict[str, str | None]:
    """{keyword: first text value} of :data:`VISIT_KEYWORDS` present in ``meta``."""
    return {kw: first_text(meta, key) for kw, key in _VISIT_TAGS.items() if key in meta}


#: DICOM JSON keys of each level's tags, formatted once (issue 6 STOW CPU, session 5).
_LEVEL_KEYS: dict[tuple[int, ...], tuple[str, ...]] = {}


def _level(meta: dict, tags: tuple[int, ...], cut_keys: tuple[str, ...]
           ) -> tuple[bytes, bytes | None]:
    """(level JSON, cut record) of a level (levels.level_json, R-H1)."""
    keys = _LEVEL_KEYS.get(tags)
    if keys is None:
        keys = _LEVEL_KEYS[tags] = tuple(f"{t:08X}" for t in tags)
    return level_json(meta, keys, cut_keys)
