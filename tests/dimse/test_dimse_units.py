"""The DIMSE adapter's pure parts: status mapping (§6.2), identifier translation,
transfer syntax choice, settings (no network)."""
from __future__ import annotations

import struct
import subprocess
import sys

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsd import errors
from pacsd.config import ConfigError, load_settings
from pacsd.dimse import status as st
from pacsd.dimse.contexts import choose_transfer_syntax, move_contexts
from pacsd.dimse.identifier import parse_find
from pacsd.dimse.net import Policy, a_abort
from pacsd.model import InstanceRow


@pytest.mark.parametrize("exc,service,code", [
    (errors.InvalidDicom(), st.STORE, 0xC000),
    (errors.MissingAttribute(), st.STORE, 0xA900),
    (errors.InvalidUID(), st.STORE, 0x0117),
    (errors.DuplicateInstance(), st.STORE, 0x0111),
    (errors.HierarchyConflict(), st.STORE, 0xA900),
    (errors.OutOfResources(), st.STORE, 0xA700),
    (errors.InstanceTooLarge(), st.STORE, 0xA700),
    (st.DatasetMismatch(), st.STORE, 0xA900),              # BI-35
    (RuntimeError("x"), st.STORE, 0x0110),
    (errors.BadRequest(), st.FIND, 0xC000),
    (st.IdentifierMismatch(), st.FIND, 0xA900),
    (errors.OutOfResources(), st.FIND, 0xA700),
    (errors.DataUnavailable(), st.FIND, 0xA700),
    (RuntimeError("x"), st.FIND, 0xC000),
    (errors.OutOfResources(), st.GET, 0xA701),             # while matching
    (errors.DataUnavailable(), st.MOVE, 0xA702),
    (errors.Forbidden(), st.MOVE, 0x0124),
    (errors.DuplicateInstance(), st.GET, 0xC000),
])
def test_status_mapping(exc, service, code):
    assert st.status_for(exc, service) == code


def test_failure_dataset_carries_phi_free_comment():
    ds = st.failure(errors.MissingAttribute("StudyInstanceUID is missing"), st.STORE)
    assert ds.Status == 0xA900 and ds.ErrorComment == "StudyInstanceUID is missing"
    ds = st.failure(ValueError("Invalid value 'Smith^John' for PN"), st.STORE)
    assert ds.ErrorComment == "processing failure"  # third-party text never echoed


def _identifier(**kw) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def test_parse_find_translates_to_qido_parameters():
    req = parse_find(_identifier(QueryRetrieveLevel="SERIES", PatientName="Wang^*",
                                 StudyDate="20250101-20250131", ModalitiesInStudy=["CT", "MR"],
                                 SeriesInstanceUID="", SpecificCharacterSet="ISO_IR 192",
                                 RetrieveAETitle=""), "STUDY")
    assert req.qido_level == "series"
    assert dict(req.params) == {"PatientName": "Wang^*", "StudyDate": "20250101-20250131",
                                "ModalitiesInStudy": "CT\\MR", "SeriesInstanceUID": ""}
    assert req.unique == ("0020000D", "0020000E")
    assert "00080054" in req.requested and "00080005" not in dict(req.params)


def test_parse_find_patient_level_matches_patient_keys_only():
    req = parse_find(_identifier(QueryRetrieveLevel="PATIENT", PatientID="P1",
                                 StudyDate="2025"), "PATIENT")
    assert dict(req.params) == {"PatientID": "P1"} and req.unique == ("00100020",)
    with pytest.raises(st.IdentifierMismatch):
        parse_find(_identifier(QueryRetrieveLevel="PATIENT"), "STUDY")
    with pytest.raises(st.IdentifierMismatch):
        parse_find(_identifier(PatientID="P1"), "STUDY")


def _row(sop_class: str, ts: str) -> InstanceRow:
    return InstanceRow("1", "2", "3", sop_class, ts, "0" * 64, 1, None, {})


