"""DICOM Structured Reports for tests (R-C2): a Comprehensive SR (or Basic Text SR) of a
study, preliminary or final, with findings and an impression. Invented text."""
from __future__ import annotations

import datetime as _dt

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomgen import to_part10

COMPREHENSIVE = "1.2.840.10008.5.1.4.1.1.88.33"
BASIC_TEXT = "1.2.840.10008.5.1.4.1.1.88.11"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _text(meaning: str, text: str) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = Sequence([_code("121071", "DCM", meaning)])
    item.TextValue = text
    return item


def make_sr(study: Dataset, *, final: bool, findings: str, impression: str,
            sop_class: str = COMPREHENSIVE, phone: str | None = None) -> bytes:
    ds = Dataset()
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
               "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
               "StudyDescription", "StudyID"):
        if kw in study:
            setattr(ds, kw, study.get(kw))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.SeriesInstanceUID, ds.Modality = generate_uid(), "SR"
    ds.SeriesNumber, ds.InstanceNumber = 9900, 1
    now = _dt.datetime.now()
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN",
                                                 "Diagnostic Imaging Report")])
    ds.CompletionFlag = "COMPLETE" if final else "PARTIAL"
    ds.VerificationFlag = "VERIFIED" if final else "UNVERIFIED"
    if phone:
        ds.PatientTelephoneNumbers = phone
    ds.ContentSequence = Sequence([_text("Finding", findings),
                                   _text("Impression", impression)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (ds.SOPClassUID,
                                                                     ds.SOPInstanceUID)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return to_part10(ds)
