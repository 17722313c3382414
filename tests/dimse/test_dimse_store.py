"""C-ECHO and C-STORE SCP against a real ``pacsd serve`` (R-A2, R-A5, BI-35, §6.2).

What "stored as received" is checked against:

* DCMTK ``storescu`` re-serialises a file before sending (group lengths, item lengths),
  so its bytes on the wire are not the file's. The same file is therefore also sent to a
  DCMTK ``storescp +B`` (bit-preserving) over the same kind of association: what pacsd
  returns through WADO-RS ``transfer-syntax=*`` must equal, after the File Meta
  Information, the data set bytes storescp wrote.
* pynetdicom with its file-based send path sends the file's data set bytes unchanged:
  there the stored data set must equal the file's data set byte for byte.

File Meta Information is not compared byte for byte: pacsd builds it from the C-STORE
command (Implementation Class UID / Version Name and Source AE Title may differ); its
SOP Class/Instance UIDs and Transfer Syntax UID are compared.
"""
from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from dicomgen import make_dataset, to_part10
from dimse_helpers import (association, copy_with_new_uids, dataset_part,
                           dcmtk, run, storescu, stored_file, wado_instance)
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from pynetdicom import build_context
from pynetdicom.sop_class import Verification

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
#: pydicom test file -> storescu option proposing its transfer syntax.
DCMTK_FILES = {
    "CT_small.dcm": "-xe",                  # Explicit VR Little Endian
    "MR_small_bigendian.dcm": "-xb",        # Explicit VR Big Endian
    "MR_small_jp2klossless.dcm": "-xv",     # JPEG 2000 Lossless
    "JPEG2000.dcm": "-xw",                  # JPEG 2000 (lossy, already so in the file)
    "SC_rgb_jpeg_dcmtk.dcm": "-xy",         # JPEG Baseline (already lossy)
}


def test_c_echo_dcmtk(pacs):
    p = run(dcmtk("echoscu"), "-aec", "PACSD", "127.0.0.1", str(pacs.dicom_port))
    assert p.returncode == 0, p.stderr


def test_c_echo_pynetdicom(pacs):
    with association(pacs.dicom_port, [build_context(Verification)]) as assoc:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000


@pytest.mark.parametrize("name", list(DCMTK_FILES))
def test_storescu_stored_as_received(pacs, peer, workdir, name):
    path = copy_with_new_uids(name, workdir)
    original = pydicom.dcmread(path)
    p = storescu(pacs.dicom_port, path, flag=DCMTK_FILES[name])
    assert p.returncode == 0 and "Failed" not in p.stderr, p.stderr
    # The same bytes, as DCMTK sends them, written bit for bit by storescp +B.
    q = run(dcmtk("storescu"), "-aec", peer.ae_title, DCMTK_FILES[name], "127.0.0.1",
            str(peer.port), str(path))
    assert q.returncode == 0, q.stderr
    oracle_meta, oracle = dataset_part(stored_file(peer.directory,
                                                   original.SOPInstanceUID).read_bytes())

    meta, data = dataset_part(wado_instance(pacs, original))
    assert meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID  # no conversion
    assert oracle_meta.TransferSyntaxUID == meta.TransferSyntaxUID
    assert meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert meta.MediaStorageSOPClassUID == original.SOPClassUID
    assert meta.SourceApplicationEntityTitle == "STORESCU"
    assert data == oracle
    stored = pydicom.dcmread(io.BytesIO(wado_instance(pacs, original)))
    assert stored.PixelData == original.PixelData  # compressed fragments untouched


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "CT_small.dcm", "JPEG2000.dcm",
                                  "deflated"])
def test_pynetdicom_stored_bit_exact(pacs, workdir, raw_send, name):
    if name == "deflated":  # a deflated data set (DCMTK cannot be asked to send one)
        path = workdir / "deflated.dcm"
        path.write_bytes(to_part10(make_dataset(), DeflatedExplicitVRLittleEndian))
    else:
        path = copy_with_new_uids(name, workdir)
    original = pydicom.dcmread(path)
    ts = original.file_meta.TransferSyntaxUID
    with association(pacs.dicom_port, [build_context(original.SOPClassUID, [ts])]) as assoc:
        assert assoc.send_c_store(path).Status == 0x0000
        # an identical re-send is idempotent (BI-25)
        assert assoc.send_c_store(path).Status == 0x0000
    meta, data = dataset_part(wado_instance(pacs, original))
    assert meta.TransferSyntaxUID == ts
    assert data == dataset_part(path.read_bytes())[1]


def _send(port, path, ts=ExplicitVRLittleEndian, sop_class=None):
    sop_class = sop_class or pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID
    with association(port, [build_context(sop_class, [ts])]) as assoc:
        return assoc.send_c_store(path)


