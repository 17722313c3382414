"""Bad input at ingest: reliability-matrix rows BI-1 .. BI-10 against parse_instance.

Every refusal must be a pacsd.errors.InstanceError subclass (never a pydicom or
RecursionError/MemoryError), must not allocate a declared length, and must be quick.
"""
from __future__ import annotations

import io
import random
import struct
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import pydicom
import pytest
from PIL import Image

from pacsd.dicom import is_valid_uid, parse_instance
from pacsd.dicom import structure
from pacsd.dicom.testing import make_dataset, make_encapsulated, make_instance, to_part10
from pacsd.errors import (InstanceError, InstanceTooLarge, InvalidDicom, InvalidUID,
                          MissingAttribute)

DATA = Path(pydicom.__file__).parent / "data"


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --- raw element builders (explicit VR little endian) ------------------------------------

def el(tag: int, vr: str, value: bytes) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in ("OB", "OW", "SQ", "UN", "UT", "UC", "UR", "OD", "OF", "OL", "OV", "SV", "UV"):
        return head + b"\0\0" + struct.pack("<L", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def sq(tag: int, content: bytes, *, undefined: bool = True) -> bytes:
    length = 0xFFFFFFFF if undefined else len(content)
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"SQ\0\0" + struct.pack(
        "<L", length) + content


def item(content: bytes, *, undefined: bool = True) -> bytes:
    length = 0xFFFFFFFF if undefined else len(content)
    return b"\xfe\xff\x00\xe0" + struct.pack("<L", length) + content


ITEM_DELIM = b"\xfe\xff\x0d\xe0\0\0\0\0"
SEQ_DELIM = b"\xfe\xff\xdd\xe0\0\0\0\0"


def with_extra(extra: bytes, **kw) -> bytes:
    """A valid instance (no pixel data) with ``extra`` elements appended."""
    return make_instance(pixels=False, **kw) + extra


def nested(depth: int, *, undefined: bool = True) -> bytes:
    """``depth`` levels of ReferencedSeriesSequence > item > ... (BI-9)."""
    inner = el(0x00080100, "SH", b"LEAF")
    for _ in range(depth):
        body = item(inner + (ITEM_DELIM if undefined else b""), undefined=undefined)
        inner = sq(0x00081115, body + (SEQ_DELIM if undefined else b""),
                   undefined=undefined)
    return inner


# --- BI-1 / BI-2 ---------------------------------------------------------------------

def _png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (8, 8)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("data", [
    b"", b"\0", b"hello world" * 20, random.Random(1).randbytes(4096), _png(),
    b"\0" * 128 + b"DICM", b"\0" * 128 + b"DICM" + b"\x02\x00",
    zlib.compress(b"\0" * 1000),
], ids=["empty", "one-byte", "text", "random", "png", "dicm-only", "dicm-stub", "zlib"])
def test_bi1_not_dicom(data: bytes, tmp_path) -> None:
    path = tmp_path / "x"
    path.write_bytes(data)
    with pytest.raises(InvalidDicom):
        parse_instance(str(path))


def test_bi2_no_part10_meta_is_refused() -> None:
    raw = make_instance()
    layout = structure.walk_file(raw)
    dataset_only = raw[layout.dataset_offset:]
    with pytest.raises(InvalidDicom):                        # no preamble, no DICM
        parse_instance(dataset_only)
    with pytest.raises(InvalidDicom):                        # preamble, no DICM
        parse_instance(b"\0" * 128 + dataset_only)
    with pytest.raises(InvalidDicom):                        # DICM, no meta group
        parse_instance(b"\0" * 128 + b"DICM" + dataset_only)
    for name in ("no_meta.dcm", "ExplVR_LitEndNoMeta.dcm", "meta_missing_tsyntax.dcm"):
        with pytest.raises(InvalidDicom):
            parse_instance(str(DATA / "test_files" / name))


def test_bi2_meta_without_transfer_syntax() -> None:
    raw = make_instance()
    ts = b"\x02\x00\x10\x00UI"
    assert raw.count(ts) == 1
    with pytest.raises(InvalidDicom):
        parse_instance(raw.replace(ts, b"\x02\x00\x11\x00UI"))  # now (0002,0011)


# --- BI-3 / BI-4 / BI-6 ----------------------------------------------------------------

@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID",
                                     "SOPInstanceUID", "SOPClassUID"])
def test_bi3_missing_or_empty_uid(keyword: str) -> None:
    with pytest.raises(MissingAttribute) as exc:
        parse_instance(make_instance(pixels=False, **{keyword: None}))
    assert keyword in exc.value.reason
    with pytest.raises(MissingAttribute):
        parse_instance(make_instance(pixels=False, **{keyword: ""}))


