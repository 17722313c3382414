"""Guarded pixel decoding shared by decode_frame, render and transcode (BI-11, BI-13).

Every decode goes through :class:`Source`, which first runs the structural walk
(:mod:`structure`, so a corrupt object fails fast with InvalidDicom instead of reaching a
codec) and then checks *before any decoder allocates*:

* Rows x Columns x SamplesPerPixel against ``max_pixels`` (BI-11: dimensions forged
  up to 0xFFFF or overflowing 32 bits);
* the dimensions declared inside the compressed codestream (JPEG/JPEG-LS SOFn, JPEG 2000
  SIZ) against the same limit and against Rows/Columns: a 60000 x 60000 decompression
  bomb behind a 512 x 512 header is refused (BI-13, openjpeg #1178 class).

Codec failures (missing plugin, corrupt codestream) become Unprocessable; a frame number
outside 1..NumberOfFrames is NotFound (BI-31).
"""
from __future__ import annotations

import io
import mmap
import os
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import pack_bits, pixel_array

from pacsd.dicom import frames as frames_mod
from pacsd.dicom.structure import Element, walk_file
from pacsd.errors import InvalidDicom, NotFound, PacsdError, Unprocessable

#: Default decode limit: 2**28 samples (256 Mi; a 16-bit frame of that size is 512 MiB).
MAX_PIXELS = 1 << 28
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


class Source:
    """An opened Part 10 object (path or bytes) with its layout and header data set."""

    def __init__(self, src: str | os.PathLike | bytes) -> None:
        self._file = None
        self._mmap = None
        if isinstance(src, bytes | bytearray | memoryview):
            self.buf = bytes(src)
            self.fp: Any = io.BytesIO(self.buf)
        else:
            self._file = open(src, "rb")  # noqa: SIM115 - closed in close()
            if os.fstat(self._file.fileno()).st_size == 0:
                self._file.close()
                raise InvalidDicom("Empty file")
            self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self.buf = self._mmap
            self.fp = self._file
        try:
            self.layout = walk_file(self.buf)
            self.ds: Dataset = dcmread(self.fp, stop_before_pixels=True)
        except PacsdError:
            self.close()
            raise
        except Exception as exc:  # noqa: BLE001
            self.close()
            raise InvalidDicom(f"Unparsable DICOM data ({type(exc).__name__})") from exc
        self.pixel: Element | None = None
        for el in self.layout.elements:
            if el.tag in PIXEL_TAGS and (self.pixel is None or el.tag == 0x7FE00010):
                self.pixel = el
        self.fp.seek(0)

    def close(self) -> None:
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- image attributes ------------------------------------------------------------
    def attr(self, keyword: str, default: Any = None) -> Any:
        try:
            value = self.ds.get(keyword, default)
        except Exception:  # noqa: BLE001 - unconvertible value
            return default
        return default if value is None or value == "" else value

    def int_attr(self, keyword: str, default: int | None = None) -> int | None:
        value = self.attr(keyword, default)
        try:
            return int(value) if value is not None else default
        except (TypeError, ValueError):
            return default

    @property
    def number_of_frames(self) -> int:
        return max(1, self.int_attr("NumberOfFrames", 1) or 1)

    @property
    def encapsulated(self) -> bool:
        return self.pixel is not None and self.pixel.kind == "frag"

    def check(self, frame_number: int | None, max_pixels: int) -> None:
        """Pixel data present, frame in range, sizes within limit (BI-11, BI-13, BI-31)."""
        if self.pixel is None:
            raise Unprocessable("The instance has no pixel data")
        if frame_number is not None and not 1 <= frame_number <= self.number_of_frames:
            raise NotFound("No such frame")
        rows, cols = self.int_attr("Rows"), self.int_attr("Columns")
        spp = self.int_attr("SamplesPerPixel", 1) or 1
        bits = self.int_attr("BitsAllocated")
        if not rows or not cols or not bits or rows < 0 or cols < 0 or bits < 0:
            raise Unprocessable("Rows, Columns or BitsAllocated is missing or invalid")
        if rows * cols * spp > max_pixels or bits > 64:
            raise Unprocessable("The image is larger than the configured decode limit")
        if self.encapsulated:
            for head in self._codestream_heads(frame_number):
                size = codestream_size(head)
                if size is None:
                    continue
                h, w = size
                if w * (h or rows) > max_pixels or w != cols or (h and h != rows):
                    raise Unprocessable("The compressed frame declares a size that does "
                                        "not match Rows and Columns")

    def _codestream_heads(self, frame_number: int | None) -> Iterator[bytes]:
        """First bytes of the first fragment of the frame (of every frame when None),
        one at a time (at most 64 KiB each: JPEG headers may carry ICC APP segments)."""
        pix = self.pixel
        assert pix is not None and pix.fragments is not None
        try:
            split = frames_mod.split_encapsulated(self.layout, pix, self.number_of_frames)
        except InvalidDicom:
            split = None
        if split is None:  # boundaries unknown: the first fragment starts frame 1
            starts = pix.fragments[1:2]
        else:
            wanted = range(len(split)) if frame_number is None else [frame_number - 1]
            starts = [split[i][0] for i in wanted]
        buf = self.layout.buffer
        for off, n in starts:
            yield bytes(buf[off:off + min(n, 1 << 16)])