def _file(workdir, name, data: bytes):
    path = workdir / name
    path.write_bytes(data)
    return path


def part10(ds: pydicom.Dataset, sop_class: str, sop_instance: str) -> bytes:
    """``ds`` as Part 10 with File Meta naming ``sop_class`` / ``sop_instance`` (the
    pynetdicom file sender takes the command's Affected SOP UIDs from the meta)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta)
    return b"\0" * 128 + b"DICM" + buf.getvalue() + dataset_part(to_part10(ds))[1]


def test_BI35_dataset_uid_differs_from_command(pacs, workdir, raw_send):
    ds = make_dataset()
    path = _file(workdir, "instance.dcm", part10(ds, ds.SOPClassUID, generate_uid()))
    rsp = _send(pacs.dicom_port, path)
    assert rsp.Status == 0xA900
    assert "differs from the command" in rsp.ErrorComment
    mr = "1.2.840.10008.5.1.4.1.1.4"  # the command says MR, the data set says CT
    path = _file(workdir, "class.dcm", part10(ds, mr, ds.SOPInstanceUID))
    assert _send(pacs.dicom_port, path, sop_class=mr).Status == 0xA900
    r = run(dcmtk("findscu"), "-aec", "PACSD", "-S", "-k", "QueryRetrieveLevel=IMAGE",
            "-k", f"SOPInstanceUID={ds.SOPInstanceUID}", "127.0.0.1", str(pacs.dicom_port))
    assert r.returncode == 0 and "Find Response: 1" not in r.stderr  # nothing stored


@pytest.mark.parametrize("change,status", [
    ({"StudyInstanceUID": None}, 0xA900),          # MissingAttribute (BI-3)
    ({"SeriesInstanceUID": "1.2.abc"}, 0x0117),     # InvalidUID (BI-6)
])
def test_refusals_map_to_statuses(pacs, workdir, raw_send, change, status):
    ds = make_dataset()
    for keyword, value in change.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    path = _file(workdir, "bad.dcm", to_part10(ds))
    rsp = _send(pacs.dicom_port, path)
    assert rsp.Status == status
    assert rsp.ErrorComment  # the PHI-free reason


def test_duplicate_with_other_content_is_0111(pacs, workdir, raw_send):
    ds = make_dataset(seed=1)
    assert _send(pacs.dicom_port, _file(workdir, "a.dcm", to_part10(ds))).Status == 0
    ds.PixelData = np.zeros(16 * 16, np.uint16).tobytes()
    rsp = _send(pacs.dicom_port, _file(workdir, "b.dcm", to_part10(ds)))
    assert rsp.Status == 0x0111  # BI-26: never overwritten
    stored = pydicom.dcmread(io.BytesIO(wado_instance(pacs, ds)))
    assert stored.PixelData != ds.PixelData


def test_unparsable_dataset_is_c000(pacs, workdir, raw_send):
    ds = make_dataset()
    data = to_part10(ds)
    body = dataset_part(data)[1]
    # After the UIDs, an element claiming more bytes than the data set has (BI-9).
    broken = data[:len(data) - len(body)] + body[:200] + b"\x10\x00\x10\x00PN\xff\x7f" + b"x" * 8
    rsp = _send(pacs.dicom_port, _file(workdir, "broken.dcm", broken))
    assert rsp.Status == 0xC000


def test_store_scp_reports_unknown_sop_class_context_rejected(pacs):
    """A SOP class that is not a storage class is not negotiated (0x0122 territory)."""
    with association(pacs.dicom_port, [build_context("1.2.3.4.5.6")]) as assoc:
        assert not assoc.is_established or not assoc.accepted_contexts


@pytest.mark.parametrize("proposed,accepted", [
    (["1.2.840.10008.1.2.4.90", ExplicitVRLittleEndian], "1.2.840.10008.1.2.4.90"),
    ([ExplicitVRLittleEndian, "1.2.840.10008.1.2.4.90"], ExplicitVRLittleEndian),
    # a lossy syntax only when nothing else is offered: pacsd never asks for loss (R-A5)
    (["1.2.840.10008.1.2.4.50", ExplicitVRLittleEndian], ExplicitVRLittleEndian),
    (["1.2.840.10008.1.2.4.50"], "1.2.840.10008.1.2.4.50"),
])
def test_requestor_transfer_syntax_order(pacs, proposed, accepted):
    """The requestor's first non-lossy proposal wins, so objects arrive as they are."""
    with association(pacs.dicom_port, [build_context(CT_IMAGE, proposed)]) as assoc:
        assert [cx.transfer_syntax[0] for cx in assoc.accepted_contexts] == [accepted]
