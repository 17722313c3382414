"""DICOM in and out for e-films: key images from a Key Object Selection, and the film as
a Secondary Capture image (PS3.3 A.8.1) and an Encapsulated PDF (A.45.1) in a new series
of the same study (R-C1: linked to the exam)."""
from __future__ import annotations

import datetime as _dt
import io

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

KOS = "1.2.840.10008.5.1.4.1.1.88.59"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
#: Patient / study attributes copied from the exam, so the film files under it.
COPIED = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
          "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
          "StudyID", "ReferringPhysicianName", "StudyDescription")


def key_images_of_kos(part10: bytes) -> list[str]:
    """SOP Instance UIDs a Key Object Selection flags (its evidence sequence)."""
    ds = dcmread(io.BytesIO(part10), stop_before_pixels=True)
    out = []
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series in study.get("ReferencedSeriesSequence", []):
            for ref in series.get("ReferencedSOPSequence", []):
                out.append(str(ref.ReferencedSOPInstanceUID))
    return out


def _base(study: dict, sop_class: str, series_uid: str, number: int, modality: str,
          description: str) -> Dataset:
    ds = Dataset()
    for kw in COPIED:
        if kw in study and study[kw] is not None:
            setattr(ds, kw, study[kw])
    now = _dt.datetime.now()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.SeriesNumber = 9900
    ds.SeriesDescription = description
    ds.InstanceNumber = number
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.Manufacturer = "pacsd-efilm"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.BurnedInAnnotation = "YES"  # hospital, exam and (masked) name are drawn in
    return ds


def _part10(ds: Dataset) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def secondary_capture(study: dict, series_uid: str, png: bytes,
                      layout: str = "") -> tuple[str, bytes]:
    """The film PNG as an 8-bit MONOCHROME2 Secondary Capture; pixel values are the
    PNG's exactly. ``layout`` ("COLSxROWS") is recorded as the film's Image Display Format
    (2010,0010, ``STANDARD\\C,R`` as in DICOM print), so a viewer can zoom to one tile
    (R-C4 double tap). Returns (SOPInstanceUID, Part 10 bytes)."""
    img = Image.open(io.BytesIO(png)).convert("L")
    ds = _base(study, SECONDARY_CAPTURE, series_uid, 1, "OT", "E-film 电子胶片")
    ds.ConversionType = "WSD"  # workstation
    ds.ImageType = ["DERIVED", "SECONDARY", "EFILM"]
    if layout:
        cols, rows = layout.lower().split("x")
        ds.ImageDisplayFormat = f"STANDARD\\{int(cols)},{int(rows)}"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = img.height, img.width
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.asarray(img, dtype=np.uint8).tobytes()
    return ds.SOPInstanceUID, _part10(ds)


def encapsulated_pdf(study: dict, series_uid: str, pdf: bytes) -> tuple[str, bytes]:
    ds = _base(study, ENCAPSULATED_PDF, series_uid, 2, "DOC", "E-film 电子胶片")
    ds.ConversionType = "WSD"
    ds.DocumentTitle = "E-film"
    ds.ConceptNameCodeSequence = Sequence()
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    return ds.SOPInstanceUID, _part10(ds)
