"""Consumer images for WADO-RS /rendered and /thumbnail and WADO-URI (PS3.18 §8.3.5, §9.5).

One frame is decoded (sizes checked first, BI-11/BI-13, see :mod:`pixels`), then the
display pipeline of PS3.3 C.11 runs: Modality LUT (rescale slope/intercept or Modality
LUT Sequence) -> VOI (the request's window, else the first WindowCenter/WindowWidth with
VOILUTFunction, else a VOI LUT Sequence, else min/max of the frame) -> MONOCHROME1
inversion. Colour: RGB as is, native YBR converted to RGB, PALETTE COLOR through its
lookup tables, whose descriptors and index range are validated first (BI-12: a bad
descriptor or a pixel index outside the table is Unprocessable, never an out-of-bounds
read). The result is scaled to fit the viewport (aspect kept) and encoded by Pillow.
"""
from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image
from pydicom.pixels.processing import (apply_color_lut, apply_modality_lut, apply_voi,
                                       convert_color_space)

from pacsd.dicom.pixels import MAX_PIXELS, Source, decode_array
from pacsd.errors import NotAcceptable, PacsdError, Unprocessable

MEDIA_TYPES = {"image/jpeg": "JPEG", "image/jpg": "JPEG", "image/png": "PNG",
               "image/gif": "GIF"}
_PALETTE = ("Red", "Green", "Blue")


def render(src: str | os.PathLike | bytes, frame_number: int = 1, *,
           media_type: str = "image/jpeg", window: tuple[float, float] | None = None,
           viewport: tuple[int, int] | None = None, quality: int = 90,
           max_pixels: int = MAX_PIXELS) -> bytes:
    """Frame ``frame_number`` (1-based) rendered as ``media_type`` (JPEG, PNG or GIF).

    ``window`` is (center, width) in modality units; ``viewport`` is (columns, rows) the
    image is scaled to fit. Raises NotAcceptable (media type), NotFound (frame),
    Unprocessable (no pixel data, too large, undecodable, bad palette), InvalidDicom.
    """
    fmt = MEDIA_TYPES.get(media_type.split(";")[0].strip().lower())
    if fmt is None:
        raise NotAcceptable("Rendered media type not supported")
    if viewport is not None:
        vw, vh = (int(v) for v in viewport)
        if vw < 1 or vh < 1 or vw * vh > max_pixels:
            raise Unprocessable("Viewport is empty or larger than the decode limit")
    with Source(src) as s:
        s.check(frame_number, max_pixels)
        arr = decode_array(s, frame_number - 1)
        try:
            img = _to_8bit(arr, s, window)
        except PacsdError:
            raise
        except Exception as exc:  # noqa: BLE001 - malformed LUT/VOI attributes
            raise Unprocessable(f"Frame cannot be rendered ({type(exc).__name__})") from exc
    image = Image.fromarray(img, mode="L" if img.ndim == 2 else "RGB")
    if viewport is not None:
        scale = min(vw / image.width, vh / image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, "JPEG", quality=max(1, min(100, int(quality))))
    elif fmt == "GIF":
        image = image if image.mode == "L" else image.convert("P",
                                                              palette=Image.Palette.ADAPTIVE)
        image.save(out, "GIF")
    else:
        image.save(out, "PNG")
    return out.getvalue()


def thumbnail(src: str | os.PathLike | bytes, *, size: int = 128) -> bytes:
    """JPEG of the middle frame, fitted into ``size`` x ``size`` (WADO-RS /thumbnail)."""
    with Source(src) as s:
        if s.pixel is None:
            raise Unprocessable("The instance has no pixel data")
        middle = (s.number_of_frames + 1) // 2
        small = (s.int_attr("Rows") or 0) <= size and (s.int_attr("Columns") or 0) <= size
    # Never enlarge: a 64 x 64 MR stays 64 x 64.
    return render(src, middle, media_type="image/jpeg",
                  viewport=None if small else (size, size), quality=85)


