"""C-GET and C-MOVE SCP with DCMTK getscu / movescu / storescp and pynetdicom (§6.2,
R-A5, SEC-18).

The study holds three instances stored as received: CT_small (Explicit VR LE),
MR_small_jp2klossless (JPEG 2000 Lossless) and SC_rgb_jpeg_dcmtk (JPEG Baseline).
"""
from __future__ import annotations

import io
import struct

import numpy as np
import pydicom
import pytest
from dimse_helpers import (association, copy_with_new_uids, dataset_part, dcmtk,
                           run, start_server, stored_file, wado_instance)
from pacsd_server import free_port
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.sop_class import (CTImageStorage, MRImageStorage,
                                  PatientRootQueryRetrieveInformationModelGet,
                                  SecondaryCaptureImageStorage,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove)

FILES = ("CT_small.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_jpeg_dcmtk.dcm")
STUDY_GET = StudyRootQueryRetrieveInformationModelGet
STUDY_MOVE = StudyRootQueryRetrieveInformationModelMove
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


@pytest.fixture(scope="module")
def study(pacs, tmp_path_factory):
    """{file name: (path of the file sent, its dataset)} all in one study."""
    from pynetdicom import _config
    directory = tmp_path_factory.mktemp("study")
    uid = generate_uid()
    out = {}
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the files' bytes as they are
    try:
        for name in FILES:
            path = copy_with_new_uids(name, directory, study=uid, PatientID="RET-1",
                                      PatientName="Retrieve^Test")
            ds = pydicom.dcmread(path)
            cx = build_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
            with association(pacs.dicom_port, [cx]) as assoc:
                assert assoc.send_c_store(path).Status == 0x0000
            out[name] = (path, ds)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    return out


