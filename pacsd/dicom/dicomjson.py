"""DICOM JSON Model (PS3.18 Annex F.2) straight from the walked file layout.

Why not pydicom's ``Dataset.to_json_dict``: it costs ~40 µs per element (the ingest path
must stay at a few ms per instance), it raises on the first odd value (an IS that is not
an integer, a US with an odd length), it reads every binary value into memory to measure
it, it splits GBK/ISO 2022 names at bytes inside characters, and it writes empty
person-name groups. Here, from the :mod:`structure` tree and the raw bytes:

* VRs: explicit VR as encoded; implicit VR (and explicit UN of a known tag, like pydicom)
  from the data dictionary, private tags from pydicom's private dictionary via their
  Private Creator, unknown ones UN (a private value that parses as items is a sequence);
  ``US or SS`` resolved by PixelRepresentation, ``OB or OW`` is OW (PS3.5 §A.1);
* text VRs are decoded with :mod:`pacsd.dicom.text` (BI-28, BI-29);
* DS/IS become JSON numbers; a value that is not a number (or not finite) stays a
  string rather than failing the instance (PS3.18 F.2.3.1 allows strings for DS/IS);
* PN becomes ``{"Alphabetic", "Ideographic", "Phonetic"}`` with empty groups omitted;
* AT becomes 8 upper-case hex digits; OB/OD/OF/OL/OV/OW/UN become InlineBinary; a value
  that cannot be decoded with its VR (wrong length) becomes ``{"vr": "UN",
  "InlineBinary": ...}`` - kept, never dropped, never fatal;
* an empty value has no ``Value`` key; empty values inside a multi-valued element are
  ``null`` (PS3.18 F.2.5);
* group length elements (gggg,0000), file meta (0002,xxxx) and data set trailing padding
  (FFFC,FFFC) are not part of the model and are left out.

Top-level bulk data (pixel data, large binaries) never reaches this module: ``parse.py``
emits their BulkDataURIs from the layout without reading the values.
"""
from __future__ import annotations

import base64
import math
import struct
from functools import lru_cache
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.datadict import private_dictionary_VR

from pacsd.dicom.structure import Element, dict_vr
from pacsd.dicom.text import ascii_shortcut, decode_pn_values, decode_text_values

_MULTI_TEXT = frozenset({"SH", "LO", "UC"})
_SINGLE_TEXT = frozenset({"ST", "LT", "UT"})
_ASCII_TEXT = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
_BINARY = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: struct code and size of the binary numeric VRs (PS3.5 Table 6.2-1).
_NUMERIC = {"US": ("H", 2), "SS": ("h", 2), "UL": ("L", 4), "SL": ("l", 4),
            "SV": ("q", 8), "UV": ("Q", 8), "FL": ("f", 4), "FD": ("d", 8)}
_KNOWN_VRS = (_MULTI_TEXT | _SINGLE_TEXT | _ASCII_TEXT | _BINARY | set(_NUMERIC)
              | {"PN", "DS", "IS", "AT", "SQ", "UR"})
#: LUT descriptors: first value US regardless of PixelRepresentation (PS3.3 C.11.1.1).
_LUT_DESCRIPTORS = frozenset({0x00283002, 0x00281101, 0x00281102, 0x00281103,
                              0x00281221, 0x00281222, 0x00281223})
_INT64 = 1 << 63
DEFAULT_ENCODINGS = ["iso8859"]


def skip_tag(tag: int) -> bool:
    """Elements that are not part of the DICOM JSON Model (see module docstring)."""
    return (tag & 0xFFFF) == 0 or (tag >> 16) in (0x0002, 0xFFFC)


def charset_values(buf, elements: list[Element]) -> list[str] | None:
    """Raw (0008,0005) values of a data set (None when absent)."""
    for el in elements:
        if el.tag == 0x00080005 and el.kind == "value":
            raw = bytes(buf[el.value_offset:el.value_offset + el.value_length])
            return [v.strip(" \x00") for v in raw.decode("latin-1").split("\\")]
        if el.tag > 0x00080005:
            break
    return None


def encodings_for(values: list[str] | None, parent: list[str]) -> list[str]:
    """Python codecs for a data set's (0008,0005); unknown terms decode as default
    with replacement characters instead of failing (BI-29)."""
    if values is None:
        return parent
    if not any(values):
        return DEFAULT_ENCODINGS
    try:
        return convert_encodings(list(values))
    except Exception:  # noqa: BLE001 - RAISE validation mode or garbage
        return DEFAULT_ENCODINGS


#: DICOM JSON keys (8 upper-case hex digits) of the tags seen, formatted once; bounded,
#: since private tags are the sender's choice.
_KEYS: dict[int, str] = {}
_KEYS_MAX = 1 << 15


def _key(tag: int) -> str:
    key = _KEYS.get(tag)
    if key is None:
        key = f"{tag:08X}"
        if len(_KEYS) < _KEYS_MAX:
            _KEYS[tag] = key
    return key


