"""parse_instance: corpus behaviour, DICOM JSON correctness, level JSON, index fields.

Bad-input rows (BI-*) live in test_dicom_badinput.py; character sets (BI-28/29) in
test_dicom_charsets.py; frame offsets in test_dicom_frames.py.
"""
from __future__ import annotations

import base64
import os
import time
import tracemalloc
import warnings
from pathlib import Path

import orjson
import pydicom
import pytest
from pydicom.dataset import Dataset

from pacsd.dicom import (INSTANCE_LEVEL_TAGS, SERIES_LEVEL_TAGS, STUDY_LEVEL_TAGS,
                         parse_instance)
from pacsd.dicom.testing import make_dataset, make_instance, to_part10
from pacsd.errors import InstanceError, InvalidDicom
from pacsd.model import BULK_BASE, ParsedInstance

DATA = Path(pydicom.__file__).parent / "data"
CORPUS = sorted(p for p in [*(DATA / "test_files").rglob("*"),
                            *(DATA / "charset_files").glob("*")] if p.is_file())

#: Files of pydicom's corpus that are refused, and why (reported to the lead).
from corpus import REFUSED  # noqa: E402  (shared with the e2e corpus test)


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: str(p.relative_to(DATA)))
def test_corpus_parses_or_raises_instance_error(path: Path) -> None:
    """Every bundled file parses or raises an InstanceError subclass, nothing else."""
    name = path.name
    if name.startswith("DICOMDIR") or (path.suffix in (".txt", ".json", ".dump", ".gz",
                                                       ".icc") or name == "README"):
        with pytest.raises(InstanceError):
            parse_instance(str(path))
        return
    if name in REFUSED:
        with pytest.raises(InstanceError) as exc:
            parse_instance(str(path))
        assert type(exc.value).__name__ == REFUSED[name]
        return
    parsed = parse_instance(str(path))
    assert isinstance(parsed, ParsedInstance)
    meta = orjson.loads(parsed.metadata)
    assert meta["00080018"]["Value"] == [parsed.sop_instance_uid]
    assert list(meta) == sorted(meta)


# --- metadata vs pydicom ---------------------------------------------------------------

def _norm(obj):
    """Normalise DICOM JSON for comparison: numbers as float, stripped strings, empty
    PN groups and empty Values dropped, bulk as a marker."""
    if isinstance(obj, dict) and "vr" in obj:
        vr = str(obj["vr"])
        out = {"vr": vr}
        values = obj.get("Value") or []
        if vr == "SQ":
            if values:
                out["Value"] = [_norm(v) for v in values]
        elif vr == "PN":
            vals = [({k: s for k, s in v.items() if s} or None) if isinstance(v, dict)
                    else v for v in values]
            if any(vals):
                out["Value"] = vals
        elif values:
            vals = []
            for v in values:
                if isinstance(v, str):
                    v = v.strip() or None
                elif isinstance(v, int | float) and not isinstance(v, bool):
                    v = float(v)
                vals.append(v)
            if any(v is not None for v in vals):
                out["Value"] = vals
        if "InlineBinary" in obj:
            out["InlineBinary"] = obj["InlineBinary"]
        if "BulkDataURI" in obj:
            out["BulkDataURI"] = True
        return out
    # group lengths and data set trailing padding are not part of the model
    return {k: _norm(v) for k, v in obj.items()
            if not k.endswith("0000") and not k.startswith("FFFC")}


@pytest.mark.parametrize("name", [
    "CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
    "reportsi.dcm", "test-SR.dcm", "examples_rgb_color.dcm", "liver_1frame.dcm",
    "SC_rgb_small_odd.dcm", "waveform_ecg.dcm",
])
def test_metadata_matches_pydicom_to_json_dict(name: str) -> None:
    path = DATA / "test_files" / name
    mine = _norm(orjson.loads(parse_instance(str(path)).metadata))
    ds = pydicom.dcmread(path)
    theirs = _norm(ds.to_json_dict(bulk_data_threshold=1 << 40,
                                   bulk_data_element_handler=lambda e: "x"))
    # Our top-level binaries over 1024 bytes and Pixel Data are BulkDataURIs (their
    # bytes are checked in test_metadata_bulk_uris_and_offsets_point_at_the_values).
    for key in [k for k, v in mine.items() if v.get("BulkDataURI")]:
        assert mine.pop(key)["vr"] == theirs.pop(key)["vr"]
    assert mine == theirs


def test_encapsulated_pixel_data_is_ob_and_its_bulk_range_ends_before_the_delimiter(
) -> None:
    path = DATA / "test_files" / "rtdose_rle_1frame.dcm"  # file encodes it as OW
    parsed = parse_instance(str(path))
    assert orjson.loads(parsed.metadata)["7FE00010"]["vr"] == "OB"  # PS3.5 A.4
    raw = path.read_bytes()
    off, n = parsed.bulk["7FE00010"]
    assert raw[off:off + 4] == b"\xfe\xff\x00\xe0"           # first item tag (BOT)
    assert raw[off + n:off + n + 8] == b"\xfe\xff\xdd\xe0\0\0\0\0"  # then the delimiter


