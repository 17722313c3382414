"""De-identification (R-E7, R-H3, MLPS 22): DICOM PS3.15 Annex E Basic Application Level
Confidentiality Profile with chosen options, applied to a pydicom Dataset. Pure (no IO).

What it does (docs/security.md "De-identification"):

* Every attribute of Table E.1-1 (:mod:`pacsd.dicom.deid_table`) gets its action, taking
  the chosen options into account: **D** a dummy value of the VR, **Z** an empty value,
  **X** removed, **K** kept, **C** cleaned (identifying strings of the instance -- the
  patient's name parts, IDs, birth date, accession number, staff names -- are cut out of
  the text), **U** a new UID. Combinations resolve as: ``Z/D`` -> Z, ``X/Z`` / ``X/D`` /
  ``X/Z/D`` -> X, ``X/Z/U*`` -> the sequence is kept and its UIDs replaced (references stay
  consistent). Sequences are processed recursively, the profile applies inside every item.
* Private attributes are removed (the Retain Safe Private option is not offered); curves
  (50xx,eeee) are removed; overlay data and comments (60xx,3000 / 60xx,4000) are removed.
* UIDs are replaced by ``2.25.<n>`` where n is derived from HMAC-SHA256(secret, UID): the
  same original UID gives the same new UID everywhere under one secret (one export), so
  StudyInstanceUID, FrameOfReferenceUID and ReferencedSOPInstanceUID in sequences stay
  consistent; another secret gives unrelated UIDs. pacsd's own hardening beyond the
  table: every other UI value that is not a DICOM-defined UID (1.2.840.10008...) or a
  class / transfer syntax / coding scheme UID is remapped too, and person names (PN) of
  attributes not in the table are emptied.
* PatientID and PatientName (action Z) get a pseudonym ``ANON<12 hex>`` from the same
  keyed hash of IssuerOfPatientID and PatientID, so a research set keeps studies of one
  patient together without revealing who.
* PatientIdentityRemoved (0012,0062) = YES, DeidentificationMethod (0012,0063) names the
  profile and options, DeidentificationMethodCodeSequence (0012,0064) holds the CID 7050
  codes; LongitudinalTemporalInformationModified (0028,0303) says UNMODIFIED / REMOVED.
* The file meta is rebuilt (no source AE titles, new MediaStorageSOPInstanceUID) and the
  preamble zeroed. Pixel data is never touched (R-A5).
* Burned-in annotation is not cleaned (no Clean Pixel Data option): an instance whose
  BurnedInAnnotation (0028,0301) is YES, or absent on a modality or SOP class that
  commonly burns text into pixels (US, secondary capture, ...), is refused with
  :class:`BurnedInAnnotationRefused` unless the caller allows it (``allow_burned_in``,
  an explicit operator decision, recorded by the caller).
"""
from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass, field
from typing import Iterable

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from ..errors import Unprocessable
from .deid_table import TABLE

__all__ = ["OPTIONS", "Profile", "BurnedInAnnotationRefused", "deidentify", "remap_uid",
           "RULES", "resolve_action"]

