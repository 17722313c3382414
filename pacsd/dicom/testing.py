"""Synthetic DICOM instances for tests (no patient data; ARCHITECTURE "make_instance").

Lives in the package (like ``numpy.testing``) so every layer's tests can build valid
Part 10 objects the same way. Nothing here is used at run time.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.filewriter import dcmwrite
from pydicom.uid import (ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         PYDICOM_IMPLEMENTATION_UID, generate_uid)

#: Root for generated UIDs (pydicom's; generate_uid appends a random suffix).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def make_dataset(*, rows: int = 4, columns: int = 4, frames: int = 1,
                 bits_allocated: int = 16, samples: int = 1,
                 photometric: str | None = None, pixel_representation: int = 0,
                 pixels: bool = True, sop_class_uid: str = CT_IMAGE_STORAGE,
                 pixel_bytes: bytes | None = None, **attributes: Any) -> Dataset:
    """A data set with the Patient/Study/Series/Instance basics and (optionally) native
    pixel data: a ramp so every pixel and frame differ (or ``pixel_bytes`` verbatim).
    ``attributes`` are set last (keyword=value; a value of None deletes the attribute)."""
    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = generate_uid(UID_PREFIX)
    ds.StudyInstanceUID = generate_uid(UID_PREFIX)
    ds.SeriesInstanceUID = generate_uid(UID_PREFIX)
    ds.PatientName = "Test^Patient"
    ds.PatientID = "PID-1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101112"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "S1"
    ds.Modality = "CT"
    ds.SeriesNumber = 3
    ds.InstanceNumber = 7
    if pixels:
        ds.SamplesPerPixel = samples
        ds.PhotometricInterpretation = photometric or (
            "MONOCHROME2" if samples == 1 else "RGB")
        if samples > 1:
            ds.PlanarConfiguration = 0
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated = bits_allocated
        ds.BitsStored = bits_allocated if bits_allocated != 1 else 1
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = pixel_representation
        if frames != 1:
            ds.NumberOfFrames = frames
        ds.PixelData = (ramp_bytes(rows, columns, frames, bits_allocated, samples)
                        if pixel_bytes is None else pixel_bytes)
        ds["PixelData"].VR = "OW" if bits_allocated > 8 else "OB"
    for key, value in attributes.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def ramp_bytes(rows: int, columns: int, frames: int, bits: int, samples: int) -> bytes:
    """Native little-endian pixel bytes of a ramp pattern (padded to even length)."""
    count = rows * columns * samples * frames
    if bits == 1:
        data = np.packbits((np.arange(count) % 3 == 0).astype(np.uint8),
                           bitorder="little").tobytes()
    else:
        dtype = {8: "<u1", 16: "<u2", 32: "<u4"}[bits]
        modulo = 1 << min(bits, 12)
        data = (np.arange(count) % modulo).astype(dtype).tobytes()
    return data + (b"\0" if len(data) % 2 else b"")


def to_part10(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian, *,
              preamble: bytes = b"\0" * 128) -> bytes:
    """Serialise ``ds`` as a Part 10 file in ``transfer_syntax`` (native ones here)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID if "SOPClassUID" in ds else "1.2"
    meta.MediaStorageSOPInstanceUID = (ds.SOPInstanceUID if "SOPInstanceUID" in ds
                                       else "1.2")
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.preamble = preamble
    out = io.BytesIO()
    dcmwrite(out, ds, implicit_vr=transfer_syntax == ImplicitVRLittleEndian,
             little_endian=True, enforce_file_format=False)
    return out.getvalue()


def make_instance(transfer_syntax: str = ExplicitVRLittleEndian, **kw: Any) -> bytes:
    """Part 10 bytes of :func:`make_dataset` (``kw``) in a native transfer syntax."""
    return to_part10(make_dataset(**kw), transfer_syntax)


def make_encapsulated(frames: list[bytes] | list[list[bytes]], transfer_syntax: str, *,
                      basic_offsets: bool = True, extended: bool = False,
                      **kw: Any) -> bytes:
    """Part 10 bytes whose Pixel Data encapsulates ``frames`` as given (each frame a
    bytes value, or a list of fragments) without encoding anything: for frame-index
    tests, where the codestreams need not decode."""
    ds = make_dataset(frames=len(frames), **kw)
    if extended:
        flat = [f if isinstance(f, bytes) else b"".join(f) for f in frames]
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = (
            encapsulate_extended(flat))
    elif frames and not isinstance(frames[0], bytes):
        ds.PixelData = _encapsulate_fragments(frames, basic_offsets)  # type: ignore[arg-type]
    else:
        ds.PixelData = encapsulate(list(frames), has_bot=basic_offsets)  # type: ignore[arg-type]
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return to_part10(ds, transfer_syntax)


def _encapsulate_fragments(frames: list[list[bytes]], bot: bool) -> bytes:
    items = []
    offsets = []
    pos = 0
    for fragments in frames:
        offsets.append(pos)
        for frag in fragments:
            frag = frag + (b"\0" if len(frag) % 2 else b"")
            items.append(b"\xfe\xff\x00\xe0" + len(frag).to_bytes(4, "little") + frag)
            pos += 8 + len(frag)
    table = b"".join(o.to_bytes(4, "little") for o in offsets) if bot else b""
    head = b"\xfe\xff\x00\xe0" + len(table).to_bytes(4, "little") + table
    return head + b"".join(items)
