"""Frame index computed at ingest (R-A1 frames): byte ranges + CRC32 per frame.

The reference is pydicom: concatenated frame bytes read by our offsets must equal
``pydicom.encaps.generate_frames`` (encapsulated) or native slicing.
"""
from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import generate_frames

from pacsd.dicom import parse_instance
from pacsd.dicom.testing import make_dataset, make_encapsulated, make_instance, to_part10
from pacsd.errors import InstanceError, InvalidDicom
from pacsd.model import FrameIndex

DATA = Path(pydicom.__file__).parent / "data"
WITH_PIXELS = sorted(p for p in [*(DATA / "test_files").glob("*.dcm"),
                                 *(DATA / "charset_files").glob("*.dcm")])
JPEG = "1.2.840.10008.1.2.4.50"
RLE = "1.2.840.10008.1.2.5"


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def frame_bytes(raw: bytes, index: FrameIndex) -> list[bytes]:
    return [b"".join(raw[o:o + n] for o, n in ranges) for ranges in index.fragments]


@pytest.mark.parametrize("path", WITH_PIXELS, ids=lambda p: p.name)
def test_frames_equal_pydicom(path: Path) -> None:
    try:
        parsed = parse_instance(str(path))
    except InstanceError:
        pytest.skip("refused at ingest (see test_dicom_parse.REFUSED)")
    if parsed.frames is None:
        return
    index = parsed.frames
    raw = path.read_bytes()
    mine = frame_bytes(raw, index)
    assert tuple(zlib.crc32(m) for m in mine) == index.crc32
    if index.needs_decode:
        assert path.name == "image_dfl.dcm"  # deflated: offsets are not file offsets
        return
    ds = pydicom.dcmread(path)
    try:
        nframes = int(ds.get("NumberOfFrames", 1) or 1)
    except ValueError:
        pytest.skip("the reference (pydicom) cannot read this file's NumberOfFrames")
    assert index.number_of_frames == nframes
    assert index.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    if index.encapsulated:
        eot = None
        if "ExtendedOffsetTable" in ds:
            eot = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        theirs = list(generate_frames(ds.PixelData, number_of_frames=nframes,
                                      extended_offsets=eot))
    else:
        size = len(mine[0])
        theirs = [ds.PixelData[i * size:(i + 1) * size] for i in range(nframes)]
    assert mine == theirs


def test_frame_index_json_round_trip() -> None:
    index = parse_instance(make_instance(frames=3)).frames
    assert index is not None and FrameIndex.from_json(index.to_json()) == index


def test_native_multiframe_ranges() -> None:
    raw = make_instance(rows=3, columns=5, frames=4, bits_allocated=16)
    index = parse_instance(raw).frames
    assert index is not None and not index.encapsulated and not index.needs_decode
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw))
    frames = frame_bytes(raw, index)
    assert [len(f) for f in frames] == [30] * 4
    assert b"".join(frames) == ds.PixelData[:120]


def test_native_ybr_full_422_frame_size() -> None:
    raw = make_instance(rows=2, columns=4, samples=3, bits_allocated=8, frames=2,
                        photometric="YBR_FULL_422", pixel_bytes=bytes(range(32)))
    index = parse_instance(raw).frames
    assert index is not None
    assert [n for ((_, n),) in index.fragments] == [16, 16]  # 2/3 of 2*4*3


def test_single_bit_frames_byte_aligned_and_not() -> None:
    aligned = parse_instance(make_instance(rows=4, columns=4, frames=3,
                                           bits_allocated=1)).frames
    assert aligned is not None and not aligned.needs_decode
    assert [n for ((_, n),) in aligned.fragments] == [2, 2, 2]
    odd = parse_instance(make_instance(rows=3, columns=3, frames=3,
                                       bits_allocated=1)).frames
    assert odd is not None and odd.needs_decode  # 9 bits per frame
    base = odd.fragments[0][0][0]
    # frame i covers bits 9i .. 9i+8: bytes 0-1, 1-2, 2-3
    assert [(o - base, n) for ((o, n),) in odd.fragments] == [(0, 2), (1, 2), (2, 2)]


