"""BI-35 read without pydicom (issue 6): ``cstore._sop_uids_fast`` gives exactly what
pydicom's partial read gives for the data sets it accepts, and declines (None, so the
caller reads with pydicom) anything unusual; ``_check_uids`` answers the same."""
from __future__ import annotations

import io
import struct
import zlib

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacsd.dimse import status as st
from pacsd.dimse.cstore import _check_uids, _sop_uids_fast

CT = "1.2.840.10008.5.1.4.1.1.2"


def encode(ds: Dataset, implicit: bool, little: bool = True) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_dataset(fp, ds)
    return fp.getvalue()


def pydicom_uids(raw: bytes, implicit: bool) -> tuple:
    ds = read_dataset(io.BytesIO(raw), implicit, True,
                      stop_when=lambda tag, vr, length: tag > 0x00080018)
    got = []
    for kw in ("SOPClassUID", "SOPInstanceUID"):
        v = ds.get(kw)
        got.append(None if v is None else str(v))
    return tuple(got)


def datasets() -> list[Dataset]:
    out = []
    a = Dataset()
    a.SpecificCharacterSet = "ISO_IR 100"
    a.ImageType = ["ORIGINAL", "PRIMARY"]
    a.SOPClassUID = CT
    a.SOPInstanceUID = "1.2.3.4.5"  # odd length: padded with \0
    a.PatientName = "X^Y"
    out.append(a)
    b = Dataset()
    b.add_new(0x00080005, "CS", "ISO_IR 192")
    b.add_new(0x00080012, "DA", "20260101")
    b.add_new(0x00080014, "UI", "1.2.3")
    b.SOPInstanceUID = "1.2.3.44"  # no SOP Class UID
    out.append(b)
    c = Dataset()  # (an OB element goes before it in raw_sets: 4-byte length VR)
    c.SOPClassUID = CT
    out.append(c)
    d = Dataset()  # nothing of group 0008 at all
    d.PatientID = "P"
    out.append(d)
    return out


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("k", range(4))
def test_fast_read_equals_pydicom(implicit, k):
    """Equal as BI-35 compares them (padding stripped)."""
    raw = encode(datasets()[k], implicit)
    if k == 2:
        raw = (struct.pack("<HHL", 0x0008, 0x0002, 4) if implicit else
               struct.pack("<HH2sHL", 0x0008, 0x0002, b"OB", 0, 4)) + b"\1\2\3\4" + raw
    norm = [None if v is None else v.strip("\0 ") for v in _sop_uids_fast(raw, implicit)]
    assert tuple(norm) == pydicom_uids(raw, implicit)


def test_fast_read_declines_the_unusual():
    raw = encode(datasets()[0], False)
    assert _sop_uids_fast(raw[:20], False) is None  # truncated inside an element
    multi = Dataset()
    multi.add_new(0x00080016, "UI", ["1.2", "3.4"])
    assert _sop_uids_fast(encode(multi, False), False) is None
    odd = encode(datasets()[0], False).replace(b"1.2.3.4.5\0", b"1.2.3.4.\xe9\0")
    assert _sop_uids_fast(odd, False) is None
    # an element of undefined length before the UIDs (a sequence in group 0008)
    undefined = (struct.pack("<HH2sHL", 0x0008, 0x0006, b"SQ", 0, 0xFFFFFFFF)
                 + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))
    assert _sop_uids_fast(undefined + encode(datasets()[0], False), False) is None


def test_check_uids_same_answers_fast_and_slow():
    raw = encode(datasets()[0], False)
    ts = UID(ExplicitVRLittleEndian)
    _check_uids(raw, ts, CT, "1.2.3.4.5")  # matches
    with pytest.raises(st.DatasetMismatch, match="Instance"):
        _check_uids(raw, ts, CT, "1.2.3.4.6")
    with pytest.raises(st.DatasetMismatch, match="Class/Instance"):
        _check_uids(raw, ts, "1.2.840.10008.5.1.4.1.1.4", "9")
    implicit = encode(datasets()[0], True)
    with pytest.raises(st.DatasetMismatch, match="Class"):
        _check_uids(implicit, UID(ImplicitVRLittleEndian), "1.2.840.10008.5.1.4.1.1.4",
                    "1.2.3.4.5")
    # deflated: inflated first, then the fast read
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = comp.compress(raw) + comp.flush()
    _check_uids(deflated, UID(DeflatedExplicitVRLittleEndian), CT, "1.2.3.4.5")
    with pytest.raises(st.DatasetMismatch):
        _check_uids(deflated, UID(DeflatedExplicitVRLittleEndian), CT, "1.2.3.4.7")
    # big endian: pydicom's read, same answers
    big = encode(datasets()[0], False, little=False)
    _check_uids(big, UID(ExplicitVRBigEndian), CT, "1.2.3.4.5")
    with pytest.raises(st.DatasetMismatch):
        _check_uids(big, UID(ExplicitVRBigEndian), CT, "1.2.3.4.6")
    # undefined-length sequence first: the fast read declines, pydicom answers
    seq = Dataset()
    seq.add_new(0x00080006, "SQ", Sequence([Dataset()]))
    seq.SOPClassUID = CT
    seq.SOPInstanceUID = "1.2.3.4.5"
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, seq)
    _check_uids(fp.getvalue(), ts, CT, "1.2.3.4.5")
    with pytest.raises(st.DatasetMismatch):
        _check_uids(fp.getvalue(), ts, CT, "1.2.3.4.6")
    # too broken to read: left to the parser
    _check_uids(b"\x08\x00\x16\x00UI\xff", ts, CT, "1.2.3.4.5")