def test_transfer_syntax_choice():
    targets = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.5")
    j2k = "1.2.840.10008.1.2.4.90"
    assert choose_transfer_syntax(j2k, frozenset({j2k, ExplicitVRLittleEndian}), targets) == j2k
    assert choose_transfer_syntax(j2k, frozenset({ImplicitVRLittleEndian}), targets) \
        == ImplicitVRLittleEndian
    assert choose_transfer_syntax(j2k, frozenset({"1.2.840.10008.1.2.4.50"}), targets) is None


def test_move_contexts_stored_syntax_plus_native_fallback():
    ct, mr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
    cxs = move_contexts([_row(ct, ExplicitVRLittleEndian), _row(mr, "1.2.840.10008.1.2.4.90"),
                         _row(mr, "1.2.840.10008.1.2.4.90")])
    got = [(cx.abstract_syntax, tuple(cx.transfer_syntax)) for cx in cxs]
    assert got == [(ct, (ExplicitVRLittleEndian,)), (ct, (ImplicitVRLittleEndian,)),
                   (mr, ("1.2.840.10008.1.2.4.90",)),
                   (mr, (ExplicitVRLittleEndian, ImplicitVRLittleEndian))]
    many = [_row(f"1.2.3.{i}", ExplicitVRLittleEndian) for i in range(100)]
    assert len(move_contexts(many)) == 128  # PS3.8 maximum


def test_policy_source_networks():
    p = Policy(load_settings(None, dimse__allowed_source_ips=["10.0.0.0/8", "::1"])
               .dimse.source_networks(), 16382, 60)
    assert p.ip_allowed("10.1.2.3") and p.ip_allowed("::1")
    assert p.ip_allowed("::ffff:10.0.0.9")  # dual-stack form
    assert not p.ip_allowed("192.168.1.1") and not p.ip_allowed("not-an-ip")
    assert Policy([], 0, 60).ip_allowed("203.0.113.5") and Policy([], 0, 60).pdu_limit \
        == 0xFFFFFFFF
    assert a_abort(2, 6) == b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"


def test_settings_validated(tmp_path):
    s = load_settings(None)
    s.dimse.add_peer("WS1=10.0.0.5:11112")
    s.dimse.add_peer(" WS2 = [::1]:104")
    assert s.dimse.peer_addresses() == {"WS1": ("10.0.0.5", 11112), "WS2": ("::1", 104)}
    for bad in ("noequals", "WS=host", "WS=host:0", "WAYTOOLONGAETITLE1=h:1"):
        with pytest.raises(ConfigError):
            load_settings(None).dimse.add_peer(bad)
    conf = tmp_path / "c.toml"
    conf.write_text('[dimse]\nallowed_source_ips = ["10.0.0.300"]\n')
    with pytest.raises(ConfigError):
        load_settings(conf)
    conf.write_text('[dimse]\npeers = "WS1=h:1"\n')
    with pytest.raises(ConfigError):
        load_settings(conf)
    conf.write_text('[dimse]\nmax_associations = 0\n')
    with pytest.raises(ConfigError):
        load_settings(conf)


def test_non_loopback_dimse_needs_an_allow_list():
    from pacsd.dimse.server import check_exposure
    with pytest.raises(ConfigError):
        check_exposure(load_settings(None, server__http="0.0.0.0:8042"))
    check_exposure(load_settings(None, server__http="0.0.0.0:8042",
                                 dimse__allowed_calling_aets=["CT1"]))
    check_exposure(load_settings(None))  # loopback: the embedded default


def test_cli_bad_peer_flag_exits_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pacsd.cli", "serve", "--data-dir",
                        str(tmp_path), "--peer", "BROKEN"], capture_output=True, timeout=60)
    assert p.returncode == 2 and b"--peer must be AET=host:port" in p.stderr


# --- pre-framed C-STORE (pacsd/dimse/pdata.py) --------------------------------------------

