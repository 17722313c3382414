"""Bounded structural walk of a Part 10 file before anything else touches it.

pydicom trusts declared lengths: with ``defer_size`` it seeks past a value without
noticing the file ends early, inside sequences it ``read()``s the declared length (a
0xFFFFFFFE length allocates 4 GiB), and it recurses once per nesting level. So ingest
first walks every element header itself over an mmap (no value is copied, nothing is
allocated from a declared length) and refuses, with :class:`~pacsd.errors.InvalidDicom`:

* no 128-byte preamble + ``DICM`` or no File Meta TransferSyntaxUID (BI-1, BI-2; files
  without Part-10 meta are rejected, not guessed at);
* any element, item or fragment whose value runs past its container or the end of the
  file, i.e. truncation anywhere and huge lengths (BI-7, BI-8);
* sequences nested deeper than ``max_depth`` (BI-9);
* undefined-length sequences, items or encapsulated pixel data never delimited (BI-10).

Only after the walk succeeds are values handed to pydicom, from bounded slices. The walk
also records where each top-level value and each pixel data fragment lies in the file:
those offsets become ``ParsedInstance.bulk`` and the frame index (R-A1 frames).
The VR rules mirror pydicom's reader (explicit/implicit switch inside sequences, UN with
undefined length is a sequence, PS3.5 §6.2.2) so that both see the same structure.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

from pydicom.datadict import dictionary_VR
from pydicom.uid import UID

from pacsd.errors import InstanceTooLarge, InvalidDicom

ITEM = 0xFFFEE000
ITEM_DELIM = 0xFFFEE00D
SEQ_DELIM = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF

#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1).
_VR32 = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_VR16 = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())

#: Explicit VR bytes -> (VR, 4-byte length) for the VRs above: one dict lookup per
#: element instead of two set tests and a decode (issue 6 ingest CPU).
_VR_INFO = {**{v: (v.decode(), True) for v in _VR32},
            **{v: (v.decode(), False) for v in _VR16}}
_HDR = {True: struct.Struct("<HHL").unpack_from, False: struct.Struct(">HHL").unpack_from}
_U16 = {True: struct.Struct("<H").unpack_from, False: struct.Struct(">H").unpack_from}
_U32 = {True: struct.Struct("<L").unpack_from, False: struct.Struct(">L").unpack_from}

#: Deflated data sets expand at most this much before we call them a bomb (BI-16 class).
MAX_INFLATED = 1 << 30


class _DepthExceeded(InvalidDicom):
    """Sequences are nested too deeply (BI-9)."""


@dataclass(slots=True)
class Element:
    """One top-level element as laid out in the (possibly inflated) data set buffer."""

    tag: int
    vr: str | None          # explicit VR as encoded; None when implicitly encoded
    length: int             # declared length, UNDEFINED for undefined length
    value_offset: int       # first byte of the value
    value_length: int       # defined length, or bytes up to (not incl.) the delimiter
    end_offset: int         # first byte after the element (after its delimiter)
    implicit: bool
    kind: str = "value"     # "value" | "sq" | "frag" (items of raw bytes, e.g. encapsulated)
    fragments: list[tuple[int, int]] | None = None  # (value offset, length) of each item
    items: list[list["Element"]] | None = None       # data sets of a sequence


@dataclass(slots=True)
class Layout:
    """Result of :func:`walk_file`."""

    transfer_syntax_uid: str
    media_storage_sop_instance_uid: str | None
    implicit: bool
    little: bool
    deflated: bool
    dataset_offset: int                 # file offset where the data set starts
    buffer: object                      # mmap/bytes the element offsets refer to
    elements: list[Element] = field(default_factory=list)


@lru_cache(maxsize=4096)
def dict_vr(tag: int) -> str | None:
    """Dictionary VR of a public tag (incl. repeating groups), None when unknown."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _meta_text(buf, el: Element) -> str:
    raw = bytes(buf[el.value_offset:el.value_offset + el.value_length])
    return raw.decode("latin-1").strip("\x00 ")


