"""Character-set aware splitting and decoding of text values (BI-28, BI-29).

pydicom splits multi-valued text and person names with ``bytes.split(b"\\\\")`` and
``split(b"=")`` *before* decoding. That is wrong for two families of character sets
used in China and Japan:

* GBK / GB18030: the second byte of a two-byte character may be 0x5C (``\\``) or 0x5E
  (``^``), so a name is cut in the middle of a character;
* ISO 2022 IR 87 / IR 159 (JIS X 0208/0212 designated to G0): every byte of a kanji is
  in 0x21..0x7E, so 0x3D (``=``) and 0x5C occur inside characters.

Here delimiters are only recognised outside multi-byte characters (for ISO 2022: while
G0 holds a single-byte set; PS3.5 §6.1.2.5.3 requires a switch back before delimiters).
Each piece is then decoded with pydicom's escape-sequence aware ``decode_bytes``, except
ISO 2022 IR 58 (GB2312) fragments, which pydicom leaves with their escape sequence.
Decoding never raises: undecodable bytes become U+FFFD and the file is still stored
byte for byte (BI-29).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from pydicom.charset import decode_bytes

BACKSLASH = 0x5C
EQUALS = 0x3D
CARET = 0x5E
#: Characters after which ISO 2022 code extensions reset (pydicom's values).
TEXT_DELIMS = {0x0D, 0x0A, 0x09, 0x0C}
PN_DELIMS = {CARET}
_GB = ("GB18030", "GBK")
_JIS_G0 = ("iso2022_jp", "iso2022_jp_2")


def multibyte_mode(encodings: Sequence[str]) -> str | None:
    """'gb18030' / 'gbk' / 'iso2022' when naive delimiter splitting is unsafe."""
    if not encodings:
        return None
    first = encodings[0]
    if first == "GB18030":
        return "gb18030"
    if first == "GBK":
        return "gbk"
    if any(e in _JIS_G0 for e in encodings):
        return "iso2022"
    return None


def split_on(raw: bytes, sep: int, mode: str | None) -> list[bytes]:
    """Split ``raw`` on the single byte ``sep`` outside multi-byte characters."""
    if mode is None:
        return raw.split(bytes((sep,)))
    if mode == "iso2022":
        if 0x1B not in raw:
            return raw.split(bytes((sep,)))
        return _split_iso2022(raw, sep)
    if not any(b >= 0x81 for b in raw):
        return raw.split(bytes((sep,)))
    out: list[bytes] = []
    start = i = 0
    n = len(raw)
    four = mode == "gb18030"
    while i < n:
        b = raw[i]
        if 0x81 <= b <= 0xFE:
            # GB18030 four-byte sequences have a digit as second byte (GB 18030 §5).
            i += 4 if four and i + 1 < n and 0x30 <= raw[i + 1] <= 0x39 else 2
            continue
        if b == sep:
            out.append(raw[start:i])
            start = i + 1
        i += 1
    out.append(raw[start:])
    return out


def _split_iso2022(raw: bytes, sep: int) -> list[bytes]:
    out: list[bytes] = []
    start = i = 0
    n = len(raw)
    g0_multi = False
    while i < n:
        b = raw[i]
        if b == 0x1B:
            # ESC $ @|A|B and ESC $ ( F designate a multi-byte set to G0; ESC ( F a
            # single-byte one; ESC $ ) F / ESC ) F / ESC - F touch G1 only.
            nxt = raw[i + 1:i + 2]
            if nxt == b"$":
                f = raw[i + 2:i + 3]
                if f in (b"@", b"A", b"B"):
                    g0_multi, i = True, i + 3
                    continue
                if f == b"(":
                    g0_multi, i = True, i + 4
                    continue
                i += 4
                continue
            if nxt == b"(":
                g0_multi, i = False, i + 3
                continue
            i += 3 if nxt else 1
            continue
        if g0_multi and 0x21 <= b <= 0x7E:
            i += 2
            continue
        if b == sep:
            out.append(raw[start:i])
            start = i + 1
        i += 1
    out.append(raw[start:])
    return out


_GB2312_G1 = b"\x1b$)A"
_FRAGMENTS = re.compile(rb"(^[^\x1b]+|\x1b[^\x1b]*)")


#: Python codecs (as pydicom names them) that decode every ASCII byte to itself: with
#: no escape sequence in the value, pydicom decodes with the first one, so plain ASCII
#: needs no call into pydicom (issue 6: ~4 % of a tiny STOW's CPU). ISO 2022 and
#: Japanese sets are left to pydicom.
_ASCII_CODECS = frozenset({
    "iso8859", "latin_1", "iso8859_2", "iso8859_3", "iso8859_4", "iso8859_5", "iso8859_6",
    "iso8859_7", "iso8859_8", "iso8859_9", "iso8859_11", "iso8859_15", "tis_620",
    "iso_ir_126", "iso_ir_127", "iso_ir_138", "iso_ir_144", "iso_ir_148", "iso_ir_166",
    "UTF8", "utf_8",
    # GB18030 and GBK are ASCII in their single-byte range (0x00-0x7F), and pydicom
    # decodes a value without ESC with the first set alone (issue 6, session 8).
    "GB18030", "GBK"})


def ascii_shortcut(encodings: Sequence[str]) -> bool:
    """Whether :func:`decode` decodes an ASCII value without ESC under ``encodings`` as
    ASCII without pydicom (the first character set maps ASCII to itself)."""
    return (encodings[0] if encodings else "iso8859") in _ASCII_CODECS


def decode(raw: bytes, encodings: Sequence[str], delimiters: set[int]) -> str:
    """pydicom's decoding, made total: never raises (BI-29).

    ISO 2022 IR 58 is decoded here: pydicom hands ``ESC $ ) A`` fragments to Python's
    ``iso_ir_58`` codec (plain GB2312), which leaves the escape sequence in the text.
    GB2312 designated to G1 is EUC-CN, so the fragment after the escape is GB2312 bytes.
    """
    if (raw.isascii() and 0x1B not in raw
            and (encodings[0] if encodings else "iso8859") in _ASCII_CODECS):
        return raw.decode("ascii")
    encodings = list(encodings) or ["iso8859"]
    try:
        if _GB2312_G1 in raw and "iso_ir_58" in encodings:
            return "".join(
                frag[4:].decode("gb2312", errors="replace") if frag.startswith(_GB2312_G1)
                else decode_bytes(frag, encodings, delimiters)
                for frag in _FRAGMENTS.findall(raw))
        return decode_bytes(raw, encodings, delimiters)
    except Exception:  # noqa: BLE001 - RAISE validation mode, unknown codec, ...
        return raw.decode("latin-1")


def _strip(raw: bytes) -> bytes:
    return raw.rstrip(b" \x00")


def decode_text_values(raw: bytes, encodings: Sequence[str], multi: bool) -> list[str]:
    """Values of a charset-sensitive text element (SH, LO, UC multi; ST, LT, UT single).

    Trailing spaces (and NULs) are padding and removed; leading spaces of ST/LT/UT are
    significant and kept.
    """
    raw = bytes(raw)
    mode = multibyte_mode(encodings)
    parts = split_on(raw, BACKSLASH, mode) if multi else [raw]
    return [decode(_strip(p), encodings, TEXT_DELIMS) for p in parts]


def decode_pn_values(raw: bytes, encodings: Sequence[str]) -> list[tuple[str, ...]]:
    """Person names as tuples of up to three decoded groups (Alphabetic, Ideographic,
    Phonetic); trailing empty groups removed, so an empty name is ``()``."""
    raw = bytes(raw)
    mode = multibyte_mode(encodings)
    names: list[tuple[str, ...]] = []
    for value in split_on(_strip(raw), BACKSLASH, mode):
        groups = [decode(_strip(g), encodings, PN_DELIMS)
                  for g in split_on(value, EQUALS, mode)[:3]]
        while groups and not groups[-1]:
            groups.pop()
        names.append(tuple(groups))
    return names


def pn_string(groups: tuple[str, ...]) -> str:
    """DICOM PN form ``Alphabetic=Ideographic=Phonetic`` (trailing empties dropped)."""
    return "=".join(groups)
