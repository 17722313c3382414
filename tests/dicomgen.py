"""Synthetic DICOM for tests: ``make_instance()`` builds a valid Part 10 file in memory.

No patient data: names and IDs are invented. Used by web/, e2e/ and benchmark tests.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


def make_dataset(*, study: str | None = None, series: str | None = None,
                 sop: str | None = None, rows: int = 16, columns: int = 16,
                 frames: int = 1, seed: int = 0, **attrs: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = attrs.pop("SOPClassUID", CT_IMAGE_STORAGE)
    ds.SOPInstanceUID = sop or generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC0001"
    ds.StudyID = "1"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ReferringPhysicianName = ""
    if rows and columns:
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        if frames > 1:
            ds.NumberOfFrames = frames
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 4096, size=(frames, rows, columns), dtype=np.uint16)
        ds.PixelData = pixels.tobytes()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def to_part10(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def make_instance(**kwargs: Any) -> bytes:
    """A valid Part 10 CT instance (16x16, 16-bit) as bytes."""
    return to_part10(make_dataset(**kwargs))


def multipart(parts: list[bytes], boundary: str = "pacsdtestboundary",
              part_type: str = "application/dicom") -> tuple[bytes, str]:
    """(body, Content-Type) of a STOW-RS request."""
    body = b""
    for p in parts:
        body += (f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n").encode() + p + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'