class JsonBuilder:
    """Builds DICOM JSON objects from :class:`Element` trees over one buffer."""

    def __init__(self, buf, little: bool) -> None:
        self.buf = buf
        self.little = little
        self.endian = "<" if little else ">"

    def dataset(self, elements: list[Element], encodings: list[str],
                context: dict[str, int | None], skip: frozenset[int] = frozenset()
                ) -> dict[str, Any]:
        """JSON object of one data set; ``context`` carries PixelRepresentation down to
        items (as pydicom propagates it)."""
        buf = self.buf
        enc = encodings_for(charset_values(buf, elements), encodings)
        ctx = dict(context)
        creators: dict[tuple[int, int], str] = {}
        for el in elements:
            tag = el.tag
            if tag == 0x00280103 and el.value_length == 2:
                ctx["pr"] = struct.unpack_from(self.endian + "H", buf, el.value_offset)[0]
            elif tag & 0x10000 and 0x10 <= (tag & 0xFFFF) <= 0xFF:
                raw = bytes(buf[el.value_offset:el.value_offset + el.value_length])
                creators[(tag >> 16, tag & 0xFF)] = raw.decode("latin-1").strip(" \x00")
        # One test per value, whether the first character set decodes ASCII as ASCII
        # (text.ascii_shortcut): plain values then skip the character-set machinery.
        ascii_ok = ascii_shortcut(enc)
        keys = _KEYS
        out: dict[str, Any] = {}
        element = self.element
        for el in elements:
            tag = el.tag
            # skip_tag: group length, file meta, trailing padding
            if not tag & 0xFFFF or (tag >> 16) in (0x0002, 0xFFFC) or tag in skip:
                continue
            key = keys.get(tag) or _key(tag)
            vr = el.vr
            if el.kind != "value" or vr is None or vr == "UN":
                out[key] = element(el, enc, ctx, creators)
                continue
            # Explicitly encoded value (the usual element): no dictionary lookup.
            off = el.value_offset
            raw = bytes(buf[off:off + el.value_length])
            out[key] = self._value(vr, raw, enc, ascii_ok)
        return out

    def element(self, el: Element, enc: list[str], ctx: dict[str, int | None],
                creators: dict[tuple[int, int], str]) -> dict[str, Any]:
        vr = self.vr(el, ctx, creators)
        if el.kind == "sq":
            out: dict[str, Any] = {"vr": "SQ"}
            if el.items:
                out["Value"] = [self.dataset(item, enc, ctx) for item in el.items]
            return out
        if el.kind == "frag":  # undefined-length non-sequence data nested in an item
            raw = bytes(self.buf[el.value_offset:el.value_offset + el.value_length])
            return _binary("OB", raw)
        raw = bytes(self.buf[el.value_offset:el.value_offset + el.value_length])
        return self._value(vr, raw, enc, ascii_shortcut(enc))

    def _value(self, vr: str, raw: bytes, enc: list[str], ascii_ok: bool
               ) -> dict[str, Any]:
        """The JSON object of a value element of VR ``vr`` (resolved) and bytes ``raw``."""
        if vr not in _KNOWN_VRS:
            return _binary("UN", raw)
        if not raw:
            return {"vr": vr}
        if vr in _BINARY:
            return _binary(vr, raw)
        if ascii_ok and vr in _ASCII_VALUE and raw.isascii() and 0x1B not in raw:
            values = _ASCII_VALUE[vr](raw)
        else:
            try:
                values = self.values(vr, raw, enc)
            except (struct.error, ValueError):
                return _binary("UN", raw)
            if values is None:  # binary
                return _binary(vr, raw)
        for v in values:
            if v is not None:
                return {"vr": vr, "Value": values}
        return {"vr": vr}

    def vr(self, el: Element, ctx: dict[str, int | None],
           creators: dict[tuple[int, int], str]) -> str:
        vr = el.vr
        if el.kind == "sq":
            return "SQ"
        if vr is None or vr == "UN":
            tag = el.tag
            found = dict_vr(tag)
            if found is None and (tag >> 16) & 1:
                creator = creators.get((tag >> 16, (tag >> 8) & 0xFF))
                found = _private_vr(tag, creator) if creator else None
            if found is None and (tag >> 16) & 1 and 0x10 <= (tag & 0xFFFF) <= 0xFF:
                found = "LO"  # Private Creator (PS3.5 §7.8.1)
            if found is None and vr is None and (tag & 0xFFFF) == 0:
                found = "UL"  # group length, implied before PS3.5 2008
            vr = found or "UN"
        if " or " in vr:
            vr = self._resolve(el.tag, vr, ctx)
        return vr

    @staticmethod
    def _resolve(tag: int, vr: str, ctx: dict[str, int | None]) -> str:
        if vr == "US or SS":
            return "US" if tag in _LUT_DESCRIPTORS or not ctx.get("pr") else "SS"
        # 'OB or OW' only reaches here implicitly encoded, where Pixel Data and overlay
        # data are OW (PS3.5 §A.1); 'US or OW' / 'US or SS or OW' LUT data: 16-bit words.
        return "OW"

    def values(self, vr: str, raw: bytes, enc: list[str]) -> list[Any] | None:
        if vr in _BINARY:
            return None
        if vr == "PN":
            return [_pn_json(groups) for groups in decode_pn_values(raw, enc)]
        if vr in _MULTI_TEXT or vr in _SINGLE_TEXT:
            return [v if v != "" else None
                    for v in decode_text_values(raw, enc, vr in _MULTI_TEXT)]
        if vr in _ASCII_TEXT:
            return [p.decode("latin-1").strip(" \x00") or None for p in raw.split(b"\\")]
        if vr == "UR":
            return [raw.decode("latin-1").rstrip(" \x00") or None]
        if vr in ("DS", "IS"):
            return [number(p.decode("latin-1").strip(" \x00"), vr)
                    for p in raw.split(b"\\")]
        if vr == "AT":
            n = len(raw) // 4
            if len(raw) % 4:
                raise ValueError("AT length")
            words = struct.unpack(f"{self.endian}{2 * n}H", raw)
            return [f"{words[i]:04X}{words[i + 1]:04X}" for i in range(0, 2 * n, 2)]
        code, size = _NUMERIC[vr]
        if len(raw) % size:
            raise ValueError("numeric length")
        nums = struct.unpack(f"{self.endian}{len(raw) // size}{code}", raw)
        if vr in ("FL", "FD"):
            return [_finite_or_str(f) for f in nums]
        return list(nums)


