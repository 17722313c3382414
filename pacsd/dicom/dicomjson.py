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
from pacsd.dicom.text import decode_pn_values, decode_text_values

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
        enc = encodings_for(charset_values(self.buf, elements), encodings)
        ctx = dict(context)
        creators: dict[tuple[int, int], str] = {}
        for el in elements:
            if el.tag == 0x00280103 and el.value_length == 2:
                ctx["pr"] = struct.unpack_from(self.endian + "H", self.buf,
                                               el.value_offset)[0]
            elif (el.tag >> 16) & 1 and 0x10 <= (el.tag & 0xFFFF) <= 0xFF:
                raw = bytes(self.buf[el.value_offset:el.value_offset + el.value_length])
                creators[(el.tag >> 16, el.tag & 0xFF)] = raw.decode(
                    "latin-1").strip(" \x00")
        out: dict[str, Any] = {}
        for el in elements:
            if skip_tag(el.tag) or el.tag in skip:
                continue
            out[f"{el.tag:08X}"] = self.element(el, enc, ctx, creators)
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
        if vr not in _KNOWN_VRS:
            return _binary("UN", raw)
        if not raw:
            return {"vr": vr}
        try:
            values = self.values(vr, raw, enc)
        except (struct.error, ValueError):
            return _binary("UN", raw)
        if values is None:  # binary
            return _binary(vr, raw)
        out = {"vr": vr}
        if any(v is not None for v in values):
            out["Value"] = values
        return out

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