#: option name -> (table column, CID 7050 code, code meaning)
OPTIONS: dict[str, tuple[str, str, str]] = {
    "retain-full-dates": ("dates", "113106",
                          "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain-patient-characteristics": ("pat", "113108",
                                       "Retain Patient Characteristics Option"),
    "retain-device-identity": ("dev", "113109", "Retain Device Identity Option"),
    "retain-institution-identity": ("inst", "113112", "Retain Institution Identity Option"),
    "clean-descriptors": ("desc", "113105", "Clean Descriptors Option"),
}
BASIC = ("113100", "Basic Application Confidentiality Profile")

_ROW = re.compile(r"\(([0-9A-F]{4}),([0-9A-F]{4})\) (\w+) \| ([A-Z/*]+) \|(.*)$")


@dataclass(frozen=True)
class Rule:
    keyword: str
    basic: str
    options: dict[str, str]


def _parse(text: str) -> dict[int, Rule]:
    rules: dict[int, Rule] = {}
    for line in text.strip().splitlines():
        m = _ROW.match(line.strip())
        if not m:
            raise ValueError(f"bad Table E.1-1 row: {line!r}")
        opts = dict(o.split("=") for o in m[5].split())
        rules[int(m[1] + m[2], 16)] = Rule(m[3], m[4], opts)
    return rules


RULES: dict[int, Rule] = _parse(TABLE)

_BURNS_IN_MODALITIES = {"US", "OT", "SC", "ES", "XC", "GM", "SM", "DOC"}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_DUMMY = {"PN": "ANONYMIZED", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED",
          "ST": "ANONYMIZED", "UT": "ANONYMIZED", "UC": "ANONYMIZED", "CS": "ANONYMIZED",
          "AE": "ANONYMIZED", "DA": "19000101", "TM": "000000.00",
          "DT": "19000101000000.000000", "AS": "000D", "DS": "0", "IS": "0", "UR": ""}
_TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC"}
_KEEP_UID_WORDS = ("ClassUID", "TransferSyntax", "CodingScheme", "MappingResourceUID",
                   "ContextUID", "ImplementationClassUID")
_DICOM_ROOT = "1.2.840.10008."


class BurnedInAnnotationRefused(Unprocessable):
    """The instance may carry identifying text in its pixels; pacsd does not clean pixel
    data, so it is not exported de-identified (R-A5: pixels are never altered)."""

    def __init__(self, reason: str = "instance may have burned-in annotation; "
                                     "pixel data is not cleaned") -> None:
        super().__init__(reason)


@dataclass(frozen=True)
class Profile:
    """The profile with chosen options (names of :data:`OPTIONS`) and the per-export
    secret of the UID / pseudonym mapping."""
    secret: bytes
    options: frozenset[str] = field(default_factory=frozenset)
    allow_burned_in: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.options) - set(OPTIONS)
        if unknown:
            raise ValueError(f"unknown de-identification option(s): {sorted(unknown)}")
        if len(self.secret) < 16:
            raise ValueError("the de-identification secret must be at least 16 bytes")

    @property
    def columns(self) -> set[str]:
        return {OPTIONS[o][0] for o in self.options}

    def method(self) -> list[str]:
        return [BASIC[1]] + [OPTIONS[o][2] for o in sorted(self.options)]

    def codes(self) -> list[tuple[str, str]]:
        return [BASIC] + [(OPTIONS[o][1], OPTIONS[o][2]) for o in sorted(self.options)]


def resolve_action(rule: Rule, columns: Iterable[str]) -> str:
    """The action of ``rule`` under the option columns chosen: a retain option's K wins,
    then a C of any chosen option, else the basic profile's action."""
    chosen = [rule.options[c] for c in columns if c in rule.options]
    if "K" in chosen:
        return "K"
    if "C" in chosen:
        return "C"
    return rule.basic


def remap_uid(uid: str, secret: bytes) -> str:
    """``2.25.<integer of a UUID>`` from HMAC-SHA256(secret, uid): deterministic per
    secret, unrelated across secrets, at most 44 characters."""
    digest = hmac.new(secret, uid.strip("\0 ").encode("ascii", "replace"),
                      hashlib.sha256).digest()
    return "2.25." + str(uuid.UUID(bytes=digest[:16], version=4).int)


def pseudonym(secret: bytes, issuer: str, patient_id: str) -> str:
    digest = hmac.new(secret, f"patient\0{issuer}\0{patient_id}".encode("utf-8", "replace"),
                      hashlib.sha256).hexdigest()
    return "ANON" + digest[:12].upper()


def _burns_in(ds: Dataset) -> bool:
    value = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if value == "YES":
        return True
    if value == "NO":
        return False
    return (str(ds.get("Modality", "") or "").upper() in _BURNS_IN_MODALITIES
            or str(ds.get("SOPClassUID", "")).startswith(_SECONDARY_CAPTURE))


def _identifiers(ds: Dataset) -> list[str]:
    """Strings to cut out of cleaned (C) text: the instance's identifying values."""
    found: set[str] = set()
    for kw in ("PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames",
               "PatientBirthDate", "AccessionNumber", "ReferringPhysicianName",
               "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord",
               "NameOfPhysiciansReadingStudy", "PatientBirthName", "PatientMotherBirthName",
               "InstitutionName", "PatientAddress", "StudyID"):
        value = ds.get(kw)
        if value is None:
            continue
        for v in _values(value):
            text = str(v)
            found.add(text)
            for group in text.split("="):          # alphabetic, ideographic, phonetic
                parts = [p.strip() for p in group.split("^") if p.strip()]
                found.update(parts)
                found.update(("".join(parts), " ".join(parts), " ".join(reversed(parts)),
                              "".join(reversed(parts))))
    # Short ASCII fragments ("Li") would cut ordinary words; ideographic names are short.
    return sorted((s for s in (f.strip() for f in found)
                   if len(s) >= 3 or (len(s) >= 2 and not s.isascii())),
                  key=len, reverse=True)


def _values(value) -> list:
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


