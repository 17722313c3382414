"""Where each frame lies in the stored file, computed once at ingest (R-A1 frames).

WADO-RS ``/frames/{n}`` is then served by byte range from the stored object, checked
against ``crc32[n-1]``, without decoding or re-reading the header. The frame boundaries
of encapsulated pixel data are taken, in this order, from: the Basic Offset Table, the
Extended Offset Table, one fragment per frame (fragments == NumberOfFrames, mandatory for
RLE), all fragments (single frame), and JPEG/JPEG-LS/JPEG 2000 end-of-image markers.
Every source is validated against the fragment layout; when none is certain the index
says ``needs_decode`` and carries no ranges, and the retrieve path decodes instead of
guessing (serving the wrong bytes for a frame is worse than decoding).
"""
from __future__ import annotations

import struct
import zlib

from pacsd.dicom.structure import Element, Layout
from pacsd.errors import InvalidDicom
from pacsd.model import FrameIndex

_RLE = "1.2.840.10008.1.2.5"
#: Start-of-codestream signatures: JPEG/JPEG-LS SOI, JPEG 2000 SOC, JP2 signature box.
_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")


def _crc(mv, ranges) -> int:
    crc = 0
    for off, n in ranges:
        crc = zlib.crc32(mv[off:off + n], crc)
    return crc


def build(layout: Layout, pix: Element, *, rows: int | None, columns: int | None,
          samples: int | None, bits_allocated: int | None, number_of_frames: int,
          photometric: str | None) -> FrameIndex:
    """FrameIndex for the pixel data element ``pix`` (native or encapsulated)."""
    ts = layout.transfer_syntax_uid
    nframes = max(1, number_of_frames)
    encapsulated = pix.kind == "frag"
    if layout.deflated:
        # Offsets refer to the inflated stream, not to the stored file: decode instead.
        return FrameIndex(ts, encapsulated, ((),) * nframes, (0,) * nframes, True)
    if encapsulated:
        split = split_encapsulated(layout, pix, nframes)
        frames = None if split is None else (split, False)
    else:
        frames = _native(pix, rows, columns, samples, bits_allocated, nframes,
                         photometric)
    if frames is None:
        return FrameIndex(ts, encapsulated, ((),) * nframes, (0,) * nframes, True)
    ranges, needs_decode = frames
    with memoryview(layout.buffer) as mv:  # released before the mmap is closed
        crcs = tuple(_crc(mv, r) for r in ranges)
    return FrameIndex(ts, encapsulated, ranges, crcs, needs_decode)


def _native(pix: Element, rows, columns, samples, bits, nframes: int, photometric):
    if pix.tag == 0x7FE00008:
        bits = 32
    elif pix.tag == 0x7FE00009:
        bits = 64
    if not rows or not columns or not bits or rows < 0 or columns < 0 or bits < 0:
        return None
    samples = samples if samples and samples > 0 else 1
    frame_bits = rows * columns * samples * bits
    if photometric == "YBR_FULL_422" and samples == 3:
        frame_bits = frame_bits * 2 // 3  # two chroma samples per two pixels (PS3.3)
    if frame_bits * nframes > pix.value_length * 8:
        # Rows x Columns x SamplesPerPixel x BitsAllocated x NumberOfFrames needs more
        # bytes than Pixel Data holds: truncated or forged dimensions (BI-7, BI-11).
        raise InvalidDicom("Pixel Data is shorter than Rows, Columns, SamplesPerPixel, "
                           "BitsAllocated and NumberOfFrames require")
    base = pix.value_offset
    if frame_bits % 8 == 0:
        n = frame_bits // 8
        return tuple(((base + i * n, n),) for i in range(nframes)), False
    # Bit-packed frames not on byte boundaries (BitsAllocated 1): the ranges cover the
    # bytes that hold the frame's bits, but a byte-range read is not the frame.
    out = []
    for i in range(nframes):
        first, last = (i * frame_bits) // 8, -(-((i + 1) * frame_bits) // 8)
        out.append(((base + first, last - first),))
    return tuple(out), True


Ranges = tuple[tuple[tuple[int, int], ...], ...]


def split_encapsulated(layout: Layout, pix: Element, nframes: int) -> Ranges | None:
    """Per frame, the (offset, length) of its fragment values; None when uncertain."""
    buf = layout.buffer
    frags = pix.fragments or []
    if len(frags) < 2:
        raise InvalidDicom("Encapsulated Pixel Data has no fragments")
    bot_off, bot_len = frags[0]
    items = frags[1:]
    first_item = items[0][0] - 8
    index_of = {off - 8 - first_item: k for k, (off, _) in enumerate(items)}

    if bot_len:  # Basic Offset Table (PS3.5 §A.4)
        if bot_len % 4 == 0 and bot_len // 4 == nframes:
            offsets = struct.unpack_from(f"<{nframes}L", buf, bot_off)
            starts = [index_of.get(o) for o in offsets]
            if starts[0] == 0 and None not in starts and all(
                    a < b for a, b in zip(starts, starts[1:])):
                bounds = starts + [len(items)]
                return tuple(tuple(items[bounds[i]:bounds[i + 1]])
                             for i in range(nframes))
    if extended := _eot(layout, index_of, items, nframes):
        return extended
    if len(items) == nframes:
        return tuple((it,) for it in items)
    if nframes == 1:
        return (tuple(items),)
    if len(items) > nframes and layout.transfer_syntax_uid != _RLE:
        split = _split_at_eoi(buf, items)
        if split is not None and len(split) == nframes:
            return split
    return None


def _eot(layout: Layout, index_of: dict[int, int], items: list[tuple[int, int]],
         nframes: int) -> Ranges | None:
    """Extended Offset Table (7FE0,0001/0002), one fragment per frame (PS3.3 C.7.6.3)."""
    tables = {}
    for el in layout.elements:
        if el.tag in (0x7FE00001, 0x7FE00002) and el.kind == "value":
            tables[el.tag] = bytes(layout.buffer[el.value_offset:
                                                 el.value_offset + el.value_length])
    offs, lens = tables.get(0x7FE00001), tables.get(0x7FE00002)
    if not offs or not lens or len(offs) != 8 * nframes or len(lens) != 8 * nframes:
        return None
    fmt = "<" if layout.little else ">"
    offsets = struct.unpack(f"{fmt}{nframes}Q", offs)
    lengths = struct.unpack(f"{fmt}{nframes}Q", lens)
    out = []
    for o, n in zip(offsets, lengths):
        k = index_of.get(o)
        if k is None or n > items[k][1]:
            return None
        out.append(((items[k][0], n),))
    return tuple(out)


def _split_at_eoi(buf, items: list[tuple[int, int]]) -> Ranges | None:
    """Split fragments into frames that start with a codestream start marker and end
    with FFD9 (JPEG EOI / JPEG 2000 EOC), optionally followed by one padding byte."""
    frames: list[tuple[tuple[int, int], ...]] = []
    current: list[tuple[int, int]] = []
    for off, n in items:
        if not current and not bytes(buf[off:off + min(n, 12)]).startswith(_STARTS):
            return None
        current.append((off, n))
        tail = bytes(buf[max(off, off + n - 3):off + n])
        if tail.endswith(b"\xff\xd9") or tail.endswith(b"\xff\xd9\x00"):
            frames.append(tuple(current))
            current = []
    if current:
        return None
    return tuple(frames)
