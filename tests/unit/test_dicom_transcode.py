"""Lossless transcoding (R-A5) and single-frame decoding (PS3.18 octet-stream frames).

References are pydicom decodes of the *source* file; results are decoded independently
with pydicom and must be bit-exact.
"""
from __future__ import annotations

import struct
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.pixels import pack_bits, pixel_array

import pacsd.dicom.transcoding as transcode_mod
from pacsd.dicom import SUPPORTED_TRANSCODE_TARGETS, decode_frame, parse_instance, transcode
from pacsd.dicom.structure import walk_file
from pacsd.dicom.testing import make_dataset, make_instance, to_part10
from pacsd.errors import NotAcceptable, NotFound, Unprocessable

DATA = Path(pydicom.__file__).parent / "data" / "test_files"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
RLE = "1.2.840.10008.1.2.5"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"

DECODABLE = [
    "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm", "CT_small.dcm", "liver_1frame.dcm", "liver_expb_1frame.dcm",
    "SC_rgb_rle.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_rle_16bit.dcm",
    "SC_rgb_rle_16bit_2frame.dcm", "SC_rgb_rle_32bit.dcm", "SC_rgb_rle_32bit_2frame.dcm",
    "SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd_jpeg.dcm",
    "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_gdcm_KY.dcm",
    "SC_ybr_full_422_uncompressed.dcm", "ExplVR_BigEnd.dcm", "JPEG2000.dcm",
    "JPGExtended.dcm", "GDCMJ2K_TextGBR.dcm", "J2K_pixelrep_mismatch.dcm",
    "examples_palette.dcm", "examples_ybr_color.dcm", "image_dfl.dcm",
    "rtdose.dcm", "rtdose_1frame.dcm", "rtdose_expb.dcm", "rtdose_expb_1frame.dcm",
    "rtdose_rle.dcm", "rtdose_rle_1frame.dcm", "JPEGLSNearLossless_16.dcm",
]
#: Attributes a decompressing transcode is allowed to change.
PIXEL_MODULE_CHANGES = {0x7FE00010, 0x00280004, 0x00280006, 0x7FE00001, 0x7FE00002}


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def reference(path: Path) -> np.ndarray:
    """pydicom's decode of the source: native raw, compressed YBR -> RGB."""
    ds = pydicom.dcmread(path)
    return pixel_array(ds, raw=not ds.file_meta.TransferSyntaxUID.is_compressed)


def decoded(data: bytes) -> tuple[pydicom.Dataset, np.ndarray]:
    ds = pydicom.dcmread(DicomBytesIO(data))
    return ds, pixel_array(ds, raw=not ds.file_meta.TransferSyntaxUID.is_compressed)


def test_supported_targets() -> None:
    assert {EXPLICIT, IMPLICIT, DEFLATED, RLE, J2K_LOSSLESS} <= set(
        SUPPORTED_TRANSCODE_TARGETS)


@pytest.mark.parametrize("name", DECODABLE)
def test_transcode_to_explicit_le_is_bit_exact(name: str) -> None:
    path = DATA / name
    out = transcode(str(path), EXPLICIT)
    ds, arr = decoded(out)
    src = pydicom.dcmread(path)
    if src.file_meta.TransferSyntaxUID == EXPLICIT:
        assert out == path.read_bytes()
        return
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT
    assert np.array_equal(arr, reference(path))
    assert ds.SOPInstanceUID == src.SOPInstanceUID
    for elem in src:  # every other attribute unchanged (retired group lengths dropped)
        if elem.tag not in PIXEL_MODULE_CHANGES and elem.tag.element != 0:
            assert ds[elem.tag].value == elem.value, elem.tag
    # and back to implicit VR little endian, still bit-exact
    ds2, arr2 = decoded(transcode(out, IMPLICIT))
    assert ds2.file_meta.TransferSyntaxUID == IMPLICIT and np.array_equal(arr2, arr)


@pytest.mark.parametrize("name", ["MR_small.dcm", "SC_rgb_small_odd.dcm", "CT_small.dcm",
                                  "MR_small_bigendian.dcm", "SC_rgb_rle_2frame.dcm"])
@pytest.mark.parametrize("target", [RLE, J2K_LOSSLESS, DEFLATED])
def test_transcode_to_compressed_targets(name: str, target: str) -> None:
    path = DATA / name
    try:
        out = transcode(str(path), target)
    except NotAcceptable:
        # encoder limits (e.g. openjpeg and tiny images) are refused, never lossy
        assert target == J2K_LOSSLESS
        return
    ds, arr = decoded(out)
    assert ds.file_meta.TransferSyntaxUID == target
    assert np.array_equal(arr, reference(path))
    parsed = parse_instance(out)  # the result is a valid instance for ingest too
    assert parsed.transfer_syntax_uid == target and parsed.frames is not None


def test_transcoded_instance_keeps_its_metadata() -> None:
    path = Path(pydicom.__file__).parent / "data" / "charset_files" / "chrH31.dcm"
    before = parse_instance(str(path))
    after = parse_instance(transcode(str(path), IMPLICIT))
    assert after.patient == before.patient and after.study == before.study
    assert after.study_json == before.study_json