def test_metadata_bulk_uris_and_offsets_point_at_the_values() -> None:
    overlay = bytes(range(256)) * 8  # 2048 bytes > threshold, top-level OW
    ds = make_dataset(rows=32, columns=32)
    ds.add_new(0x60003000, "OW", overlay)
    ds.add_new(0x00091010, "LO", "small")
    raw = to_part10(ds)
    parsed = parse_instance(raw)
    meta = orjson.loads(parsed.metadata)
    base = (f"{BULK_BASE}/studies/{parsed.study_instance_uid}/series/"
            f"{parsed.series_instance_uid}/instances/{parsed.sop_instance_uid}/bulkdata/")
    assert meta["7FE00010"] == {"vr": "OW", "BulkDataURI": base + "7FE00010"}
    assert meta["60003000"] == {"vr": "OW", "BulkDataURI": base + "60003000"}
    off, n = parsed.bulk["60003000"]
    assert raw[off:off + n] == overlay
    off, n = parsed.bulk["7FE00010"]
    assert raw[off:off + n] == ds.PixelData
    assert set(parsed.bulk) == {"7FE00010", "60003000"}


def test_metadata_value_encodings() -> None:
    """US multi-valued, AT, DS/IS as numbers, invalid IS kept as string, UN inline,
    empty values without Value, empty multi-value components as null."""
    ds = make_dataset(pixels=False)
    ds.add_new(0x00281101, "US", [256, 0, 16])          # US multi-valued
    ds.add_new(0x00209165, "AT", [0x00100010, 0x7FE00010])
    ds.add_new(0x00281050, "DS", ["40", "-1.5e2"])
    ds.add_new(0x00201041, "DS", "NaN")
    ds.add_new(0x00200012, "IS", "98")                   # made invalid below
    ds.add_new(0x00080008, "CS", "ORIGINAL\\\\AXIAL")      # empty middle value
    ds.add_new(0x00081030, "LO", "")                    # empty
    ds.add_new(0x00111010, "UN", b"\x01\x02\x03\x04")   # private, unknown
    ds.add_new(0x00110010, "LO", "ACME")
    raw = to_part10(ds).replace(b"\x20\x00\x12\x00IS\x02\x0098",
                                b"\x20\x00\x12\x00IS\x02\x001A")  # badVR.dcm style
    meta = orjson.loads(parse_instance(raw).metadata)
    assert meta["00281101"] == {"vr": "US", "Value": [256, 0, 16]}
    assert meta["00209165"] == {"vr": "AT", "Value": ["00100010", "7FE00010"]}
    assert meta["00281050"] == {"vr": "DS", "Value": [40, -150.0]}
    assert meta["00201041"] == {"vr": "DS", "Value": ["NaN"]}
    assert meta["00200012"] == {"vr": "IS", "Value": ["1A"]}
    assert meta["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]}
    assert meta["00081030"] == {"vr": "LO"}
    assert meta["00111010"] == {"vr": "UN", "InlineBinary": base64.b64encode(
        b"\x01\x02\x03\x04").decode()}
    assert meta["00110010"] == {"vr": "LO", "Value": ["ACME"]}


def test_implicit_vr_us_or_ss_resolved_by_pixel_representation() -> None:
    ds = make_dataset(pixel_representation=1, rows=2, columns=2)
    ds.add_new(0x00280106, "SS", -5)  # SmallestImagePixelValue: 'US or SS' in dictionary
    parsed = parse_instance(to_part10(ds, "1.2.840.10008.1.2"))
    meta = orjson.loads(parsed.metadata)
    assert meta["00280106"] == {"vr": "SS", "Value": [-5]}
    assert meta["7FE00010"]["vr"] == "OW"  # implicit VR LE: Pixel Data is OW (PS3.5 A.1)


def test_level_json_and_index_fields() -> None:
    ds = make_dataset(rows=8, columns=6, frames=3, SpecificCharacterSet="ISO_IR 100",
                      PatientName="Müller^Jörg", StudyDescription="Thorax",
                      SeriesDescription="Axial", BodyPartExamined="CHEST",
                      WindowCenter="40", WindowWidth="400", ContentDate="20240102")
    parsed = parse_instance(to_part10(ds))
    study = orjson.loads(parsed.study_json)
    series = orjson.loads(parsed.series_json)
    instance = orjson.loads(parsed.instance_json)
    assert "00080005" not in study and "00080005" in orjson.loads(parsed.metadata)
    assert study["00100010"]["Value"] == [{"Alphabetic": "Müller^Jörg"}]
    assert study["0020000D"]["Value"] == [parsed.study_instance_uid]
    assert "00080060" not in study and series["00080060"]["Value"] == ["CT"]
    assert series["00200011"]["Value"] == [3]
    assert instance["00280008"]["Value"] == [3] and instance["00281050"]["Value"] == [40]
    assert set(study) <= {f"{t:08X}" for t in STUDY_LEVEL_TAGS}
    assert set(series) <= {f"{t:08X}" for t in SERIES_LEVEL_TAGS}
    assert set(instance) <= {f"{t:08X}" for t in INSTANCE_LEVEL_TAGS}
    assert parsed.specific_character_set == "ISO_IR 100"
    assert parsed.patient == {"PatientID": "PID-1", "IssuerOfPatientID": None,
                              "PatientName": "Müller^Jörg", "PatientBirthDate": "19700101",
                              "PatientSex": "O"}
    assert parsed.study["StudyDescription"] == "Thorax"
    assert parsed.study["ReferringPhysicianName"] is None
    assert parsed.series["SeriesNumber"] == 3 and parsed.series["Modality"] == "CT"
    assert parsed.instance == {"InstanceNumber": 7, "Rows": 8, "Columns": 6,
                               "NumberOfFrames": 3, "BitsAllocated": 16,
                               "ContentDate": "20240102", "ContentTime": None}
    assert parsed.frames is not None and parsed.frames.number_of_frames == 3


def test_no_pixel_data_means_no_frames() -> None:
    parsed = parse_instance(make_instance(pixels=False))
    assert parsed.frames is None and parsed.bulk == {}
    assert parsed.instance["NumberOfFrames"] is None


def test_number_of_frames_defaults_to_one_with_pixel_data() -> None:
    parsed = parse_instance(make_instance())
    assert parsed.instance["NumberOfFrames"] == 1


def test_uids_and_transfer_syntax() -> None:
    ds = make_dataset(pixels=False)
    parsed = parse_instance(to_part10(ds, "1.2.840.10008.1.2"))
    assert parsed.transfer_syntax_uid == "1.2.840.10008.1.2"
    assert parsed.sop_instance_uid == ds.SOPInstanceUID
    assert parsed.sop_class_uid == ds.SOPClassUID


def test_accepts_path_and_bytes_alike(tmp_path) -> None:
    raw = make_instance()
    path = tmp_path / "x.dcm"
    path.write_bytes(raw)
    assert parse_instance(str(path)) == parse_instance(raw)
    assert parse_instance(path).metadata == parse_instance(raw).metadata


def test_ingest_is_fast_for_a_half_megabyte_ct(tmp_path) -> None:
    """~0.5 MB single-frame CT: a few ms (R-A1 ingest hot path)."""
    path = tmp_path / "ct.dcm"
    path.write_bytes(make_instance(rows=512, columns=512))
    parse_instance(str(path))
    best = min(_timed(lambda: parse_instance(str(path))) for _ in range(5))
    assert best < 0.02, f"parse took {best * 1000:.1f} ms"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_pixel_data_is_never_loaded_into_memory(tmp_path) -> None:
    """A 64 MiB pixel data value is mapped, CRC'd in place, never copied."""
    ds = make_dataset(rows=4096, columns=4096, frames=2, bits_allocated=16,
                      pixel_bytes=b"")  # value written below as a sparse region
    head = to_part10(ds)
    assert head.endswith(b"\xe0\x7f\x10\x00OW\x00\x00\x00\x00\x00\x00")
    size = 4096 * 4096 * 2 * 2
    path = tmp_path / "big.dcm"
    with open(path, "wb") as f:
        f.write(head[:-4] + size.to_bytes(4, "little"))
        f.truncate(len(head) + size)
    tracemalloc.start()
    try:
        parsed = parse_instance(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert parsed.frames is not None and parsed.frames.number_of_frames == 2
    assert parsed.frames.fragments[1] == ((len(head) + size // 2, size // 2),)
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes"


def test_pydicom_exception_becomes_invalid_dicom(monkeypatch) -> None:
    """Any third-party exception at parse time is wrapped (never escapes raw)."""
    import pacsd.dicom.parse as parse_mod

    def boom(*a, **k):
        raise KeyError("pydicom internals")
    monkeypatch.setattr(parse_mod, "charset_values", boom)
    with pytest.raises(InvalidDicom):
        parse_instance(make_instance())


def test_dataset_trailing_padding_and_group_length_not_in_metadata() -> None:
    ds = make_dataset(pixels=False)
    ds.add_new(0x00090000, "UL", 0)
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 16)
    meta = orjson.loads(parse_instance(to_part10(ds)).metadata)
    assert "00090000" not in meta and "FFFCFFFC" not in meta


def test_sequences_in_metadata_keep_items_and_nested_charset() -> None:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-D3000", "SRT", "Ch"
    ds = make_dataset(pixels=False)
    ds.ProcedureCodeSequence = [item, Dataset()]
    parsed = parse_instance(to_part10(ds))
    meta = orjson.loads(parsed.metadata)
    seq = meta["00081032"]
    assert seq["vr"] == "SQ" and len(seq["Value"]) == 2 and seq["Value"][1] == {}
    assert seq["Value"][0]["00080100"] == {"vr": "SH", "Value": ["T-D3000"]}
    assert orjson.loads(parsed.study_json)["00081032"] == seq


def test_os_error_is_not_masked(tmp_path) -> None:
    with pytest.raises(OSError):
        parse_instance(str(tmp_path / "missing.dcm"))
    assert not os.path.exists(tmp_path / "missing.dcm")