def identifier(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def get(port, ident, storage_contexts, model=STUDY_GET, on_store=None):
    """pynetdicom C-GET; returns (final status dataset, received datasets)."""
    received = []

    def handle_store(event):
        received.append(event.dataset)
        received[-1].file_meta = event.file_meta
        if on_store:
            on_store(event)
        return 0x0000

    roles = [build_role(cx.abstract_syntax, scp_role=True) for cx in storage_contexts]
    with association(port, [build_context(model)] + storage_contexts, ext_neg=roles,
                     evt_handlers=[(evt.EVT_C_STORE, handle_store)]) as assoc:
        assert assoc.is_established
        final = None
        for status, _ in assoc.send_c_get(ident, model):
            final = status
        return final, received


def pixels(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array


def test_getscu_study_transcodes_losslessly(pacs, study, tmp_path):
    out = tmp_path / "get"
    out.mkdir()
    ct = study["CT_small.dcm"][1]
    p = run(dcmtk("getscu"), "-aec", "PACSD", "-S", "-od", str(out), "-k",
            "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ct.StudyInstanceUID}",
            "127.0.0.1", str(pacs.dicom_port))
    assert p.returncode == 0, p.stderr
    assert len(list(out.iterdir())) == 3
    for name, (path, original) in study.items():
        got = pydicom.dcmread(stored_file(out, original.SOPInstanceUID))
        assert not got.file_meta.TransferSyntaxUID.is_compressed  # getscu offers native only
        if name == "CT_small.dcm":
            assert got.PixelData == original.PixelData  # sent as stored
        else:
            assert np.array_equal(pixels(got), pixels(original))  # lossless transcode


def test_getscu_image_as_stored(pacs, study, tmp_path):
    """getscu preferring JPEG 2000 lossless gets the stored bytes (bit-exact)."""
    out = tmp_path / "get"
    out.mkdir()
    mr = study["MR_small_jp2klossless.dcm"][1]
    p = run(dcmtk("getscu"), "-aec", "PACSD", "-S", "+xv", "-od", str(out), "-k",
            "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={mr.StudyInstanceUID}",
            "-k", f"SeriesInstanceUID={mr.SeriesInstanceUID}", "-k",
            f"SOPInstanceUID={mr.SOPInstanceUID}", "127.0.0.1", str(pacs.dicom_port))
    assert p.returncode == 0, p.stderr
    got = pydicom.dcmread(stored_file(out, mr.SOPInstanceUID))
    assert got.file_meta.TransferSyntaxUID == mr.file_meta.TransferSyntaxUID
    assert got.PixelData == mr.PixelData


def test_movescu_to_peer_bit_exact(pacs, peer, study):
    peer.clear()
    ct = study["CT_small.dcm"][1]
    p = run(dcmtk("movescu"), "-aec", "PACSD", "-aem", peer.ae_title, "-S", "-k",
            "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ct.StudyInstanceUID}",
            "127.0.0.1", str(pacs.dicom_port))
    assert p.returncode == 0, p.stderr
    for _, original in study.values():
        sent = stored_file(peer.directory, original.SOPInstanceUID).read_bytes()
        stored = wado_instance(pacs, original)
        meta_sent, data_sent = dataset_part(sent)
        meta_stored, data_stored = dataset_part(stored)
        assert meta_sent.TransferSyntaxUID == meta_stored.TransferSyntaxUID
        assert data_sent == data_stored  # storescp +B wrote what arrived


def test_move_unknown_destination_A801(pacs, study):
    ct = study["CT_small.dcm"][1]
    p = run(dcmtk("movescu"), "-aec", "PACSD", "-aem", "NOSUCHAE", "-S", "-k",
            "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ct.StudyInstanceUID}",
            "127.0.0.1", str(pacs.dicom_port))
    assert "MoveDestinationUnknown" in p.stderr or "a801" in p.stderr.lower(), p.stderr
    with association(pacs.dicom_port, [build_context(STUDY_MOVE)]) as assoc:
        statuses = [s.Status for s, _ in assoc.send_c_move(
            identifier("STUDY", StudyInstanceUID=ct.StudyInstanceUID), "NOSUCHAE", STUDY_MOVE)]
    assert statuses == [0xA801]


def test_move_relational_series(pacs, peer, study):
    """SERIES level without the study UID (relational): resolved through the index."""
    peer.clear()
    mr = study["MR_small_jp2klossless.dcm"][1]
    with association(pacs.dicom_port, [build_context(STUDY_MOVE)]) as assoc:
        rsps = [s for s, _ in assoc.send_c_move(
            identifier("SERIES", SeriesInstanceUID=mr.SeriesInstanceUID), peer.ae_title,
            STUDY_MOVE)]
    assert rsps[-1].Status == 0x0000 and rsps[-1].NumberOfCompletedSuboperations == 1
    assert stored_file(peer.directory, mr.SOPInstanceUID)


def test_get_partial_failure_B000(pacs, study):
    """The requestor accepts only JPEG Baseline: the SC instance (stored so) goes as
    stored; CT cannot be made lossy (never, R-A5) and MR has no context: both fail."""
    ct = study["CT_small.dcm"][1]
    contexts = [build_context(SecondaryCaptureImageStorage, [JPEG_BASELINE]),
                build_context(CTImageStorage, [JPEG_BASELINE])]
    final, received = get(pacs.dicom_port,
                          identifier("STUDY", StudyInstanceUID=ct.StudyInstanceUID), contexts)
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 2)
    assert [r.SOPInstanceUID for r in received] == [study["SC_rgb_jpeg_dcmtk.dcm"][1].SOPInstanceUID]
    assert received[0].PixelData == study["SC_rgb_jpeg_dcmtk.dcm"][1].PixelData


def test_get_nothing_sendable_A702(pacs, study):
    ct = study["CT_small.dcm"][1]
    final, received = get(pacs.dicom_port, identifier(
        "IMAGE", StudyInstanceUID=ct.StudyInstanceUID, SeriesInstanceUID=ct.SeriesInstanceUID,
        SOPInstanceUID=ct.SOPInstanceUID), [build_context(CTImageStorage, [JPEG_BASELINE])])
    assert final.Status == 0xA702 and received == []
    assert final.NumberOfFailedSuboperations == 1


def test_get_cancel(pacs, study):
    """C-CANCEL sent while the first sub-operation is being received: the SCP stops
    before the next one (0xFE00, remaining 2)."""
    ct = study["CT_small.dcm"][1]

    def cancel(event):
        event.assoc.send_c_cancel(1, query_model=STUDY_GET)

    contexts = [build_context(c, [ExplicitVRLittleEndian])
                for c in (CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage)]
    final, received = get(pacs.dicom_port,
                          identifier("STUDY", StudyInstanceUID=ct.StudyInstanceUID), contexts,
                          on_store=cancel)
    assert final.Status == 0xFE00
    assert len(received) == 1
    assert final.NumberOfRemainingSuboperations == 2


def test_get_patient_root_patient_level(pacs, study):
    ct = study["CT_small.dcm"][1]
    contexts = [build_context(c) for c in (CTImageStorage, MRImageStorage,
                                           SecondaryCaptureImageStorage)]
    final, received = get(pacs.dicom_port, identifier("PATIENT", PatientID=ct.PatientID),
                          contexts, model=PatientRootQueryRetrieveInformationModelGet)
    assert final.Status == 0x0000
    assert ct.SOPInstanceUID in {r.SOPInstanceUID for r in received}
    assert all(r.PatientID == ct.PatientID for r in received)


@pytest.mark.parametrize("ident,status", [
    (identifier("STUDY"), 0xA900),                               # no unique key
    (identifier("STUDY", StudyInstanceUID="1.2.3*"), 0xC000),     # wildcard in a UID
    (identifier("PATIENT", PatientID="X"), 0xA900),               # not a Study Root level
])
def test_get_bad_identifier(pacs, study, ident, status):
    final, received = get(pacs.dicom_port, ident, [build_context(CTImageStorage)])
    assert final.Status == status and received == []


def test_get_unknown_study_matches_nothing(pacs, study):
    final, received = get(pacs.dicom_port, identifier("STUDY", StudyInstanceUID="1.2.3.4"),
                          [build_context(CTImageStorage)])
    assert final.Status == 0x0000 and received == []
    assert final.NumberOfCompletedSuboperations == 0



# --- pre-framed sub-operations (pacsd/dimse/pdata.py) ------------------------------------

def _stored_data_sets(pacs, study) -> dict[str, bytes]:
    """SOP Instance UID -> the data set bytes pacsd holds (WADO-RS, as stored)."""
    return {ds.SOPInstanceUID: dataset_part(wado_instance(pacs, ds))[1]
            for _, ds in study.values()}


def _as_stored_contexts(study) -> list:
    return [build_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
            for _, ds in study.values()]


def _receive_raw(sink: dict, pdus: list):
    def on_store(event):
        sink[event.request.AffectedSOPInstanceUID] = (
            event.context.transfer_syntax, event.request.DataSet.getvalue())
        return 0x0000

    def on_data(event):
        if event.data[:1] == b"\x04":  # P-DATA-TF: its PDU length field
            pdus.append(struct.unpack(">L", event.data[2:6])[0])
    return [(evt.EVT_C_STORE, on_store), (evt.EVT_DATA_RECV, on_data)]


@pytest.mark.parametrize("max_pdu", [4096, 16382, 0])
def test_get_sends_stored_bytes_within_peer_max_pdu(pacs, study, max_pdu):
    """A pynetdicom C-GET requestor with a small, DCMTK's and an unlimited maximum PDU
    receives every instance's data set byte-identical to what pacsd stored, and no
    P-DATA-TF PDU longer than it allowed."""
    ct = study["CT_small.dcm"][1]
    received: dict = {}
    pdus: list[int] = []
    contexts = _as_stored_contexts(study)
    roles = [build_role(cx.abstract_syntax, scp_role=True) for cx in contexts]
    with association(pacs.dicom_port, [build_context(STUDY_GET)] + contexts, ext_neg=roles,
                     max_pdu=max_pdu, evt_handlers=_receive_raw(received, pdus)) as assoc:
        statuses = [s.Status for s, _ in assoc.send_c_get(
            identifier("STUDY", StudyInstanceUID=ct.StudyInstanceUID), STUDY_GET)]
    assert statuses[-1] == 0x0000
    stored = _stored_data_sets(pacs, study)
    assert {uid: data for uid, (_, data) in received.items()} == stored
    for _, ds in study.values():
        assert received[ds.SOPInstanceUID][0] == ds.file_meta.TransferSyntaxUID
    if max_pdu:
        assert max(pdus) <= max_pdu
        assert len(pdus) > sum(len(d) for d in stored.values()) // max_pdu  # fragmented
    else:
        assert len(pdus) >= 2 * len(stored)  # command + data set PDU per instance


def test_get_transcode_fallback_small_pdu(pacs, study):
    """The requestor takes MR only uncompressed: the JPEG 2000 instance is transcoded
    losslessly and still framed within a 4096-byte maximum PDU."""
    mr = study["MR_small_jp2klossless.dcm"][1]
    received: dict = {}
    pdus: list[int] = []
    contexts = [build_context(MRImageStorage, [ImplicitVRLittleEndian])]
    roles = [build_role(MRImageStorage, scp_role=True)]
    with association(pacs.dicom_port, [build_context(STUDY_GET)] + contexts, ext_neg=roles,
                     max_pdu=4096, evt_handlers=_receive_raw(received, pdus)) as assoc:
        statuses = [s.Status for s, _ in assoc.send_c_get(identifier(
            "IMAGE", StudyInstanceUID=mr.StudyInstanceUID,
            SeriesInstanceUID=mr.SeriesInstanceUID, SOPInstanceUID=mr.SOPInstanceUID),
            STUDY_GET)]
    assert statuses[-1] == 0x0000
    ts, data = received[mr.SOPInstanceUID]
    assert ts == ImplicitVRLittleEndian and max(pdus) <= 4096
    got = read_dataset(io.BytesIO(data), is_implicit_VR=True, is_little_endian=True)
    got.file_meta = FileMetaDataset()
    got.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    assert np.array_equal(got.pixel_array, pixels(mr))


@pytest.mark.parametrize("max_pdu", [4096, 0])
def test_move_to_pynetdicom_peer_bit_exact(tmp_path, study, pacs, max_pdu):
    """C-MOVE to a pynetdicom Storage SCP with a small or no maximum PDU: the data sets
    arrive byte-identical, with the Move Originator of the C-MOVE."""
    received: dict = {}
    originators: list = []
    pdus: list[int] = []
    handlers = _receive_raw(received, pdus)

    def on_store(event):
        originators.append((event.request.MoveOriginatorApplicationEntityTitle,
                            event.request.MoveOriginatorMessageID))
        return handlers[0][1](event)

    ae = AE(ae_title="PNDSCP")
    ae.maximum_pdu_size = max_pdu
    ae.supported_contexts = _as_stored_contexts(study)
    port = free_port()
    scp = ae.start_server(("127.0.0.1", port), block=False,
                          evt_handlers=[(evt.EVT_C_STORE, on_store), handlers[1]])
    srv = start_server(tmp_path / "pacsd", "", "--peer", f"PNDSCP=127.0.0.1:{port}")
    try:
        for path, ds in study.values():
            cx = build_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
            with association(srv.dicom_port, [cx], ae_title="LOADER") as assoc:
                assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
        ct = study["CT_small.dcm"][1]
        with association(srv.dicom_port, [build_context(STUDY_MOVE)],
                         ae_title="MOVER") as assoc:
            rsps = [s for s, _ in assoc.send_c_move(
                identifier("STUDY", StudyInstanceUID=ct.StudyInstanceUID), "PNDSCP",
                STUDY_MOVE, msg_id=7)]
        assert rsps[-1].Status == 0x0000 and rsps[-1].NumberOfCompletedSuboperations == 3
        stored = _stored_data_sets(srv, study)
        assert {uid: data for uid, (_, data) in received.items()} == stored
        assert set(originators) == {("MOVER", 7)}
        if max_pdu:
            assert max(pdus) <= max_pdu
    finally:
        srv.stop()
        scp.shutdown()


def test_getscu_small_pdu_bit_preserving(pacs, study, tmp_path):
    """DCMTK getscu with a 4096-byte maximum PDU, writing what arrives (+B): the
    instance sent as stored is byte-identical to pacsd's copy; the transcoded ones
    decode to the same pixels."""
    out = tmp_path / "get"
    out.mkdir()
    ct = study["CT_small.dcm"][1]
    p = run(dcmtk("getscu"), "-aec", "PACSD", "-S", "+B", "-pdu", "4096", "-od", str(out),
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ct.StudyInstanceUID}",
            "127.0.0.1", str(pacs.dicom_port))
    assert p.returncode == 0, p.stderr
    stored = _stored_data_sets(pacs, study)
    for name, (_, original) in study.items():
        got = stored_file(out, original.SOPInstanceUID).read_bytes()
        if name == "CT_small.dcm":
            assert dataset_part(got)[1] == stored[original.SOPInstanceUID]
        else:
            assert np.array_equal(pixels(pydicom.dcmread(io.BytesIO(got))), pixels(original))