def walk_file(buf, *, max_depth: int = 16) -> Layout:
    """Validate the structure of the Part 10 bytes in ``buf`` (mmap or bytes).

    Returns the :class:`Layout` of the top-level data set. For deflated transfer syntaxes
    the data set is inflated (bounded by :data:`MAX_INFLATED`) and the offsets refer to
    ``Layout.buffer``, not to the file.
    """
    size = len(buf)
    if size < 132 or buf[128:132] != b"DICM":
        raise InvalidDicom("Not a DICOM Part 10 file (no preamble and DICM prefix)")
    # File Meta Information: always explicit VR little endian, group 0002 (PS3.10 §7.1).
    meta: list[Element] = []
    pos = _walk_dataset(buf, 132, size, False, True, 0, max_depth, False, meta, meta=True)
    ts = media_sop = None
    for el in meta:
        if el.tag == 0x00020010 and el.kind == "value":
            ts = _meta_text(buf, el)
        elif el.tag == 0x00020003 and el.kind == "value":
            media_sop = _meta_text(buf, el) or None
    if not ts:
        raise InvalidDicom("File Meta Information has no TransferSyntaxUID")
    if not _valid_ts(ts):
        raise InvalidDicom("TransferSyntaxUID is not a valid UID")
    implicit = ts == "1.2.840.10008.1.2"
    little = ts != "1.2.840.10008.1.2.2"
    deflated = ts == "1.2.840.10008.1.2.1.99"
    layout = Layout(ts, media_sop, implicit, little, deflated, pos, buf)
    data, start, end = buf, pos, size
    if deflated:
        data = _inflate(buf, pos)
        layout.buffer = data
        start, end = 0, len(data)
    _walk_dataset(data, start, end, implicit, little, 0, max_depth, False,
                  layout.elements, top=True)
    return layout


@lru_cache(maxsize=256)
def _valid_ts(ts: str) -> bool:
    """pydicom's UID validity of a TransferSyntaxUID, cached (a few values recur)."""
    return UID(ts).is_valid


def _inflate(buf, pos: int) -> bytes:
    """Inflate a deflated data set (PS3.5 §A.5) with an output bound (bomb guard)."""
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = d.decompress(bytes(buf[pos:]), MAX_INFLATED + 1)
    except zlib.error as exc:
        raise InvalidDicom("Deflated data set is corrupt") from exc
    if len(out) > MAX_INFLATED:
        raise InstanceTooLarge("Deflated data set expands beyond the configured limit")
    return out


def _looks_implicit(buf, pos: int, end: int) -> bool:
    """pydicom's test: the 2 bytes after the first tag are not upper-case letters."""
    if pos + 6 > end:
        return False
    a, b = buf[pos + 4], buf[pos + 5]
    return not (0x40 < a < 0x5B and 0x40 < b < 0x5B)


def _walk_dataset(buf, pos: int, end: int, implicit: bool, little: bool, depth: int,
                  max_depth: int, in_undefined_item: bool, record: list,
                  *, top: bool = False, meta: bool = False) -> int:
    """Walk the elements of one data set in ``buf[pos:end]``; return the end offset.

    ``in_undefined_item``: the data set is an undefined-length item and must end with an
    Item Delimitation Item before ``end`` (BI-10).
    """
    if not meta and pos < end and (top or not implicit):
        # Same heuristic as pydicom: writers switch to implicit VR inside sequences, and
        # some files declare the wrong VR encoding for the whole data set.
        implicit = _looks_implicit(buf, pos, end)
    hdr = _HDR[little]
    hdr16 = _U16[little]
    len32 = _U32[little]
    vr_info = _VR_INFO
    while True:
        if pos >= end:
            if in_undefined_item:
                raise InvalidDicom("Undefined-length item is not delimited")
            return pos
        if pos + 8 > end:
            raise InvalidDicom("Data set is truncated inside an element header")
        group, elem, length = hdr(buf, pos)
        tag = group << 16 | elem
        if meta and group != 0x0002:
            return pos
        if group == 0xFFFE:
            if tag == ITEM_DELIM and in_undefined_item:
                return pos + 8
            raise InvalidDicom("Unexpected item or delimiter tag inside a data set")
        vr: str | None = None
        elem_implicit = implicit
        if implicit:
            start = pos + 8
        else:
            vrb = bytes(buf[pos + 4:pos + 6])
            info = vr_info.get(vrb)
            if info is not None and info[1]:
                if pos + 12 > end:
                    raise InvalidDicom("Data set is truncated inside an element header")
                length = len32(buf, pos + 8)[0]
                start = pos + 12
                vr = info[0]
            elif info is not None:
                length = hdr16(buf, pos + 6)[0]
                start = pos + 8
                vr = info[0]
            elif b"AA" <= vrb <= b"ZZ":
                length = hdr16(buf, pos + 6)[0]
                start = pos + 8
                vr = vrb.decode("latin-1")
            else:  # pydicom's assume_implicit_vr_switch: an implicitly encoded element
                start = pos + 8
                elem_implicit = True
        el = Element(tag, vr, length, start, length, start + length, elem_implicit)
        if length == UNDEFINED:
            is_sq = _undefined_is_sq(buf, tag, vr, start, end, little)
            if is_sq:
                _check_depth(depth + 1, max_depth)
                el.kind = "sq"
                # UN of undefined length is implicit VR LE inside (PS3.5 §6.2.2)
                items_implicit = elem_implicit or vr == "UN"
                el.items = []
                after, delim = _walk_items(buf, start, end, items_implicit, little,
                                           depth + 1, max_depth, True, el.items)
            else:
                el.kind = "frag"
                el.fragments, after, delim = _walk_fragments(buf, start, end, little)
            el.value_length = delim - start
            el.end_offset = after
        else:
            if start + length > end:
                raise InvalidDicom("An element's length runs past the end of its data")
            if vr == "SQ" or (vr is None and dict_vr(tag) == "SQ"):
                _check_depth(depth + 1, max_depth)
                el.kind = "sq"
                el.items = []
                _walk_items(buf, start, start + length, elem_implicit, little,
                            depth + 1, max_depth, False, el.items)
            elif (vr is None or vr == "UN") and length >= 8 and not meta:
                # Private (or UN-encoded) data that pydicom may parse as a sequence from
                # its private dictionary: bound its nesting too, but stay lenient about
                # bytes that merely look like an item.
                if dict_vr(tag) == "SQ" or hdr(buf, start)[:2] == (0xFFFE, 0xE000):
                    items: list[list[Element]] = []
                    try:
                        _walk_items(buf, start, start + length,
                                    True if vr else elem_implicit, little, depth + 1,
                                    max_depth, False, items)
                        _check_depth(depth + 1, max_depth)
                        el.kind, el.items = "sq", items
                    except _DepthExceeded:
                        raise
                    except InvalidDicom:
                        pass
        record.append(el)
        pos = el.end_offset


