"""Plain ASCII text decodes without pydicom (issue 6) and exactly as pydicom's
``decode_bytes`` does for every codec the shortcut takes; anything else still goes
through pydicom (escape sequences, non-ASCII bytes, other character sets)."""
from __future__ import annotations

import codecs

import pytest
from pydicom.charset import decode_bytes

from pacsd.dicom import text

ASCII_NO_ESC = bytes(b for b in range(128) if b != 0x1B)


@pytest.mark.parametrize("codec", sorted(text._ASCII_CODECS))
def test_every_shortcut_codec_maps_ascii_to_itself(codec):
    name = {"UTF8": "utf_8"}.get(codec, codec)
    codecs.lookup(name)  # a real Python codec
    assert ASCII_NO_ESC.decode(name) == ASCII_NO_ESC.decode("ascii")
    assert text.decode(ASCII_NO_ESC, [codec], text.TEXT_DELIMS) == decode_bytes(
        ASCII_NO_ESC, [codec], text.TEXT_DELIMS)


@pytest.mark.parametrize("raw,encodings", [
    (b"Doe^John", ["iso8859"]),
    (b"Doe^John", ["latin_1", "iso2022_jp"]),
    (b"M\xfcller^Hans", ["latin_1"]),                      # non-ASCII: pydicom
    (b"\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B", ["iso8859", "iso2022_jp"]),  # escapes: pydicom
    (b"\xd5\xc5^\xc8\xfd", ["GB18030"]),                    # other set: pydicom
    (b"Yamada^Tarou", ["shift_jis"]),                       # not in the shortcut
    (b"plain", []),
])
def test_decode_equals_pydicom(raw, encodings):
    expected = decode_bytes(raw, encodings or ["iso8859"], text.TEXT_DELIMS)
    assert text.decode(raw, encodings, text.TEXT_DELIMS) == expected


def test_shortcut_only_for_ascii_without_escape(monkeypatch):
    calls = []
    real = text.decode_bytes
    monkeypatch.setattr(text, "decode_bytes",
                        lambda *a: calls.append(a) or real(*a))
    text.decode(b"ABC", ["iso8859"], text.TEXT_DELIMS)
    assert calls == []
    text.decode(b"\x1b(BABC", ["iso8859", "iso2022_jp"], text.TEXT_DELIMS)
    text.decode(b"\xe9", ["latin_1"], text.TEXT_DELIMS)
    text.decode(b"ABC", ["shift_jis"], text.TEXT_DELIMS)
    assert len(calls) == 3