def codestream_size(head: bytes) -> tuple[int, int] | None:
    """(rows, columns) declared by a JPEG / JPEG-LS / JPEG 2000 codestream header.

    Only marker headers are read (bounded by ``head``); None when not recognised.
    """
    if head[:2] == b"\xff\xd8":  # JPEG, JPEG-LS: walk marker segments to the SOFn
        pos = 2
        while pos + 4 <= len(head):
            if head[pos] != 0xFF:
                return None
            marker = head[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            seg_len = struct.unpack_from(">H", head, pos + 2)[0]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB,
                          0xCD, 0xCE, 0xCF, 0xF7, 0xF9):
                if pos + 9 > len(head):
                    return None
                h, w = struct.unpack_from(">HH", head, pos + 5)
                return h, w
            if marker in (0xDA, 0xD9):
                return None
            pos += 2 + seg_len
        return None
    idx = head.find(b"\xff\x4f\xff\x51")  # JPEG 2000 SOC + SIZ (raw or inside a JP2 box)
    if idx >= 0 and idx + 4 + 2 + 2 + 16 <= len(head):
        xsiz, ysiz, xo, yo = struct.unpack_from(">LLLL", head, idx + 8)
        return max(0, ysiz - yo), max(0, xsiz - xo)
    return None


def decode_array(src: Source, index: int | None) -> np.ndarray:
    """Decode one frame (0-based ``index``) or all frames (None) with pydicom.

    Native data keeps its photometric interpretation (``raw``); compressed YBR data is
    converted to RGB exactly as pydicom's ``decompress`` does, so a decoded frame equals
    the same frame of the instance transcoded to Explicit VR Little Endian.
    """
    raw = not src.encapsulated
    try:
        if not src.layout.deflated:
            try:
                # Streaming path: pydicom reads only the wanted frame from the file.
                src.fp.seek(0)
                return pixel_array(src.fp, index=index, raw=raw)
            except MemoryError:
                raise
            except Exception:  # noqa: BLE001 - e.g. VR encoding that differs from the TS
                pass
        # Whole data set path (deflated data, or files the streaming reader mis-parses);
        # sizes were checked before, so this allocation is bounded.
        src.fp.seek(0)
        return pixel_array(dcmread(src.fp), index=index, raw=raw)
    except PacsdError:
        raise
    except MemoryError as exc:
        raise Unprocessable("Not enough memory to decode the pixel data") from exc
    except Exception as exc:  # noqa: BLE001 - codec missing/failed, corrupt data
        raise Unprocessable(f"Pixel data cannot be decoded ({type(exc).__name__})") from exc


def native_bytes(arr: np.ndarray, bits_allocated: int) -> bytes:
    """Little-endian bytes of a decoded frame: interleaved samples, 1-bit data packed."""
    if bits_allocated == 1:
        return pack_bits(arr.astype(np.uint8, copy=False), pad=False)
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def decode_frame(src: str | os.PathLike | bytes, frame_number: int, *,
                 max_pixels: int = MAX_PIXELS) -> bytes:
    """Native little-endian bytes of frame ``frame_number`` (1-based), as PS3.18
    ``application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1`` requires.

    Only that frame is decoded. Colour is interleaved (PlanarConfiguration 0); compressed
    YBR is returned as RGB; native YBR_FULL_422 is returned expanded (3 samples per
    pixel); big endian sources are byte-swapped; BitsAllocated 1 frames are bit-packed
    from bit 0. Raises NotFound (no such frame), Unprocessable (no pixel data, too large,
    codec unavailable or failing), InvalidDicom (corrupt structure).
    """
    with Source(src) as s:
        s.check(frame_number, max_pixels)
        arr = decode_array(s, frame_number - 1)
        return native_bytes(arr, s.int_attr("BitsAllocated") or 8)