# --- cached reads on the association thread (RetrieveService.read_cached, R-H1) ----------

def _stored_path(pacs, part10: bytes) -> str:
    """The local store's file of an object (the server's data directory)."""
    import glob
    import hashlib
    import os
    sha = hashlib.sha256(part10).hexdigest()
    data_dir = os.path.dirname(pacs.log.name)
    found = glob.glob(os.path.join(data_dir, "**", sha), recursive=True)
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("service", ["get", "move"])
def test_retrieve_never_sends_a_damaged_object(pacs, peer, tmp_path, service):
    """R-A6 / FT-6 with the association-thread read: an object whose stored bytes were
    changed (same size, so only the digest can tell; just written, so in the page
    cache) is never sent: its sub-operation fails (0xB000, counted in the failed
    sub-operations); the intact one of the same study arrives byte-identical."""
    uid = generate_uid()
    sent = {}
    for name in ("CT_small.dcm", "SC_rgb_jpeg_dcmtk.dcm"):
        path = copy_with_new_uids(name, tmp_path, study=uid, PatientID="RET-DMG")
        ds = pydicom.dcmread(path)
        cx = build_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
        from pynetdicom import _config
        old = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            with association(pacs.dicom_port, [cx]) as assoc:
                assert assoc.send_c_store(str(path)).Status == 0x0000
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = old
        sent[name] = ds
    ct, sc = sent["CT_small.dcm"], sent["SC_rgb_jpeg_dcmtk.dcm"]
    good = wado_instance(pacs, sc)
    stored = wado_instance(pacs, ct)
    bad = bytearray(stored)
    bad[-10] ^= 0xFF
    with open(_stored_path(pacs, stored), "r+b") as f:
        f.write(bad)
    if service == "get":
        received: dict = {}
        contexts = [build_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
                    for ds in sent.values()]
        roles = [build_role(cx.abstract_syntax, scp_role=True) for cx in contexts]
        with association(pacs.dicom_port, [build_context(STUDY_GET)] + contexts,
                         ext_neg=roles, evt_handlers=_receive_raw(received, [])) as assoc:
            final = [s for s, _ in assoc.send_c_get(
                identifier("STUDY", StudyInstanceUID=uid), STUDY_GET)][-1]
        assert final.Status == 0xB000 and final.NumberOfFailedSuboperations == 1
        assert set(received) == {sc.SOPInstanceUID}
        assert received[sc.SOPInstanceUID][1] == dataset_part(good)[1]
    else:
        peer.clear()
        with association(pacs.dicom_port, [build_context(STUDY_MOVE)]) as assoc:
            final = [s for s, _ in assoc.send_c_move(
                identifier("STUDY", StudyInstanceUID=uid), peer.ae_title, STUDY_MOVE)][-1]
        assert final.Status == 0xB000 and final.NumberOfFailedSuboperations == 1
        assert final.NumberOfCompletedSuboperations == 1
        got = stored_file(peer.directory, sc.SOPInstanceUID).read_bytes()
        assert dataset_part(got)[1] == dataset_part(good)[1]
        assert not [p for p in peer.directory.iterdir()
                    if p.name.endswith(ct.SOPInstanceUID)]
