"""Synthetic studies of known pixel values for the viewer browser tests (R-D1)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import requests
from pydicom.uid import generate_uid

from dicomgen import make_dataset, multipart, to_part10

SHOTS = Path(__file__).resolve().parent / "screenshots"
ROOT_DIR = Path(__file__).resolve().parents[2]

#: The synthetic CT (R-D1 checks): 128 x 128, 0.5 mm pixels, 10 slices 5 mm apart,
#: RescaleSlope 2, RescaleIntercept -1024. HU(row, col, slice) = 4*col + 2*slice, except a
#: 20 x 20 block at rows/cols 40..59 whose HU is 1000 on every slice.
CT = dict(size=128, spacing=0.5, slices=10, slope=2, intercept=-1024)
BLOCK = (40, 60)
BLOCK_HU = 1000


def hu(row: int, col: int, k: int) -> int:
    if BLOCK[0] <= row < BLOCK[1] and BLOCK[0] <= col < BLOCK[1]:
        return BLOCK_HU
    return 4 * col + 2 * k


def ct_series(study: str, *, name: str, pid: str, date: str, desc: str,
              slices: int = CT["slices"], coronal: bool = False,
              frame_of_ref: str | None = None) -> list[bytes]:
    """Axial slices at z = 0, 5, ... mm; or (``coronal``) a series number 3 of coronal
    slices at y = 0, 6.4, ... mm through the same volume (rows run down from z = 45)."""
    n = CT["size"]
    series, frame_of_ref = generate_uid(), frame_of_ref or generate_uid()
    out = []
    for k in range(slices):
        grid = np.fromfunction(lambda r, c: 4 * c + 2 * k, (n, n), dtype=int)
        grid[BLOCK[0]:BLOCK[1], BLOCK[0]:BLOCK[1]] = BLOCK_HU
        stored = ((grid - CT["intercept"]) // CT["slope"]).astype("<u2")
        ds = make_dataset(study=study, series=series, rows=n, columns=n)
        ds.PixelData = stored.tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = CT["slope"], CT["intercept"]
        ds.PatientName, ds.PatientID, ds.StudyDate = name, pid, date
        ds.StudyDescription, ds.SeriesDescription = desc, "Axial 5mm"
        ds.AccessionNumber = f"A{pid[-3:]}{date}"
        ds.InstanceNumber, ds.SeriesNumber = k + 1, 3 if coronal else 2
        ds.PixelSpacing = [CT["spacing"], CT["spacing"]]
        ds.SliceThickness = 5
        if coronal:
            ds.SeriesDescription = "Coronal"
            ds.ImagePositionPatient = [0, 6.4 * k, 45]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        else:
            ds.ImagePositionPatient = [0, 0, 5 * k]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame_of_ref
        ds.BodyPartExamined = "CHEST"
        ds.InstitutionName = "Central Hospital"
        out.append(to_part10(ds))
    return out


def stow(url: str, parts: list[bytes]) -> None:
    body, ctype = multipart(parts)
    r = requests.post(url + "/dicom-web/studies", data=body, headers={"Content-Type": ctype},
                      timeout=60)
    assert r.status_code == 200, r.text


def shot(page, name: str) -> Path:
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
