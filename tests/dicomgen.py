"""Synthetic DICOM for the adapter tests, over :mod:`pacsd.dicom.testing` (one generator
for every layer): realistic CT-like 12-bit pixels from a seed, UIDs by name, and the
multipart body of a STOW-RS request. No patient data: names and IDs are invented."""
from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from pacsd.dicom.testing import make_dataset as _make_dataset
from pacsd.dicom.testing import to_part10 as _to_part10

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def make_dataset(*, study: str | None = None, series: str | None = None,
                 sop: str | None = None, rows: int = 16, columns: int = 16,
                 frames: int = 1, seed: int = 0, **attrs: Any) -> Dataset:
    """A CT-like instance: 16-bit stored 12-bit pixels drawn from ``seed``; ``study``,
    ``series`` and ``sop`` name the UIDs (generated when None)."""
    uids = {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": sop}
    pixels = np.random.default_rng(seed).integers(0, 4096, size=(frames, rows, columns),
                                                  dtype="<u2").tobytes()
    ds = _make_dataset(rows=rows, columns=columns, frames=frames, pixel_bytes=pixels,
                       **{k: v for k, v in uids.items() if v})
    ds.BitsStored, ds.HighBit = 12, 11
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PatientID, ds.SeriesNumber, ds.InstanceNumber = "TEST-0001", 1, 1
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def to_part10(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    return _to_part10(ds, transfer_syntax)


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


def card(number: str) -> list[Dataset]:
    item = Dataset()
    item.PatientID = number
    item.TypeOfPatientID = "TEXT"
    return [item]


def worklist_studies() -> dict[str, Dataset]:
    """R-D2 worklist tests: five studies with known visit attributes (HL7 PV1-2 codes in RouteOfAdmissions)."""
    spec = {
        "li": dict(PatientName="Li^Lei", PatientID="P1", StudyDate="20250101",
                   AdmissionID="ZY2025001", RouteOfAdmissions="I",
                   RequestingService="Cardiology", OtherPatientIDsSequence=card("CARD-001"),
                   BodyPartExamined="CHEST", Modality="CT", AccessionNumber="ACC1"),
        "zhang": dict(PatientName="Zhang^San", PatientID="P2", StudyDate="20250201",
                      RouteOfAdmissions="O", RequestingService="Orthopedics",
                      OtherPatientIDsSequence=card("CARD-002"), BodyPartExamined="KNEE",
                      Modality="MR", AccessionNumber="ACC2"),
        "wang": dict(PatientName="Wang^Wu", PatientID="P3", StudyDate="20250301",
                     RouteOfAdmissions="emergency", RequestingService="Emergency Dept",
                     BodyPartExamined="HEAD", Modality="CT", AccessionNumber="ACC3"),
        # No RouteOfAdmissions: the Admission ID makes it inpatient (retention's rule).
        "zhao": dict(PatientName="Zhao^Liu", PatientID="P4", StudyDate="20250401",
                     AdmissionID="ZY2025009", RequestingService="Cardiology",
                     BodyPartExamined="ABDOMEN", Modality="DX", AccessionNumber="ACC4"),
        # Nothing: visit type unknown, matched by no visittype.
        "qian": dict(PatientName="Qian^Qi", PatientID="P5", StudyDate="20250501",
                     Modality="CT", AccessionNumber="ACC5"),
    }
    return {k: make_dataset(**v) for k, v in spec.items()}
