#!/usr/bin/env python3
"""Send an invented CT study to a running pacsd and write a one-page report PDF, for the
README's "Patient cloud film in five minutes". Standard library + pydicom + numpy +
Pillow (all pacsd dependencies). Prints the StudyInstanceUID.

    python3 scripts/cloudfilm_demo.py [--url http://127.0.0.1:8042] [--token BEARER]
"""
from __future__ import annotations

import argparse
import io
import sys
import urllib.request

import numpy as np
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def phantom(size: int, seed: int) -> bytes:
    """A CT-like disc: body, two lungs, a spine (stored value = HU + 1024)."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    img = np.full((size, size), -1000.0)
    img[x ** 2 / 0.8 + y ** 2 / 0.6 < 1] = 40
    s = 0.04 * seed
    img[(x + 0.35) ** 2 + (y - s) ** 2 < 0.06] = -800
    img[(x - 0.35) ** 2 + (y - s) ** 2 < 0.06] = -800
    img[x ** 2 + (y - 0.45) ** 2 < 0.015] = 900
    return (img + 1024).clip(0, 4095).astype("<u2").tobytes()


def study(n: int = 6, size: int = 256) -> list[bytes]:
    study_uid, series_uid = generate_uid(), generate_uid()
    out = []
    for i in range(n):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID = "Demo^Patient", "DEMO-0001"
        ds.PatientBirthDate, ds.PatientSex = "19800131", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyDate, ds.StudyTime, ds.StudyDescription = "20261127", "090000", "Chest CT"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, i + 1
        ds.InstitutionName, ds.AccessionNumber = "Demo Hospital", "A0001"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelSpacing, ds.SliceThickness = [1.5, 1.5], 5
        ds.ImagePositionPatient = [0, 0, 5 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelData = phantom(size, i)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def report_pdf(path: str) -> None:
    img = Image.new("RGB", (1240, 1754), "white")
    d = ImageDraw.Draw(img)
    lines = ["Demo Hospital - Radiology report (invented)", "", "Exam: Chest CT",
             "Findings: a small nodule in the right upper lobe, 5 mm, calcified.",
             "Impression: benign-looking nodule; follow-up in 12 months."]
    for i, line in enumerate(lines):
        d.text((100, 120 + 40 * i), line, fill="black")
    img.save(path, format="PDF")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8042")
    ap.add_argument("--token", help="Bearer token when [security] is enabled")
    ap.add_argument("--report", default="report.pdf", help="where to write the report PDF")
    args = ap.parse_args()
    parts = study()
    boundary = "pacsddemo"
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + p + b"\r\n" for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    req = urllib.request.Request(
        args.url.rstrip("/") + "/dicom-web/studies", data=body, method="POST",
        headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                 f"boundary={boundary}",
                 "Accept": "application/dicom+json",
                 **({"Authorization": "Bearer " + args.token} if args.token else {})})
    with urllib.request.urlopen(req) as resp:
        if resp.status != 200:
            print(f"STOW-RS answered {resp.status}", file=sys.stderr)
            return 1
    report_pdf(args.report)
    from pydicom import dcmread
    print(dcmread(io.BytesIO(parts[0])).StudyInstanceUID)
    return 0


if __name__ == "__main__":
    sys.exit(main())