def test_bi4_only_sop_class_and_instance() -> None:
    ds = make_dataset(pixels=False)
    for kw in list(ds.dir()):
        if kw not in ("SOPClassUID", "SOPInstanceUID"):
            delattr(ds, kw)
    with pytest.raises(MissingAttribute):
        parse_instance(to_part10(ds))


BAD_UIDS = ["../1.2", "1.2/3", "1\\2", "1.2\x003", "1.02.3", "1.2.a", "1..2", "1.2.",
            ".1.2", " 1.2", "1.2 ", "%2e%2e", "/etc/passwd", "1." + "2" * 63, "",
            "1.2.3\n", "０.１"]


@pytest.mark.parametrize("uid", BAD_UIDS)
def test_bi6_is_valid_uid_rejects(uid: str) -> None:
    assert not is_valid_uid(uid)


@pytest.mark.parametrize("uid", ["0", "1.2.840.10008.1.2.1", "2.25.1234567890",
                                 "1." + "2" * 62])
def test_is_valid_uid_accepts(uid: str) -> None:
    assert is_valid_uid(uid)


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID",
                                     "SOPInstanceUID", "SOPClassUID"])
@pytest.mark.parametrize("uid", ["../1.2", "1.02.3", "1.2.a", "1." + "2" * 70, "1/2",
                                 "1.2\\3", "\\1.2"])
def test_bi6_invalid_uid_in_instance(keyword: str, uid: str) -> None:
    ds = make_dataset(pixels=False)
    setattr(ds, keyword, uid)
    raw = to_part10(ds)
    with pytest.raises(InvalidUID) as exc:
        parse_instance(raw)
    assert keyword in exc.value.reason and uid not in exc.value.reason  # PHI-free


def test_dataset_sop_instance_uid_wins_over_media_storage() -> None:
    """A meta/dataset UID mismatch is accepted; the dataset's UID is authoritative."""
    ds = make_dataset(pixels=False)
    raw = to_part10(ds)
    ds.SOPInstanceUID = ds.SOPInstanceUID[:-1] + ("1" if ds.SOPInstanceUID[-1] != "1"
                                                  else "2")
    other = to_part10(ds)  # meta updated too; splice the old meta in front
    meta_end = structure.walk_file(raw).dataset_offset
    parsed = parse_instance(raw[:meta_end] + other[structure.walk_file(other).dataset_offset:])
    assert parsed.sop_instance_uid == ds.SOPInstanceUID


# --- BI-7: truncation ------------------------------------------------------------------

def _top_level_boundaries(raw: bytes) -> set[int]:
    layout = structure.walk_file(raw)
    return {layout.dataset_offset} | {e.end_offset for e in layout.elements}


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_RLE.dcm", "CT_small.dcm",
                                  "SC_rgb_rle_2frame.dcm", "test-SR.dcm"])
def test_bi7_truncated_anywhere(name: str) -> None:
    raw = (DATA / "test_files" / name).read_bytes()
    boundaries = _top_level_boundaries(raw)
    step = max(13, len(raw) // 700)
    cuts = sorted(set(range(0, len(raw), step)) | {len(raw) - 1, len(raw) - 2,
                                                  len(raw) - 8} | {b - 1 for b in boundaries})
    for cut in cuts:
        data = raw[:cut]
        if cut in boundaries and cut > 132:  # a shorter but complete data set
            try:
                parse_instance(data)
            except InstanceError:
                pass
            continue
        with pytest.raises(InvalidDicom):
            parse_instance(data)


def test_bi7_truncated_inside_pixel_data_of_a_file(tmp_path) -> None:
    raw = make_instance(rows=64, columns=64)
    path = tmp_path / "cut.dcm"
    path.write_bytes(raw[:-100])
    with pytest.raises(InvalidDicom):
        parse_instance(str(path))


# --- BI-8: huge lengths ----------------------------------------------------------------

@pytest.mark.parametrize("length", [0xFFFFFFFE, 0xFFFFFFF0, 0x7FFFFFFF, 100_000])
def test_bi8_huge_length_is_refused_without_allocation(length: int) -> None:
    cases = [
        # top level OB
        b"\x09\x00\x10\x10OB\0\0" + struct.pack("<L", length) + b"abcd",
        # inside a defined-length item of an undefined-length sequence
        sq(0x00081115, item(b"\x08\x00\x50\x11UT\0\0" + struct.pack("<L", length)
                            + b"x" * 16, undefined=False) + SEQ_DELIM),
        # sequence item length
        sq(0x00081115, b"\xfe\xff\x00\xe0" + struct.pack("<L", length) + b"\0" * 8
           + SEQ_DELIM),
    ]
    for extra in cases:
        tracemalloc.start()
        started = time.perf_counter()
        try:
            with pytest.raises(InvalidDicom):
                parse_instance(with_extra(extra))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 * 1024 * 1024 and time.perf_counter() - started < 1


def test_bi8_fragment_length_past_end() -> None:
    raw = (DATA / "test_files" / "MR_small_RLE.dcm").read_bytes()
    layout = structure.walk_file(raw)
    pixel = next(e for e in layout.elements if e.tag == 0x7FE00010)
    off = pixel.fragments[1][0] - 4  # length field of the first fragment
    bad = raw[:off] + struct.pack("<L", 0xFFFFFFF0) + raw[off + 4:]
    with pytest.raises(InvalidDicom):
        parse_instance(bad)


# --- BI-9: nesting ---------------------------------------------------------------------

@pytest.mark.parametrize("undefined", [True, False])
def test_bi9_nesting_depth_200_refused(undefined: bool) -> None:
    with pytest.raises(InvalidDicom) as exc:
        parse_instance(with_extra(nested(200, undefined=undefined)))
    assert "nested" in exc.value.reason


def test_bi9_depth_limit_is_exact() -> None:
    parse_instance(with_extra(nested(16)))
    with pytest.raises(InvalidDicom):
        parse_instance(with_extra(nested(17)))
    parse_instance(with_extra(nested(17)), max_depth=17)


def test_bi9_very_deep_never_recursion_error() -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidDicom):
        parse_instance(with_extra(nested(5000)), max_depth=100_000)
    assert time.perf_counter() - started < 5