def test_same_transfer_syntax_returns_source_bytes() -> None:
    raw = (DATA / "MR_small_RLE.dcm").read_bytes()
    assert transcode(raw, RLE) == raw


@pytest.mark.parametrize("target", ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91",
                                    "1.2.840.10008.1.2.2", "1.2.3", "../etc", ""])
def test_lossy_or_unknown_targets_are_not_acceptable(target: str) -> None:
    with pytest.raises(NotAcceptable):
        transcode(str(DATA / "MR_small.dcm"), target)


def test_pixel_mismatch_after_encoding_is_not_acceptable(monkeypatch) -> None:
    """The bit-exact check is real: a (simulated) lossy encoder is caught."""
    real = transcode_mod._encode

    def lossy(ds, s, target, reference):
        out = bytearray(real(ds, s, target, reference))
        pixel = next(e for e in walk_file(bytes(out)).elements if e.tag == 0x7FE00010)
        out[pixel.value_offset + 100] ^= 0x01  # flip one bit of one pixel
        return bytes(out)
    monkeypatch.setattr(transcode_mod, "_encode", lossy)
    with pytest.raises(NotAcceptable):
        transcode(str(DATA / "MR_small.dcm"), IMPLICIT)


def test_transcode_refuses_oversized_images() -> None:
    with pytest.raises(Unprocessable):
        transcode(make_instance(rows=64, columns=64), IMPLICIT, max_pixels=1000)


# --- decode_frame ------------------------------------------------------------------------

@pytest.mark.parametrize("name", DECODABLE)
def test_decode_frame_equals_pydicom(name: str) -> None:
    path = DATA / name
    ref = reference(path)
    ds = pydicom.dcmread(path)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    last = ref[-1] if nframes > 1 else ref
    if ds.BitsAllocated == 1:  # segmentation-style bit-packed frames (liver_*.dcm)
        expected = pack_bits(last, pad=False)
    else:
        expected = last.astype(last.dtype.newbyteorder("<")).tobytes()
    assert decode_frame(str(path), nframes) == expected
    assert decode_frame(path.read_bytes(), nframes) == expected


def test_decode_frame_big_endian_equals_little_endian() -> None:
    assert decode_frame(str(DATA / "MR_small_bigendian.dcm"), 1) == decode_frame(
        str(DATA / "MR_small.dcm"), 1)


def test_decode_frame_single_bit_frames_are_packed() -> None:
    raw = make_instance(rows=3, columns=3, frames=3, bits_allocated=1)
    frames = pixel_array(pydicom.dcmread(DicomBytesIO(raw)))
    assert decode_frame(raw, 2) == pack_bits(frames[1], pad=False)


@pytest.mark.parametrize("frame", [0, -1, 3])
def test_decode_frame_out_of_range(frame: int) -> None:
    with pytest.raises(NotFound):
        decode_frame(str(DATA / "SC_rgb_rle_2frame.dcm"), frame)


def test_decode_frame_without_pixel_data() -> None:
    with pytest.raises(Unprocessable):
        decode_frame(make_instance(pixels=False), 1)


def test_bi11_huge_dimensions_refused_before_allocation() -> None:
    ds = make_dataset(rows=0xFFFF, columns=0xFFFF, bits_allocated=16,
                      pixel_bytes=b"\0" * 64)
    raw = to_part10(ds)
    tracemalloc.start()
    try:
        with pytest.raises(Unprocessable):
            decode_frame(raw, 1)
        with pytest.raises(Unprocessable):
            transcode(raw, IMPLICIT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024


def test_bi13_codestream_larger_than_rows_columns_is_refused() -> None:
    raw = bytearray((DATA / "MR_small_jp2klossless.dcm").read_bytes())
    siz = raw.find(b"\xff\x4f\xff\x51")
    assert siz > 0
    struct.pack_into(">LL", raw, siz + 8, 60000, 60000)  # Xsiz, Ysiz
    tracemalloc.start()
    try:
        with pytest.raises(Unprocessable):
            decode_frame(bytes(raw), 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024


def test_bi13_jpeg_sof_checked_against_rows_columns() -> None:
    raw = bytearray((DATA / "SC_rgb_jpeg_gdcm.dcm").read_bytes())  # 100 x 100 RGB
    assert len(decode_frame(bytes(raw), 1, max_pixels=100 * 100 * 3)) == 100 * 100 * 3
    with pytest.raises(Unprocessable):
        decode_frame(bytes(raw), 1, max_pixels=100 * 100 * 3 - 1)
    pixel = next(e for e in walk_file(bytes(raw)).elements if e.tag == 0x7FE00010)
    start = pixel.fragments[1][0]
    sof = raw.find(b"\xff\xc3", start)  # lossless SOF3: len(2) P(1) Y(2) X(2)
    assert sof > 0 and struct.unpack_from(">HH", raw, sof + 5) == (100, 100)
    struct.pack_into(">HH", raw, sof + 5, 60000, 60000)
    with pytest.raises(Unprocessable):
        decode_frame(bytes(raw), 1)