class _Walker:
    def __init__(self, profile: Profile, identifiers: list[str]) -> None:
        self.profile = profile
        self.columns = profile.columns
        self.pattern = (re.compile("|".join(re.escape(s) for s in identifiers), re.I)
                        if identifiers else None)

    def uid(self, value: str) -> str:
        return remap_uid(value, self.profile.secret)

    def clean_text(self, value):
        if self.pattern is None or value is None:
            return value
        if isinstance(value, (list, tuple, MultiValue)):
            return [self.clean_text(v) for v in value]
        return self.pattern.sub("*", str(value))

    def remap_elem(self, elem: DataElement) -> None:
        if elem.value in (None, ""):
            return
        if elem.VM > 1:
            elem.value = [self.uid(str(v)) for v in elem.value]
        else:
            elem.value = self.uid(str(elem.value))

    def walk(self, ds: Dataset, clean: bool = False) -> None:
        for elem in list(ds):
            tag = elem.tag
            group = tag.group
            if tag.is_private or tag.element == 0x0000:
                del ds[tag]
                continue
            if 0x5000 <= group <= 0x50FF and group % 2 == 0:        # curves: X
                del ds[tag]
                continue
            if 0x6000 <= group <= 0x60FF and group % 2 == 0 and tag.element in (0x3000,
                                                                                0x4000):
                del ds[tag]                                         # overlay data/comments
                continue
            rule = RULES.get(int(tag))
            if rule is None:
                self.unlisted(ds, elem, clean)
            else:
                self.apply(ds, elem, resolve_action(rule, self.columns))

    def unlisted(self, ds: Dataset, elem: DataElement, clean: bool) -> None:
        """Not in Table E.1-1: kept, recursing into sequences; pacsd's hardening for UIDs
        and person names (module docstring)."""
        if elem.VR == "SQ":
            for item in elem.value:
                self.walk(item, clean)
        elif elem.VR == "UI":
            kw = elem.keyword or ""
            values = elem.value if elem.VM > 1 else [elem.value]
            if any(w in kw for w in _KEEP_UID_WORDS) or all(
                    str(v).startswith(_DICOM_ROOT) for v in values if v):
                return
            self.remap_elem(elem)
        elif elem.VR == "PN":
            elem.value = ""
        elif clean and elem.VR in _TEXT_VRS:
            elem.value = self.clean_text(elem.value)

    def apply(self, ds: Dataset, elem: DataElement, action: str) -> None:
        vr = elem.VR
        if action == "X/Z/U*":
            action = "U" if vr == "UI" else ("K" if vr == "SQ" else "X")
        elif action in ("X/Z", "X/D", "X/Z/D"):
            action = "X"
        elif action == "Z/D":
            action = "Z"
        if action == "X":
            del ds[elem.tag]
        elif action == "K":
            if vr == "SQ":
                for item in elem.value:
                    self.walk(item)
        elif action == "C":
            if vr == "SQ":
                for item in elem.value:
                    self.walk(item, clean=True)
            elif vr in _TEXT_VRS:
                elem.value = self.clean_text(elem.value)
            else:
                del ds[elem.tag]   # nothing to clean in a non-text value: not kept
        elif action == "U":
            if vr == "SQ":
                for item in elem.value:
                    self.walk(item)
            else:
                self.remap_elem(elem)
        elif action == "Z":
            elem.value = Sequence() if vr == "SQ" else ("" if vr in _DUMMY else None)
        elif action == "D":
            if vr == "SQ":
                for item in elem.value:
                    self.walk(item)
            elif vr == "UI":
                self.remap_elem(elem)
            elif vr in _DUMMY:
                elem.value = _DUMMY[vr]
            else:
                elem.value = None
        else:  # pragma: no cover - the table holds only the codes above
            raise ValueError(f"unknown action {action!r}")


def deidentify(ds: Dataset, profile: Profile) -> Dataset:
    """De-identify ``ds`` in place (and its file meta) and return it. Raises
    :class:`BurnedInAnnotationRefused` for an instance that may show identifying text in
    its pixels (unless ``profile.allow_burned_in``)."""
    if not profile.allow_burned_in and _burns_in(ds):
        raise BurnedInAnnotationRefused()
    issuer = str(ds.get("IssuerOfPatientID", "") or "")
    patient_id = str(ds.get("PatientID", "") or "")
    alias = pseudonym(profile.secret, issuer, patient_id)
    walker = _Walker(profile, _identifiers(ds))
    walker.walk(ds)
    ds.PatientID = alias
    ds.PatientName = alias
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = profile.method()
    codes = Sequence()
    for value, meaning in profile.codes():
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = codes
    ds.LongitudinalTemporalInformationModified = (
        "UNMODIFIED" if "retain-full-dates" in profile.options else "REMOVED")
    _rebuild_meta(ds)
    return ds


def _rebuild_meta(ds: Dataset) -> None:
    old = getattr(ds, "file_meta", None)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "")
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "")
    if old is not None and "TransferSyntaxUID" in old:
        meta.TransferSyntaxUID = old.TransferSyntaxUID
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "PACSD_DEID"
    ds.file_meta = meta
    ds.preamble = b"\0" * 128