def test_bi9_deep_private_sequences_implicit_vr() -> None:
    """Private sequences in implicit VR are only recognisable by their item tags."""
    inner = struct.pack("<HHL", 0x0009, 0x1010, 4) + b"LEAF"
    for _ in range(40):
        body = b"\xfe\xff\x00\xe0" + struct.pack("<L", len(inner)) + inner
        inner = struct.pack("<HHL", 0x0009, 0x1011, len(body)) + body
    ds = make_dataset(pixels=False)
    raw = to_part10(ds, "1.2.840.10008.1.2")
    creator = struct.pack("<HHL", 0x0009, 0x0010, 4) + b"ACME"
    with pytest.raises(InvalidDicom):
        parse_instance(raw + creator + inner)


# --- BI-10: undelimited ----------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    sq(0x00081115, item(el(0x00080100, "SH", b"AB") + ITEM_DELIM)),          # no SQ delim
    sq(0x00081115, item(el(0x00080100, "SH", b"AB")) + SEQ_DELIM),           # no item delim
    sq(0x00081115, item(el(0x00080100, "SH", b"AB"))),                       # neither
    sq(0x00081115, b""),
    sq(0x00081115, el(0x00080100, "SH", b"AB") + SEQ_DELIM),                 # not an item
], ids=["no-seq-delim", "no-item-delim", "neither", "empty", "not-item"])
def test_bi10_undelimited_sequences(extra: bytes) -> None:
    with pytest.raises(InvalidDicom):
        parse_instance(with_extra(extra))


def test_bi10_encapsulated_pixel_data_without_delimiter() -> None:
    raw = make_encapsulated([b"\xff\xd8frame1\xff\xd9", b"\xff\xd8frame2\xff\xd9"],
                            "1.2.840.10008.1.2.4.50", bits_allocated=8)
    assert raw.endswith(SEQ_DELIM)
    parse_instance(raw)
    with pytest.raises(InvalidDicom):
        parse_instance(raw[:-8])
    with pytest.raises(InvalidDicom):  # garbage instead of the delimiter
        parse_instance(raw[:-8] + b"\x10\x00\x10\x00PN\x02\x00AB")


# --- deflate bomb, fuzz ----------------------------------------------------------------

def test_deflated_bomb_is_bounded(monkeypatch) -> None:
    monkeypatch.setattr(structure, "MAX_INFLATED", 1 << 16)
    raw = make_instance("1.2.840.10008.1.2.1.99", pixels=False)
    parse_instance(raw)
    meta = raw[:structure.walk_file(raw).dataset_offset]
    comp = zlib.compressobj(wbits=-15)
    bomb = comp.compress(b"\0" * (1 << 20)) + comp.flush()
    with pytest.raises(InstanceTooLarge):
        parse_instance(meta + bomb)


def test_deflated_file_parses() -> None:
    parsed = parse_instance(str(DATA / "test_files" / "image_dfl.dcm"))
    assert parsed.frames is not None and parsed.frames.needs_decode
    assert parsed.bulk == {}  # inflated offsets are not file offsets


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_RLE.dcm", "CT_small.dcm",
                                  "test-SR.dcm", "chrH31.dcm"])
def test_fuzzed_files_never_raise_anything_but_instance_errors(name: str) -> None:
    path = DATA / ("charset_files" if name.startswith("chr") else "test_files") / name
    raw = bytearray(path.read_bytes())
    rng = random.Random(name)
    for _ in range(150):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(132, min(len(data), 2500))
            data[pos] = rng.choice([0x00, 0xFF, 0xFE, rng.randrange(256)])
        try:
            parse_instance(bytes(data))
        except InstanceError:
            pass