# --- plain ASCII values (issue 6 ingest CPU) -------------------------------------------
#
# A value of only ASCII bytes without ESC, in a data set whose first character set
# decodes ASCII as ASCII (text.ascii_shortcut), decodes exactly as JsonBuilder.values
# would: text.decode takes its ASCII shortcut for every piece and splitting on "\\" and
# "=" is the plain bytes split in every multibyte mode (no byte >= 0x80, no ESC).

def _ascii_text(raw: bytes) -> list[Any]:  # AE AS CS DA DT TM UI (latin-1 = ASCII here)
    if b"\\" not in raw:
        return [raw.decode("ascii").strip(" \x00") or None]
    return [p.decode("ascii").strip(" \x00") or None for p in raw.split(b"\\")]


def _multi_text(raw: bytes) -> list[Any]:  # SH LO UC: trailing padding only
    if b"\\" not in raw:
        return [raw.rstrip(b" \x00").decode("ascii") or None]
    return [p.rstrip(b" \x00").decode("ascii") or None for p in raw.split(b"\\")]


def _single_text(raw: bytes) -> list[Any]:  # ST LT UT: one value, leading spaces kept
    return [raw.rstrip(b" \x00").decode("ascii") or None]


def _pn_ascii(raw: bytes) -> list[Any]:
    out = []
    for value in raw.rstrip(b" \x00").split(b"\\"):
        groups = [g.rstrip(b" \x00").decode("ascii") for g in value.split(b"=")[:3]]
        while groups and not groups[-1]:
            groups.pop()
        out.append(_pn_json(tuple(groups)))
    return out


def _ds(raw: bytes) -> list[Any]:
    return [number(p.decode("ascii").strip(" \x00"), "DS") for p in raw.split(b"\\")]


def _is(raw: bytes) -> list[Any]:
    return [number(p.decode("ascii").strip(" \x00"), "IS") for p in raw.split(b"\\")]


_ASCII_VALUE = {
    **{vr: _ascii_text for vr in _ASCII_TEXT},
    **{vr: _multi_text for vr in _MULTI_TEXT},
    **{vr: _single_text for vr in _SINGLE_TEXT},
    "PN": _pn_ascii, "DS": _ds, "IS": _is,
}


@lru_cache(maxsize=4096)
def _private_vr(tag: int, creator: str) -> str | None:
    try:
        return private_dictionary_VR(tag, creator)
    except KeyError:
        return None


def _binary(vr: str, raw: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {"vr": vr}
    if raw:
        out["InlineBinary"] = base64.b64encode(raw).decode("ascii")
    return out


def _pn_json(groups: tuple[str, ...]) -> dict[str, str] | None:
    obj = {k: g for k, g in zip(("Alphabetic", "Ideographic", "Phonetic"), groups) if g}
    return obj or None


def number(s: str, vr: str) -> Any:
    """JSON number for a DS/IS string; the string itself when it is not a number."""
    if s == "":
        return None
    try:
        if vr == "IS":
            n: Any = int(s)
        else:
            f = float(s)
            if not math.isfinite(f):
                return s
            n = int(f) if f.is_integer() and not any(c in s for c in ".eE") else f
        if isinstance(n, int) and not -_INT64 <= n < _INT64:
            return s
        return n
    except ValueError:
        if vr == "IS":  # "12.0" written by some devices
            try:
                f = float(s)
                if f.is_integer() and math.isfinite(f) and abs(f) < _INT64:
                    return int(f)
            except ValueError:
                pass
        return s


def _finite_or_str(f: float) -> Any:
    if math.isfinite(f):
        return f
    return "NaN" if math.isnan(f) else ("Infinity" if f > 0 else "-Infinity")
