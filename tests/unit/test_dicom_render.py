"""render / thumbnail: decodable consumer images, VOI windowing, colour, BI-11/BI-12."""
from __future__ import annotations

import io
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import pixel_array
from pydicom.pixels.processing import apply_color_lut

from pacsd.dicom import render, thumbnail
from pacsd.dicom.testing import SECONDARY_CAPTURE, make_dataset, make_instance, to_part10
from pacsd.errors import NotAcceptable, NotFound, Unprocessable

DATA = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)


def ramp(**kw) -> bytes:
    """1 x 256 MONOCHROME2 image whose pixel values are 0..255 (16-bit)."""
    return make_instance(rows=1, columns=256, **kw)


def test_window_identity_and_clipping() -> None:
    out = png(render(ramp(), media_type="image/png", window=(127.5, 256)))
    assert out.shape == (1, 256) and np.array_equal(out[0], np.arange(256))
    out = png(render(ramp(), media_type="image/png", window=(50, 20)))[0]
    assert (out[:40] == 0).all() and (out[61:] == 255).all()
    assert 0 < out[50] < 255


def test_file_window_is_used_and_request_window_wins() -> None:
    with_file_window = ramp(WindowCenter="50", WindowWidth="20")
    assert render(with_file_window, media_type="image/png") == render(
        ramp(), media_type="image/png", window=(50, 20))
    assert render(with_file_window, media_type="image/png", window=(127.5, 256)) == \
        render(ramp(), media_type="image/png", window=(127.5, 256))


def test_min_max_when_no_window() -> None:
    out = png(render(make_instance(rows=1, columns=100), media_type="image/png"))[0]
    assert out[0] == 0 and out[-1] == 255 and (np.diff(out.astype(int)) >= 0).all()


def test_modality_lut_applied_before_window() -> None:
    ct = ramp(RescaleSlope="1", RescaleIntercept="-1000")  # values -1000 .. -745
    out = png(render(ct, media_type="image/png", window=(-1000 + 127.5, 256)))[0]
    assert np.array_equal(out, np.arange(256))


def test_monochrome1_is_inverted() -> None:
    normal = png(render(ramp(), media_type="image/png", window=(127.5, 256)))
    inverted = png(render(ramp(photometric="MONOCHROME1"), media_type="image/png",
                          window=(127.5, 256)))
    assert np.array_equal(inverted, 255 - normal)


@pytest.mark.parametrize("media_type, fmt", [("image/jpeg", "JPEG"), ("image/png", "PNG"),
                                             ("image/gif", "GIF")])
def test_media_types_decodable_with_right_size(media_type: str, fmt: str) -> None:
    data = render(str(DATA / "CT_small.dcm"), media_type=media_type)
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == fmt and image.size == (128, 128)


def test_viewport_keeps_aspect() -> None:
    image = Image.open(io.BytesIO(render(ramp(), viewport=(64, 64))))
    assert image.size == (64, 1)
    image = Image.open(io.BytesIO(render(str(DATA / "JPEG2000.dcm"), viewport=(100, 100))))
    assert image.size == (25, 100)  # 1024 rows x 256 columns


def test_rgb_and_native_ybr_render_as_rgb() -> None:
    rgb = DATA / "SC_rgb_small_odd.dcm"
    out = png(render(str(rgb), media_type="image/png"))
    assert np.array_equal(out, pixel_array(pydicom.dcmread(rgb)))
    ybr = DATA / "SC_ybr_full_422_uncompressed.dcm"
    out = png(render(str(ybr), media_type="image/png"))
    assert np.array_equal(out, pydicom.dcmread(ybr).pixel_array)  # pydicom: YBR -> RGB
    assert out.shape == (100, 100, 3)


def test_16_bit_rgb_is_scaled_to_8_bit() -> None:
    path = DATA / "SC_rgb_rle_16bit.dcm"
    out = png(render(str(path), media_type="image/png"))
    assert np.array_equal(out, (pydicom.dcmread(path).pixel_array >> 8).astype(np.uint8))


def test_palette_color() -> None:
    path = DATA / "examples_palette.dcm"
    ds = pydicom.dcmread(path)
    expected = apply_color_lut(ds.pixel_array, ds)
    expected = (expected >> 8 if expected.dtype.itemsize > 1 else expected).astype(np.uint8)
    assert np.array_equal(png(render(str(path), media_type="image/png")), expected)


def _palette_instance(*, entries: int = 256, bits: int = 16, first: int = 0,
                      data_entries: int | None = None, pixel: int = 3) -> bytes:
    ds = make_dataset(rows=2, columns=2, bits_allocated=8, photometric="PALETTE COLOR",
                      sop_class_uid=SECONDARY_CAPTURE, pixel_bytes=bytes([pixel] * 4))
    n = entries if data_entries is None else data_entries
    lut = (np.arange(n, dtype="<u2") * 256).tobytes()
    for color in ("Red", "Green", "Blue"):
        ds.add_new(pydicom.datadict.tag_for_keyword(
            f"{color}PaletteColorLookupTableDescriptor"), "US", [entries % 65536, first,
                                                                  bits])
        ds.add_new(pydicom.datadict.tag_for_keyword(
            f"{color}PaletteColorLookupTableData"), "OW", lut)
    return to_part10(ds)


def test_bi12_palette_guards() -> None:
    out = png(render(_palette_instance(), media_type="image/png"))
    assert (out == 3).all()  # entry 3 = 3 * 256 -> 8 bit 3
    for bad in (_palette_instance(bits=12),                   # invalid descriptor
                _palette_instance(entries=256, data_entries=16),  # LUT data too short
                _palette_instance(entries=16, pixel=200),     # index beyond the LUT
                _palette_instance(entries=16, first=10, pixel=3)):  # index below it
        with pytest.raises(Unprocessable):
            render(bad)


def test_bi11_huge_rows_columns_refused_without_allocation() -> None:
    raw = to_part10(make_dataset(rows=0xFFFF, columns=0xFFFF, pixel_bytes=b"\0" * 64))
    tracemalloc.start()
    try:
        with pytest.raises(Unprocessable):
            render(raw)
        with pytest.raises(Unprocessable):
            thumbnail(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024


def test_errors() -> None:
    with pytest.raises(Unprocessable):
        render(make_instance(pixels=False))
    with pytest.raises(NotFound):
        render(str(DATA / "SC_rgb_rle_2frame.dcm"), 3)
    with pytest.raises(NotAcceptable):
        render(ramp(), media_type="image/tiff")
    with pytest.raises(Unprocessable):
        render(ramp(), viewport=(0, 10))


def test_thumbnail_uses_middle_frame_and_never_enlarges() -> None:
    raw = make_instance(rows=300, columns=200, frames=3)
    assert thumbnail(raw) == render(raw, 2, viewport=(128, 128), quality=85)
    image = Image.open(io.BytesIO(thumbnail(raw)))
    assert image.format == "JPEG" and image.size == (85, 128)
    small = Image.open(io.BytesIO(thumbnail(str(DATA / "MR_small.dcm"))))
    assert small.size == (64, 64)


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "MR_small_RLE.dcm",
                                  "SC_rgb_dcmtk_+eb+cy+np.dcm", "examples_ybr_color.dcm",
                                  "MR_small_bigendian.dcm", "image_dfl.dcm",
                                  "liver_1frame.dcm", "JPEGLSNearLossless_16.dcm"])
def test_render_transfer_syntaxes(name: str) -> None:
    ds = pydicom.dcmread(DATA / name)
    image = Image.open(io.BytesIO(render(str(DATA / name))))
    image.load()
    assert image.size == (ds.Columns, ds.Rows)