def test_native_pixel_data_shorter_than_declared_is_refused() -> None:
    ds = make_dataset(rows=4, columns=4, frames=2, pixel_bytes=b"\0" * 40)  # needs 64
    with pytest.raises(InvalidDicom):
        parse_instance(to_part10(ds))
    ds = make_dataset(rows=0xFFFF, columns=0xFFFF, pixel_bytes=b"\0" * 64)  # BI-11
    with pytest.raises(InvalidDicom):
        parse_instance(to_part10(ds))


FRAMES = [b"\xff\xd8" + bytes([i]) * (10 + i) + b"\xff\xd9" for i in range(3)]


def _check(raw: bytes, expected: list[bytes]) -> FrameIndex:
    index = parse_instance(raw).frames
    assert index is not None and index.encapsulated and not index.needs_decode
    got = frame_bytes(raw, index)
    assert [g.rstrip(b"\0") for g in got] == [e.rstrip(b"\0") for e in expected]
    return index


def test_encapsulated_with_basic_offset_table() -> None:
    _check(make_encapsulated(FRAMES, JPEG, bits_allocated=8), FRAMES)


def test_encapsulated_without_bot_one_fragment_per_frame() -> None:
    _check(make_encapsulated(FRAMES, RLE, bits_allocated=8, basic_offsets=False), FRAMES)


def test_encapsulated_with_extended_offset_table() -> None:
    raw = make_encapsulated(FRAMES, JPEG, bits_allocated=8, extended=True)
    index = _check(raw, FRAMES)
    # the ranges use the table's lengths, exactly
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw))
    lengths = [int.from_bytes(ds.ExtendedOffsetTableLengths[i:i + 8], "little")
               for i in range(0, 24, 8)]
    assert [sum(n for _, n in r) for r in index.fragments] == lengths


def test_encapsulated_multi_fragment_frames_with_bot() -> None:
    split = [[f[:4], f[4:]] for f in FRAMES]  # even, so no padding mid-frame
    index = _check(make_encapsulated(split, JPEG, bits_allocated=8), FRAMES)
    assert all(len(r) == 2 for r in index.fragments)


def test_encapsulated_multi_fragment_frames_split_at_eoi() -> None:
    split = [[f[:4], f[4:]] for f in FRAMES]  # even, so no padding mid-frame
    _check(make_encapsulated(split, JPEG, bits_allocated=8, basic_offsets=False), FRAMES)


def test_encapsulated_single_frame_many_fragments() -> None:
    frame = FRAMES[2]
    _check(make_encapsulated([[frame[:4], frame[4:10], frame[10:]]], RLE, bits_allocated=8),
           [frame])


def test_encapsulated_ambiguous_layout_needs_decode() -> None:
    # 3 frames in 4 fragments, no BOT, no EOI markers (RLE): boundaries unknowable
    frags = [[b"ab", b"cd"], [b"ef"], [b"gh"]]
    raw = make_encapsulated(frags, RLE, bits_allocated=8, basic_offsets=False)
    index = parse_instance(raw).frames
    assert index is not None and index.needs_decode and index.number_of_frames == 3
    assert index.fragments == ((), (), ())


def test_encapsulated_bad_bot_falls_back() -> None:
    raw = bytearray(make_encapsulated(FRAMES, JPEG, bits_allocated=8))
    index = parse_instance(bytes(raw)).frames
    assert index is not None
    first_frag_offset = index.fragments[0][0][0]
    bot = first_frag_offset - 8 - 12  # three offsets before the first fragment item
    raw[bot + 4:bot + 8] = (7).to_bytes(4, "little")  # not a fragment boundary
    _check(bytes(raw), FRAMES)  # one fragment per frame still applies


def test_encapsulated_without_fragments_is_refused() -> None:
    ds = make_dataset(rows=2, columns=2, bits_allocated=8)
    ds.PixelData = b"\xfe\xff\x00\xe0\0\0\0\0"  # BOT only
    ds["PixelData"].is_undefined_length = True
    with pytest.raises(InvalidDicom):
        parse_instance(to_part10(ds, JPEG))