def _to_8bit(arr: np.ndarray, s: Source, window: tuple[float, float] | None) -> np.ndarray:
    pi = str(s.attr("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if pi == "PALETTE COLOR":
        return _palette(arr, s)
    if arr.ndim == 3:  # colour, interleaved (rows, columns, samples)
        if arr.shape[2] != 3:
            raise Unprocessable("Only 1 or 3 samples per pixel can be rendered")
        if not s.encapsulated and pi.startswith("YBR_FULL"):
            # native data is decoded raw; compressed YBR already came back as RGB
            arr = convert_color_space(arr, "YBR_FULL", "RGB")
        bits = s.int_attr("BitsStored") or s.int_attr("BitsAllocated") or 8
        if arr.dtype.itemsize > 1 or bits > 8:
            arr = np.right_shift(arr.astype(np.uint32), max(0, bits - 8))
        return np.clip(arr, 0, 255).astype(np.uint8)
    return _grayscale(arr, s, window, invert=pi == "MONOCHROME1")


def _grayscale(arr: np.ndarray, s: Source, window: tuple[float, float] | None,
               *, invert: bool) -> np.ndarray:
    try:
        values = apply_modality_lut(arr, s.ds).astype(np.float32, copy=False)
    except Exception:  # noqa: BLE001 - malformed rescale: show stored values
        values = arr.astype(np.float32)
    function = str(s.attr("VOILUTFunction", "LINEAR")).strip().upper()
    if window is None:
        window = _file_window(s)
        if window is None and "VOILUTSequence" in s.ds:
            try:
                values = apply_voi(values, s.ds).astype(np.float32, copy=False)
            except Exception:  # noqa: BLE001 - malformed VOI LUT: min/max below
                pass
    else:
        function = "LINEAR"
    out = None
    if window is not None:
        center, width = float(window[0]), float(window[1])
        if function == "SIGMOID" and width > 0:
            out = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        elif function == "LINEAR_EXACT" and width > 0:
            out = ((values - center) / width + 0.5) * 255.0
        elif width >= 1:  # LINEAR, PS3.3 C.11.2.1.2.1
            out = ((values - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5) * 255.0
    if out is None:  # no (valid) window: stretch min..max of this frame
        lo, hi = float(values.min()), float(values.max())
        out = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    img = np.clip(out, 0, 255).astype(np.uint8)
    return 255 - img if invert else img


def _file_window(s: Source) -> tuple[float, float] | None:
    center, width = s.attr("WindowCenter"), s.attr("WindowWidth")
    if center is None or width is None:
        return None
    try:
        c = float(center[0] if _is_multi(center) else center)
        w = float(width[0] if _is_multi(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return (c, w) if np.isfinite(c) and np.isfinite(w) else None


def _is_multi(value: Any) -> bool:
    return not isinstance(value, str | bytes) and hasattr(value, "__getitem__")


def _palette(arr: np.ndarray, s: Source) -> np.ndarray:
    """PALETTE COLOR through its LUTs after validating them (BI-12)."""
    if arr.ndim != 2:
        raise Unprocessable("PALETTE COLOR needs one sample per pixel")
    lo_index, hi_index = int(arr.min()), int(arr.max())
    for color in _PALETTE:
        desc = s.attr(f"{color}PaletteColorLookupTableDescriptor")
        if desc is None or not _is_multi(desc) or len(desc) != 3:
            raise Unprocessable("Palette Color Lookup Table Descriptor is missing or invalid")
        entries, first, bits = (int(v) for v in desc)
        entries = entries or 65536  # 0 means 2**16 entries (PS3.3 C.7.6.3.1.5)
        if bits not in (8, 16) or not 0 < entries <= 65536:
            raise Unprocessable("Palette Color Lookup Table Descriptor is invalid")
        if f"Segmented{color}PaletteColorLookupTableData" not in s.ds:
            data = s.attr(f"{color}PaletteColorLookupTableData")
            if not isinstance(data, bytes) or len(data) < entries * (1 if bits == 8 else 2):
                raise Unprocessable("Palette Color Lookup Table Data is too short")
        if lo_index < first or hi_index > first + entries - 1:
            raise Unprocessable("Pixel values lie outside the Palette Color Lookup Table")
    rgb = apply_color_lut(arr, s.ds)
    if rgb.dtype.itemsize > 1:
        rgb = np.right_shift(rgb.astype(np.uint32), 8)
    return rgb.astype(np.uint8)
