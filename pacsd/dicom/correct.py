"""Attribute corrections of a stored instance (R-A8): pure, no IO.

:func:`correct_instance` takes the Part 10 bytes of one instance and a mapping of DICOM
keyword -> new value (None removes the attribute) and returns new Part 10 bytes with

* the same transfer syntax, File Meta, preamble and SOP Instance UID;
* the corrected attributes, each value checked against its VR (length, characters) and
  encodable in the instance's Specific Character Set (never a silent re-encoding of the
  other text in the file);
* an Original Attributes Sequence (0400,0561) item recording the previous values, the
  reason, the time and the modifying system (PS3.3 C.12.1.1.9 "CORRECT"), so the object
  itself carries its history;
* Pixel Data byte-for-byte identical: checked after writing, else the correction is
  refused (R-A5).

Only patient- and study-level attributes may be corrected (:data:`CORRECTABLE`): series
and instance identity stay as acquired.
"""
from __future__ import annotations

import copy
import datetime as _dt
import io
import re
import warnings

from pydicom import dcmread
from pydicom.charset import encode_string
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence

from pacsd.errors import BadRequest, InvalidDicom

#: Keywords a correction may change (patient and study level).
CORRECTABLE = frozenset({
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "PatientAge", "PatientComments", "AdmissionID",
    "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
    "ReferringPhysicianName",
})
_MAX_LEN = {"LO": 64, "SH": 16, "PN": 64 * 3 + 2, "DA": 8, "TM": 16, "CS": 16, "AS": 4,
            "LT": 10240}
_PATTERN = {"DA": re.compile(r"\d{8}"), "TM": re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?"),
            "CS": re.compile(r"[A-Z0-9_ ]*"), "AS": re.compile(r"\d{3}[DWMY]")}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def check_changes(changes: object) -> dict[str, str | None]:
    """Validate a correction request's ``changes`` (BadRequest names the keyword)."""
    if not isinstance(changes, dict) or not changes:
        raise BadRequest("changes is a non-empty JSON object of DICOM keyword -> value")
    out: dict[str, str | None] = {}
    for kw, value in changes.items():
        if kw not in CORRECTABLE:
            raise BadRequest(f"{str(kw)[:64]} cannot be corrected; correctable: "
                             + ", ".join(sorted(CORRECTABLE)))
        if value is None or value == "":
            out[kw] = None
            continue
        if not isinstance(value, str):
            raise BadRequest(f"{kw}: the value is a string or null")
        vr = dictionary_VR(tag_for_keyword(kw))
        if len(value) > _MAX_LEN.get(vr, 64) or "\\" in value or any(
                ord(c) < 32 and c != "\x1b" for c in value):
            raise BadRequest(f"{kw}: the value is too long or has characters not allowed "
                             f"in {vr}")
        pattern = _PATTERN.get(vr)
        if pattern is not None and not pattern.fullmatch(value):
            raise BadRequest(f"{kw}: not a valid {vr} value")
        out[kw] = value
    return out


def _encodable(value: str, ds: Dataset, encodings: list[str]) -> bool:
    """True when ``value`` can be written in the data set's character set without
    replacement characters (no Specific Character Set: the default repertoire, ASCII)."""
    if "SpecificCharacterSet" not in ds or not ds.SpecificCharacterSet:
        return value.isascii()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            encode_string(value, encodings)
        except (UnicodeError, LookupError, UserWarning):
            return False
    return True


def _pixels(ds: Dataset) -> list[bytes]:
    return [bytes(ds[kw].value) for kw in _PIXEL_KEYWORDS if kw in ds]


def correct_instance(data: bytes, changes: dict[str, str | None], *, reason: str,
                     when: _dt.datetime, system: str = "pacsd") -> bytes:
    """New Part 10 bytes of ``data`` with ``changes`` applied (module docstring)."""
    try:
        ds = dcmread(io.BytesIO(data), force=False)
    except Exception as e:  # noqa: BLE001 - a stored object we cannot re-read
        raise InvalidDicom("the stored object cannot be read for correction") from e
    before = _pixels(ds)
    encodings = ds._character_set
    if isinstance(encodings, str):
        encodings = [encodings]
    original = Dataset()
    for kw, value in changes.items():
        if value is not None and not _encodable(value, ds, encodings):
            raise BadRequest(f"{kw}: the value cannot be written in the instance's "
                             "Specific Character Set")
        if kw in ds:
            original.add(copy.deepcopy(ds[kw]))
        else:
            setattr(original, kw, None)  # "was absent": an empty value
        if value is None:
            if kw in ds:
                delattr(ds, kw)
        else:
            setattr(ds, kw, value)
    item = Dataset()
    item.ModifiedAttributesSequence = Sequence([original])
    item.AttributeModificationDateTime = when.strftime("%Y%m%d%H%M%S")
    item.ModifyingSystem = system[:64]
    item.SourceOfPreviousValues = ""
    item.ReasonForTheAttributeModification = "CORRECT"
    seq = list(ds.OriginalAttributesSequence) if "OriginalAttributesSequence" in ds else []
    ds.OriginalAttributesSequence = Sequence(seq + [item])
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=False)
    new = out.getvalue()
    # R-A5: the pixels must be the very bytes they were.
    if _pixels(dcmread(io.BytesIO(new))) != before:
        raise InvalidDicom("a correction would have changed the pixel data; refused")
    return new