def _pynetdicom_pdus(cid, msg_id, sop_class, sop_instance, data, max_pdu, aet=None,
                     orig_id=None, priority=2) -> list[bytes]:
    from io import BytesIO

    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu import P_DATA_TF
    req = C_STORE()
    req.MessageID, req.Priority = msg_id, priority
    req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = sop_class, sop_instance
    req.MoveOriginatorApplicationEntityTitle = aet
    req.MoveOriginatorMessageID = orig_id
    req.DataSet = BytesIO(data)
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    return [P_DATA_TF(p).encode() for p in msg.encode_msg(cid, max_pdu)]


@pytest.mark.parametrize("max_pdu,size,aet,orig_id", [
    (16382, 530_000, None, None), (4096, 70_001, "MOVESCU", 7), (0, 100_000, "A", 65535),
    (1024 * 1024, 10, "ABCDEFGHIJKLMNOP", 1), (130, 1000, "MOVE SCU", 3), (8, 50, None, None),
])
def test_framed_c_store_matches_pynetdicom(max_pdu, size, aet, orig_id):
    """Command set encoding and fragmentation are byte-identical to pynetdicom's,
    whatever the buffer split, including a command set longer than one PDU."""
    from pacsd.dimse import pdata
    data = bytes(range(256)) * (size // 256) + b"\x01" * (size % 256)
    sop_class, sop_instance = "1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3680043.8.498.1"
    pdus = _pynetdicom_pdus(3, 42, sop_class, sop_instance, data, max_pdu, aet, orig_id)
    command = pdata.c_store_rq(42, sop_class, sop_instance, 2, aet, orig_id)
    for write_bytes in (pdata.WRITE_BYTES, 20_000, 1):
        buffers = list(pdata.frame(3, command, data, max_pdu, write_bytes))
        assert b"".join(buffers) == b"".join(pdus)
        if write_bytes == 1:
            assert [bytes(b) for b in buffers] == pdus  # one buffer per PDU


def test_framed_c_store_checks():
    from pacsd.dimse import pdata
    with pytest.raises(ValueError):
        list(pdata.frame(1, b"x" * 10, b"y", 6))
    with pytest.raises(ValueError):
        pdata.c_store_rq(70000, "1.2", "1.2.3")


def test_split_part10(tmp_path):
    """The stored object's UIDs and data set offset, as pydicom reads them."""
    import pydicom
    from pydicom.data import get_testdata_file

    from pacsd.dimse import pdata
    path = get_testdata_file("CT_small.dcm")
    raw = open(path, "rb").read()
    sop_class, sop_instance, ts, offset = pdata.stored_syntax(raw)
    meta = pydicom.filereader.read_file_meta_info(path)
    assert (sop_class, sop_instance, ts) == (meta.MediaStorageSOPClassUID,
                                              meta.MediaStorageSOPInstanceUID,
                                              meta.TransferSyntaxUID)
    ds = pydicom.filereader.read_dataset(__import__("io").BytesIO(raw[offset:]),
                                         is_implicit_VR=False, is_little_endian=True)
    assert ds.SOPInstanceUID == sop_instance
    for bad in (b"", raw[:100], b"\0" * 128 + b"DICM\x02\x00\x10\x00UI\xff\x00"):
        with pytest.raises(pdata.Part10Error):
            pdata.stored_syntax(bad)


@pytest.mark.parametrize("kind,status,extra", [
    ("C_STORE", 0x0000, {}), ("C_STORE", 0xB007, {"AffectedSOPClassUID": None}),
    ("C_STORE", 0xA900, {"ErrorComment": "mismatch"}),
    ("C_GET", 0xFF00, {}), ("C_GET", 0xB000, {"NumberOfRemainingSuboperations": None}),
    ("C_MOVE", 0xFF00, {}), ("C_MOVE", 0x0000, {"NumberOfWarningSuboperations": 2}),
])
def test_response_command_matches_pynetdicom(kind, status, extra):
    """Per-instance responses are encoded as pynetdicom encodes them; one with an Error
    Comment is left to pynetdicom."""
    from pynetdicom import dimse_messages, dimse_primitives
    from pynetdicom.dsutils import encode

    from pacsd.dimse import pdata
    p = getattr(dimse_primitives, kind)()
    p.MessageIDBeingRespondedTo = 77
    p.Status = status
    p.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    if kind == "C_STORE":
        p.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.12345"
    else:
        (p.NumberOfRemainingSuboperations, p.NumberOfCompletedSuboperations,
         p.NumberOfFailedSuboperations, p.NumberOfWarningSuboperations) = (3, 10, 1, 0)
    for keyword, value in extra.items():
        setattr(p, keyword, value)
    msg = getattr(dimse_messages, kind + "_RSP")()
    msg.primitive_to_message(p)
    got = pdata.response_command(p)
    if "ErrorComment" in extra:
        assert got is None
    else:
        assert got == encode(msg.command_set, True, True)


@pytest.mark.parametrize("sop_class,sop_instance,ts,calling", [
    ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "1.2.840.10008.1.2.1", "STORESCU"),
    ("1.2.840.10008.5.1.4.1.1.7", "1.2.33", "1.2.840.10008.1.2", "A"),
    ("1.2.840.10008.5.1.4.1.1.7", "1.2.33", "1.2.840.10008.1.2.4.50", ""),
])
def test_file_meta_bytes_match_pydicom(sop_class, sop_instance, ts, calling):
    """The C-STORE SCP's hand-built File Meta Information equals pydicom's encoding of
    pynetdicom's event.file_meta; odd values are left to pydicom."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pynetdicom.dsutils import create_file_meta

    from pacsd.dimse.cstore import file_meta_bytes
    meta = create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_instance,
                            transfer_syntax=ts)
    if calling:
        meta.SourceApplicationEntityTitle = calling
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta, enforce_standard=True)
    assert file_meta_bytes(sop_class, sop_instance, ts, calling) == buf.getvalue()
    assert file_meta_bytes(sop_class + "x", sop_instance, ts, calling) is None
    assert file_meta_bytes(sop_class, "1." * 40, ts, calling) is None


def test_busy_aware_dul_delay():
    """The DUL's loop delay is short while PDUs arrived recently, the set delay otherwise
    (and after a clock step backwards)."""
    import time as _time

    from pynetdicom.dul import DULServiceProvider

    from pacsd.dimse.net import BUSY_LOOP_DELAY_S, BusyAwareDUL, busy_aware

    class _Assoc:
        pass
    dul = DULServiceProvider(_Assoc())
    busy_aware(dul)
    assert isinstance(dul, BusyAwareDUL)
    assert dul._run_loop_delay == 0.001  # timer not started: idle
    dul._idle_timer.start()
    assert dul._run_loop_delay == BUSY_LOOP_DELAY_S
    dul._idle_timer._start_time = _time.time() - 1
    assert dul._run_loop_delay == 0.001
    dul._run_loop_delay = 0.002
    assert dul._run_loop_delay == 0.002
    dul._idle_timer._start_time = _time.time() + 60
    assert dul._run_loop_delay == 0.002


@pytest.mark.parametrize("status,extra", [
    (0x0000, {}), (0xB007, {}), (0xB000, {"AffectedSOPClassUID": None}),
    (0x0000, {"AffectedSOPInstanceUID": None}), (0xA700, {}),
    (0xA900, {"ErrorComment": "mismatch"}), (0xC000, {"OffendingElement": [0x00100010]}),
])
def test_store_rsp_decoded_as_pynetdicom_does(status, extra):
    """A C-STORE-RSP taken by the hand decoder (receive.install) becomes the
    primitive pynetdicom's decode makes of the same bytes, with the same status Dataset;
    one with an Error Comment or Offending Element is left to pynetdicom."""
    import io

    from pynetdicom import dimse_messages, dimse_primitives
    from pynetdicom.dsutils import encode

    from pacsd.dimse import receive
    p = dimse_primitives.C_STORE()
    p.MessageIDBeingRespondedTo = 513
    p.Status = status
    p.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    p.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.12345"
    for keyword, value in extra.items():
        setattr(p, keyword, value)
    msg = dimse_messages.C_STORE_RSP()
    msg.primitive_to_message(p)
    raw = encode(msg.command_set, True, True)
    fields = receive.store_rsp_fields(raw)
    if "ErrorComment" in extra or "OffendingElement" in extra:
        assert fields is None
        return
    assert fields is not None
    want = msg.message_to_primitive()
    assert fields[0x0120] == want.MessageIDBeingRespondedTo == 513
    assert fields[0x0900] == want.Status == status
    assert fields.get(0x0002) == (str(want.AffectedSOPClassUID)
                                  if want.AffectedSOPClassUID else None)
    assert fields.get(0x1000) == (str(want.AffectedSOPInstanceUID)
                                  if want.AffectedSOPInstanceUID else None)
    # Not a C-STORE-RSP, truncated, or with a data set: pynetdicom's.
    assert receive.store_rsp_fields(raw[:-3]) is None
    assert receive.store_rsp_fields(raw + b"\x00\x00") is None
    assert receive.store_rsp_fields(raw.replace(struct.pack("<HHLH", 0, 0x0800, 2, 0x0101),
                                              struct.pack("<HHLH", 0, 0x0800, 2, 0x0000))
                                  ) is None
    assert receive.store_rsp_fields(raw.replace(struct.pack("<HHLH", 0, 0x0100, 2, 0x8001),
                                              struct.pack("<HHLH", 0, 0x0100, 2, 0x8010))
                                  ) is None
    assert receive.store_rsp_fields(b"") is None


def test_sendmsg_all_partial_sends_in_order():
    """pdata._sendmsg_all (the command and the first data PDUs in one sendmsg): every
    byte, in order, when the socket takes a little at a time."""
    import socket
    import threading

    from pacsd.dimse import pdata
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    bufs = [b"head" * 10, bytearray(range(256)) * 4000, b"", memoryview(b"tail!")]
    want = b"".join(bytes(x) for x in bufs)
    got = bytearray()

    def reader():
        while len(got) < len(want):
            chunk = b.recv(1000)
            if not chunk:
                return
            got.extend(chunk)
    t = threading.Thread(target=reader)
    t.start()
    pdata._sendmsg_all(a, bufs)
    t.join(10)
    a.close()
    b.close()
    assert bytes(got) == want


def test_memoized_set_uid_same_results_as_pynetdicom():
    """net.memoized_set_uid (association negotiation, R-H1): the same UID values as
    pynetdicom's set_uid for str, bytes and UID input; errors are raised every time,
    never cached; pynetdicom's modules use it."""
    import pynetdicom.pdu_items
    import pynetdicom.presentation
    from pydicom.uid import UID
    from pynetdicom import utils

    from pacsd.dimse import net
    original = utils.set_uid
    fast = net.memoized_set_uid(original)
    for value in ("1.2.840.10008.5.1.4.1.1.2", b"1.2.840.10008.1.2.1\x00",
                  UID("1.2.840.10008.1.2"), "", None):
        for _ in range(2):
            got, want = fast(value, "x"), original(value, "x")
            assert got == want and type(got) is type(want)
    for _ in range(2):
        with pytest.raises(ValueError):
            fast("", "x", allow_empty=False)
        with pytest.raises(TypeError):
            fast(12, "x")
    assert pynetdicom.pdu_items.set_uid.__wrapped__ is original
    assert pynetdicom.presentation.set_uid.__wrapped__ is original