def _check_depth(depth: int, max_depth: int) -> None:
    if depth > max_depth:
        raise _DepthExceeded(f"Sequences are nested deeper than {max_depth} levels")


def _undefined_is_sq(buf, tag: int, vr: str | None, start: int, end: int,
                     little: bool) -> bool:
    """Decide like pydicom whether an undefined-length value is a sequence."""
    if tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):
        return False
    if vr in ("SQ", "UN"):
        return True
    if vr is None:
        dvr = dict_vr(tag)
        if dvr is not None:
            return dvr == "SQ"
        if start + 4 <= end:
            fmt = "<HH" if little else ">HH"
            return struct.unpack_from(fmt, buf, start) == (0xFFFE, 0xE000)
    return False


def _walk_items(buf, pos: int, end: int, implicit: bool, little: bool, depth: int,
                max_depth: int, undefined: bool,
                items: list[list[Element]]) -> tuple[int, int]:
    """Walk sequence items in ``buf[pos:end]`` appending each item's elements to
    ``items``; return (end offset, delimiter offset)."""
    hdr = _HDR[little]
    while True:
        if pos >= end and not undefined:
            return pos, pos
        if pos + 8 > end:
            raise InvalidDicom("Sequence is truncated or not delimited")
        group, elem, length = hdr(buf, pos)
        tag = group << 16 | elem
        if tag == SEQ_DELIM:
            if undefined:
                return pos + 8, pos
            raise InvalidDicom("Sequence delimiter inside a defined-length sequence")
        if tag != ITEM:
            raise InvalidDicom("Sequence item expected")
        start = pos + 8
        item: list[Element] = []
        items.append(item)
        if length == UNDEFINED:
            pos = _walk_dataset(buf, start, end, implicit, little, depth, max_depth, True,
                                item)
        else:
            if start + length > end:
                raise InvalidDicom("A sequence item's length runs past its sequence")
            _walk_dataset(buf, start, start + length, implicit, little, depth, max_depth,
                          False, item)
            pos = start + length


def _walk_fragments(buf, pos: int, end: int,
                    little: bool) -> tuple[list[tuple[int, int]], int, int]:
    """Walk encapsulated items (PS3.5 §A.4): (fragments, end offset, delimiter offset).

    The first entry is the Basic Offset Table item. Only headers are read.
    """
    hdr = _HDR[little]
    frags: list[tuple[int, int]] = []
    while True:
        if pos + 8 > end:
            raise InvalidDicom("Encapsulated pixel data is truncated or not delimited")
        group, elem, length = hdr(buf, pos)
        tag = group << 16 | elem
        if tag == SEQ_DELIM:
            return frags, pos + 8, pos
        if tag != ITEM or length == UNDEFINED:
            raise InvalidDicom("Encapsulated pixel data item expected")
        start = pos + 8
        if start + length > end:
            raise InvalidDicom("A pixel data fragment runs past the end of the file")
        frags.append((start, length))
        pos = start + length
