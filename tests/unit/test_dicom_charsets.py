"""Person names and text in every character set the archive meets (BI-28, BI-29).

Names are written as raw encoded bytes with the matching SpecificCharacterSet, then
checked both as index values ("Alpha=Ideographic=Phonetic") and as DICOM JSON PN
objects. The synthetic names deliberately contain characters whose encoding includes the
delimiter bytes 0x5C (\\), 0x5E (^) and 0x3D (=), which naive splitting (pydicom's)
cuts in half.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import orjson
import pydicom
import pytest

from pacsd.dicom import parse_instance
from pacsd.dicom.testing import make_dataset, to_part10
from pacsd.dicom.text import decode_pn_values, split_on

CHARSETS = Path(pydicom.__file__).parent / "data" / "charset_files"
PLACEHOLDER = b"PLACEHOLDER^NAME^X"  # 18 bytes, replaced by the raw encoded name


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def instance_with_name(charset: str | None, raw_name: bytes, **attrs) -> bytes:
    """Part 10 bytes whose PatientName value is exactly ``raw_name``."""
    kwargs = {"SpecificCharacterSet": charset} if charset else {}
    ds = make_dataset(pixels=False, PatientName=PLACEHOLDER.decode(), **kwargs, **attrs)
    raw = to_part10(ds)
    value = raw_name + (b" " if len(raw_name) % 2 else b"")
    old = b"PN" + len(PLACEHOLDER).to_bytes(2, "little") + PLACEHOLDER
    assert raw.count(old) == 1
    return raw.replace(old, b"PN" + len(value).to_bytes(2, "little") + value)


def name_of(raw: bytes) -> tuple[str, list]:
    parsed = parse_instance(raw)
    meta = orjson.loads(parsed.metadata)
    return parsed.patient["PatientName"], meta["00100010"]["Value"]


@pytest.mark.parametrize("filename, expected", [
    ("chrH31.dcm", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ("chrH32.dcm", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"),
    ("chrX1.dcm", "Wang^XiaoDong=王^小東"),
    ("chrX2.dcm", "Wang^XiaoDong=王^小东"),
    ("chrI2.dcm", "Hong^Gildong=洪^吉洞=홍^길동"),
    ("chrRuss.dcm", "Люкceмбypг"),
    ("chrGreek.dcm", "Διονυσιος"),
    ("chrArab.dcm", "قباني^لنزار"),
    ("chrHbrw.dcm", "שרון^דבורה"),
    ("chrFren.dcm", "Buc^Jérôme"),
    ("chrGerm.dcm", "Äneas^Rüdiger"),
])
def test_pydicom_charset_files(filename: str, expected: str) -> None:
    name, values = name_of((CHARSETS / filename).read_bytes())
    assert name == expected
    groups = expected.split("=")
    keys = ("Alphabetic", "Ideographic", "Phonetic")
    assert values[0] == dict(zip(keys, groups))


def test_korean_multi_valued_file_is_decoded() -> None:
    parsed = parse_instance((CHARSETS / "chrKoreanMulti.dcm").read_bytes())
    assert parsed.patient["PatientName"] == "김희중"
    assert parsed.specific_character_set == "\\ISO 2022 IR 149"


def test_gb18030_ideographic_group_with_four_byte_character() -> None:
    raw = "Wang^XiaoDong=王^小东𠀀".encode("gb18030")
    name, values = name_of(instance_with_name("GB18030", raw))
    assert name == "Wang^XiaoDong=王^小东𠀀"
    assert values == [{"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小东𠀀"}]


@pytest.mark.parametrize("charset", ["GBK", "GB18030"])
def test_gbk_trail_bytes_equal_to_delimiters_do_not_split(charset: str) -> None:
    # '乗' is 81 5C and '區' 85 5E in GBK/GB18030: a backslash and a caret trail byte
    name = "Qu^Cheng=乗^區"
    raw = name.encode("gbk")
    assert b"\x81\x5c" in raw and b"\x85\x5e" in raw
    parsed_name, values = name_of(instance_with_name(charset, raw))
    assert parsed_name == name
    assert values == [{"Alphabetic": "Qu^Cheng", "Ideographic": "乗^區"}]


def test_iso_2022_ir_58_simplified_chinese() -> None:
    # PS3.5 Annex K.2 style: G1 designation repeated after each delimiter
    esc = b"\x1b$)A"
    raw = (b"Zhang^XiaoDong=" + esc + "张".encode("gb2312") + b"^" + esc
           + "小东".encode("gb2312") + b"=")
    name, values = name_of(instance_with_name("\\ISO 2022 IR 58", raw))
    assert name == "Zhang^XiaoDong=张^小东"
    assert values == [{"Alphabetic": "Zhang^XiaoDong", "Ideographic": "张^小东"}]


def test_iso_2022_ir_87_kanji_with_delimiter_bytes() -> None:
    # 予 is JIS 4D 3D (contains '='), 俑 50 5C (contains '\'), 五 38 5E (contains '^')
    def jis(text: str) -> bytes:
        return b"\x1b$B" + text.encode("iso2022_jp")[3:-3] + b"\x1b(B"
    raw = b"Go^Yo=" + jis("五") + b"^" + jis("予俑") + b"=" + "ｺﾞ".encode("shift_jis")
    name, values = name_of(instance_with_name("ISO 2022 IR 13\\ISO 2022 IR 87", raw))
    assert name == "Go^Yo=五^予俑=ｺﾞ"
    assert values == [{"Alphabetic": "Go^Yo", "Ideographic": "五^予俑", "Phonetic": "ｺﾞ"}]


def test_utf8_and_latin1_and_cyrillic_names() -> None:
    for charset, name, codec in [("ISO_IR 192", "Ωmega^Zoë=王^小明", "utf-8"),
                                 ("ISO_IR 100", "Müller^Jörg", "latin-1"),
                                 ("ISO_IR 144", "Иванов^Иван", "iso8859_5"),
                                 ("ISO_IR 126", "Διονυσιος", "iso8859_7")]:
        parsed_name, _ = name_of(instance_with_name(charset, name.encode(codec)))
        assert parsed_name == name


def test_multi_valued_person_names_and_empty_groups() -> None:
    raw = "=王^小明\\Doe^John".encode("utf-8")
    raw_file = instance_with_name("ISO_IR 192", raw)
    parsed = parse_instance(raw_file)
    values = orjson.loads(parsed.metadata)["00100010"]["Value"]
    assert values == [{"Ideographic": "王^小明"}, {"Alphabetic": "Doe^John"}]
    assert parsed.patient["PatientName"] == "=王^小明"


def test_invalid_utf8_and_unknown_charset_never_fail() -> None:
    """BI-29: stored as-is, decoded with replacement characters, no error."""
    name, _ = name_of(instance_with_name("ISO_IR 192", b"Bad^\xff\xfeName"))
    assert name.startswith("Bad^") and "\ufffd" in name
    name, _ = name_of(instance_with_name("ISO_IR 999", b"Plain^Name"))
    assert name == "Plain^Name"


def test_other_text_vrs_use_the_character_set() -> None:
    ds = make_dataset(pixels=False, SpecificCharacterSet="GB18030",
                      StudyDescription="胸部^CT", InstitutionName="医院")
    parsed = parse_instance(to_part10(ds))
    assert parsed.study["StudyDescription"] == "胸部^CT"
    assert parsed.series["InstitutionName"] == "医院"


def test_split_on_helpers() -> None:
    gbk = "乗\\a".encode("gbk")  # 81 5C 5C 61
    assert split_on(gbk, 0x5C, "gbk") == ["乗".encode("gbk"), b"a"]
    assert split_on(gbk, 0x5C, None) == [b"\x81", b"", b"a"]  # what naive code does
    assert decode_pn_values(b"A^B=\\C", ["iso8859"]) == [("A^B",), ("C",)]
