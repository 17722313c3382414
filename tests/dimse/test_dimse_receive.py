"""Incoming C-STORE requests and responses assembled by hand (pacsd/dimse/receive.py;
R-H1, R-A2, R-A5, BI-24, BI-33).

Unit tests feed the same P-DATA primitives to the hand path and to pynetdicom's own
``DIMSEServiceProvider.receive_primitive`` and compare what each queues; anything
unusual must reach pynetdicom exactly as it arrived (replayed in order). Against a real
``pacsd serve``, raw sockets send C-STOREs cut into PDUs of several sizes (16 kB, odd,
"unlimited", several PDVs per PDU), abort in the middle of a data set, and send in
big-endian / implicit transfer syntaxes; what is stored must be the data set bytes sent,
bit for bit, and an aborted message must leave nothing.
"""
from __future__ import annotations

import inspect
import io
import os
import queue
import socket
import struct
import time

import pydicom
from pydicom.filewriter import dcmwrite
import pytest
import pynetdicom
from dicomgen import make_dataset, to_part10
from dimse_helpers import dataset_part, wado_instance
from pydicom.uid import (ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         generate_uid)
from pynetdicom import dimse, dimse_messages, evt, fsm
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA

from pacsd.dimse import pdata, receive

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


# --- pynetdicom internals relied on (3.0.4) ---------------------------------------------

def test_guard_pynetdicom_receive_internals():
    """receive.py wraps ``dimse.receive_primitive`` (called by DT-2 for every P-DATA-TF),
    checks ``dimse.message`` (pynetdicom's message under way) and queues ``(context ID,
    primitive)`` on ``dimse.msg_queue`` with ``_context_id`` set, as pynetdicom does."""
    assert pynetdicom.__version__ == "3.0.4"
    assert "dul.assoc.dimse.receive_primitive(" in inspect.getsource(fsm.DT_2)
    src = inspect.getsource(dimse.DIMSEServiceProvider.receive_primitive)
    assert "self.message is None" in src and "self.msg_queue.put((context_id" in src
    msg_src = inspect.getsource(pynetdicom.dimse_messages.DIMSEMessage.message_to_primitive)
    assert "primitive._context_id = self.context_id" in msg_src
    assert "_dataset_path" in msg_src and "_dataset_file" in msg_src


# --- unit: the hand path against pynetdicom's ------------------------------------------

class _Assoc:
    """What DIMSEServiceProvider.receive_primitive and receive.install touch."""

    def __init__(self, handlers: bool = False) -> None:
        self.handlers = handlers
        self.dul = type("Dul", (), {"event_queue": queue.Queue()})()
        self.dimse = dimse.DIMSEServiceProvider(self)  # type: ignore[arg-type]
        self._pacsd_sending = False

    def get_handlers(self, event):
        return [(lambda e: None, None)] if self.handlers and event == evt.EVT_DIMSE_RECV \
            else []


def _pdus(buffers) -> list[P_DATA]:
    """P-DATA primitives of the PDUs in ``buffers`` (pdata.frame's output)."""
    out = []
    for buf in buffers:
        pos = 0
        while pos < len(buf):
            length = struct.unpack_from(">L", buf, pos + 2)[0]
            pdu = P_DATA_TF()
            pdu.decode(bytes(buf[pos:pos + 6 + length]))
            out.append(pdu.to_primitive())
            pos += 6 + length
    return out


def _feed(primitives, hand: bool, handlers: bool = False, sending: bool = False):
    """(queued messages and DUL events, primitives pynetdicom's receive_primitive got)."""
    assoc = _Assoc(handlers)
    assoc._pacsd_sending = sending
    seen = []
    original = assoc.dimse.receive_primitive

    def recording(p):
        seen.append(p)
        original(p)

    assoc.dimse.receive_primitive = recording
    if hand:
        receive.install(assoc)
    out = []
    for p in primitives:
        try:
            assoc.dimse.receive_primitive(p)
        except Exception as exc:  # noqa: BLE001 - pynetdicom's DUL aborts on it
            out.append(f"raised {type(exc).__name__}")
    while True:
        try:
            out.append(assoc.dimse.msg_queue.get_nowait())
        except queue.Empty:
            break
    while not assoc.dul.event_queue.empty():
        out.append(assoc.dul.event_queue.get_nowait())  # "Evt19": an invalid message
    return out, seen


def _same(a, b) -> None:
    (cid_a, pa), (cid_b, pb) = a, b
    assert cid_a == cid_b and type(pa) is type(pb)
    assert pa._context_id == pb._context_id
    for name in ("MessageID", "MessageIDBeingRespondedTo", "AffectedSOPClassUID",
                 "AffectedSOPInstanceUID", "Priority", "Status",
                 "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID"):
        assert getattr(pa, name, None) == getattr(pb, name, None), name
    if isinstance(pa, C_STORE) and pa.DataSet is not None:
        assert pa.DataSet.getvalue() == pb.DataSet.getvalue()
    else:
        assert (getattr(pa, "DataSet", None) is None) == (getattr(pb, "DataSet", None) is None)


def _store_rq(data: bytes, max_pdu: int, cid: int = 3, originator=(None, None),
              msg_id: int = 7, priority: int = 2) -> list[P_DATA]:
    cmd = pdata.c_store_rq(msg_id, CT_IMAGE, "1.2.826.0.1.3680043.8.498.1", priority,
                           *originator)
    return _pdus(pdata.frame(cid, cmd, data, max_pdu))


@pytest.mark.parametrize("max_pdu", [16384, 0, 7, 1001, 16383, 65536])
@pytest.mark.parametrize("size", [1, 2, 9999, 100_001])
@pytest.mark.parametrize("originator", [(None, None), ("MOVESCU", 99)])
def test_R_H1_store_rq_assembled_as_pynetdicom_does(max_pdu, size, originator):
    """Multi-fragment data sets at 16 kB, unlimited and odd PDU sizes: the hand path
    queues the C-STORE primitive pynetdicom would, with the same data set bytes, and
    never calls pynetdicom."""
    if max_pdu == 7 and size > 9999:
        pytest.skip("one byte per PDU: slow and nothing new")
    data = os.urandom(size)
    prims = _store_rq(data, max_pdu, originator=originator)
    if max_pdu and size > max_pdu:
        assert len(prims) > 2  # really fragmented
    got, seen = _feed(prims, hand=True)
    want, _ = _feed(prims, hand=False)
    assert seen == [] and len(got) == len(want) == 1
    _same(got[0], want[0])
    assert got[0][1].DataSet.getvalue() == data


def test_R_H1_several_pdvs_in_one_pdu_and_back_to_back_messages():
    """Command and data set fragments as several PDVs of one P-DATA, then a second
    message: both queued in order, bit-exact."""
    first, second = os.urandom(3000), os.urandom(5)
    a = _store_rq(first, 1000, msg_id=1)
    b = _store_rq(second, 0, msg_id=2)
    merged = P_DATA()
    merged.presentation_data_value_list = [list(pdv) for p in a for pdv in p.presentation_data_value_list]
    got, seen = _feed([merged] + b, hand=True)
    assert seen == [] and [p.MessageID for _, p in got] == [1, 2]
    assert got[0][1].DataSet.getvalue() == first and got[1][1].DataSet.getvalue() == second


def _replayed(prims, **kw) -> None:
    """The hand path gave up: pynetdicom got every primitive, in order, and queued what
    it queues without the hand path."""
    got, seen = _feed(prims, hand=True, **kw)
    want, _ = _feed(prims, hand=False, **kw)
    assert [id(p) for p in seen] == [id(p) for p in prims]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if isinstance(w, str):
            assert g == w
        else:
            _same(g, w)


def test_wrong_context_id_on_a_data_fragment_goes_to_pynetdicom():
    prims = _store_rq(os.urandom(5000), 1000, cid=3)
    cid, data = prims[3].presentation_data_value_list[0]
    prims[3].presentation_data_value_list[0] = (5, data)
    _replayed(prims)


def test_command_fragment_inside_a_data_set_goes_to_pynetdicom():
    prims = _store_rq(os.urandom(5000), 1000)
    cid, data = prims[2].presentation_data_value_list[0]
    prims[2].presentation_data_value_list[0] = (cid, bytes([data[0] | 1]) + data[1:])
    _replayed(prims)


def test_fragments_after_the_last_in_the_same_pdata_go_to_pynetdicom():
    a, b = _store_rq(b"x" * 10, 0, msg_id=1), _store_rq(b"y" * 10, 0, msg_id=2)
    merged = P_DATA()
    merged.presentation_data_value_list = [list(pdv) for p in a + b
                                           for pdv in p.presentation_data_value_list]
    _replayed([merged])


def test_non_conformant_uid_same_as_pynetdicom():
    """A UID pynetdicom accepts with a warning (not enforcing conformance) is taken as
    it would take it."""
    cmd = pdata.c_store_rq(7, CT_IMAGE, "1.2.826.0.1.3680043.8.498.1").replace(
        b"1.2.826.0.1.3680043.8.498.1", b"1.2.826.0.1.3680043.8.498.a")
    prims = _pdus(pdata.frame(1, cmd, b"abc", 0))
    got, _ = _feed(prims, hand=True)
    want, _ = _feed(prims, hand=False)
    assert len(got) == len(want) == 1
    _same(got[0], want[0])


@pytest.mark.parametrize("change", ["unknown element", "priority 7", "no data",
                                    "echo", "group length only"])
def test_unusual_commands_go_to_pynetdicom(change):
    cmd = pdata.c_store_rq(7, CT_IMAGE, "1.2.826.0.1.3680043.8.498.1")
    if change == "unknown element":  # (0000,0901) Offending Element in a request
        cmd = cmd + struct.pack("<HHLL", 0, 0x0901, 4, 0x00100010)
    elif change == "priority 7":
        cmd = cmd.replace(struct.pack("<HHLH", 0, 0x0700, 2, 2), struct.pack("<HHLH", 0, 0x0700, 2, 7))
    elif change == "no data":
        cmd = cmd.replace(struct.pack("<HHLH", 0, 0x0800, 2, 1), struct.pack("<HHLH", 0, 0x0800, 2, 0x0101))
    elif change == "echo":
        echo = C_ECHO()
        echo.MessageID, echo.AffectedSOPClassUID = 1, "1.2.840.10008.1.1"
        msg = dimse_messages.C_ECHO_RQ()
        msg.primitive_to_message(echo)
        cmd = encode(msg.command_set, True, True)
    elif change == "group length only":
        cmd = struct.pack("<HHLL", 0, 0, 4, 0)
    prims = _pdus(pdata.frame(1, cmd, b"" if change in ("no data", "echo") else b"abc", 0))
    _replayed(prims)


def test_dimse_recv_handlers_and_chunked_mode_get_pynetdicom():
    prims = _store_rq(os.urandom(100), 0)
    got, seen = _feed(prims, hand=True, handlers=True)
    assert len(seen) == len(prims) and len(got) == 1


def test_BI24_incomplete_message_queues_nothing():
    """An association aborted in the middle of a data set: nothing reaches the handler."""
    prims = _store_rq(os.urandom(5000), 1000)
    got, seen = _feed(prims[:-1], hand=True)
    assert got == [] and seen == []


def test_store_rsp_taken_by_hand_only_while_sending():
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo, rsp.Status = 7, 0
    rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID = CT_IMAGE, "1.2.3.4"
    cmd = pdata.response_command(rsp)
    prims = _pdus(pdata.frame(1, cmd, b"", 0))
    got, seen = _feed(prims, hand=True, sending=True)
    want, _ = _feed(prims, hand=False)
    assert seen == [] and len(got) == 1
    _same(got[0], want[0])
    got, seen = _feed(prims, hand=True, sending=False)  # not waiting for it: pynetdicom's
    assert len(seen) == 1 and len(got) == 1


# --- a real server, raw sockets -----------------------------------------------------------

def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def _associate(port: int, syntaxes: list[str], max_pdu: int = 16384) -> socket.socket:
    """A-ASSOCIATE-RQ proposing Secondary Capture in each of ``syntaxes`` (context IDs
    1, 3, 5...); returns the socket once accepted."""
    pcs = b"".join(_item(0x20, bytes([2 * i + 1, 0, 0, 0]) + _item(0x30, SECONDARY_CAPTURE.encode())
                         + _item(0x40, ts.encode())) for i, ts in enumerate(syntaxes))
    ui = _item(0x50, _item(0x51, struct.pack(">L", max_pdu))
               + _item(0x52, b"1.2.826.0.1.3680043.9.3811.2.0.0"))
    body = (struct.pack(">HH", 1, 0) + b"PACSD".ljust(16) + b"RAWSCU".ljust(16)
            + bytes(32) + _item(0x10, b"1.2.840.10008.3.1.1.1") + pcs + ui)
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(struct.pack(">BBL", 0x01, 0, len(body)) + body)
    head = _recv(s, 6)
    assert head[:1] == b"\x02", head
    _recv(s, struct.unpack(">L", head[2:])[0])
    return s


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _status(s: socket.socket) -> int:
    """The Status of the C-STORE-RSP that comes next (one PDU, one PDV)."""
    head = _recv(s, 6)
    assert head[:1] == b"\x04", head
    body = _recv(s, struct.unpack(">L", head[2:])[0])
    fields = receive.command_fields(body[6:], receive.STORE_RSP_TAGS)
    assert fields is not None
    return int(fields[0x0900])


def _instance(ts: str) -> tuple[pydicom.Dataset, bytes]:
    """A new instance and its data set bytes in ``ts``."""
    ds = make_dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    if ts != ExplicitVRBigEndian:
        return ds, dataset_part(to_part10(ds, ts))[1]
    out = io.BytesIO()
    dcmwrite(out, ds, implicit_vr=False, little_endian=False, enforce_file_format=False)
    return ds, out.getvalue()


def _send(s, ds, data: bytes, cid: int, max_pdu: int, msg_id: int = 1) -> None:
    cmd = pdata.c_store_rq(msg_id, SECONDARY_CAPTURE, str(ds.SOPInstanceUID))
    for buf in pdata.frame(cid, cmd, data, max_pdu):
        s.sendall(buf)


def _release(s) -> None:
    s.sendall(struct.pack(">BBLL", 0x05, 0, 4, 0))
    s.settimeout(5)
    try:
        s.recv(64)
    except OSError:
        pass
    s.close()


@pytest.mark.parametrize("max_pdu", [16384, 0, 1001, 16383])
def test_R_A5_raw_c_store_fragmented_stored_bit_exact(pacs, max_pdu):
    """Data sets cut into PDUs of 16 kB, odd sizes and one fragment ("unlimited") are
    stored byte for byte, in each transfer syntax offered (explicit LE, implicit LE,
    explicit big endian: the data set bytes are never decoded on the way)."""
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
    s = _associate(pacs.dicom_port, syntaxes)
    sent = []
    for i, ts in enumerate(syntaxes):
        ds, data = _instance(ts)
        _send(s, ds, data, 2 * i + 1, max_pdu, msg_id=i + 1)
        assert _status(s) == 0x0000, ts
        sent.append((ds, ts, data))
    _release(s)
    for ds, ts, data in sent:
        meta, stored = dataset_part(wado_instance(pacs, ds))
        assert meta.TransferSyntaxUID == ts
        assert stored == data


def test_raw_c_store_wrong_context_id_refused_nothing_stored(pacs):
    """A C-STORE on a presentation context that was not accepted gets no Success and
    stores nothing (pynetdicom's answer, as before)."""
    s = _associate(pacs.dicom_port, [ExplicitVRLittleEndian])
    ds, data = _instance(ExplicitVRLittleEndian)
    _send(s, ds, data, 9, 16384)
    s.settimeout(10)
    try:
        head = s.recv(6)
    except OSError:
        head = b""
    if head[:1] == b"\x04":
        body = _recv(s, struct.unpack(">L", head[2:])[0])
        fields = receive.command_fields(body[6:], receive.STORE_RSP_TAGS)
        assert fields is None or fields[0x0900] != 0
    s.close()
    with pytest.raises(Exception):
        wado_instance(pacs, ds)


def test_BI24_abort_mid_data_set_keeps_earlier_and_writes_nothing_partial(pacs):
    """One instance stored, the next aborted half way through its data set: the first is
    there bit for bit, the second nowhere (no object, no index row, no staging file)."""
    s = _associate(pacs.dicom_port, [ExplicitVRLittleEndian])
    ds1, data1 = _instance(ExplicitVRLittleEndian)
    _send(s, ds1, data1, 1, 1001, msg_id=1)
    assert _status(s) == 0x0000
    ds2, data2 = _instance(ExplicitVRLittleEndian)
    cmd = pdata.c_store_rq(2, SECONDARY_CAPTURE, str(ds2.SOPInstanceUID))
    buffers = b"".join(pdata.frame(1, cmd, data2, 1001))
    s.sendall(buffers[:len(buffers) // 2])
    s.sendall(struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0, 0))  # A-ABORT
    s.close()
    time.sleep(0.5)
    assert dataset_part(wado_instance(pacs, ds1))[1] == data1
    with pytest.raises(Exception):
        wado_instance(pacs, ds2)
    staging = os.path.join(os.path.dirname(pacs.log.name), "blobs", "staging")
    assert os.path.isdir(staging) and os.listdir(staging) == []


# --- sends written on the sending thread (pdata.direct) ----------------------------------

class _Dul:
    """What pdata.install / pdata.direct touch of a DULServiceProvider."""

    def __init__(self) -> None:
        self.a, self.b = socket.socketpair()
        self.socket = type("AssocSocket", (), {"socket": self.a})()
        self.to_provider_queue: queue.Queue = queue.Queue()
        self.event_queue: queue.Queue = queue.Queue()
        self.state_machine = type("FSM", (), {"current_state": "Sta6"})()
        self.sent: list = []
        self._send = self.sent.append


def test_R_H1_direct_write_only_when_nothing_is_waiting():
    """The sending thread writes a buffer itself only in Sta6 with nothing queued for
    the DUL thread and nothing it took off the queue still unwritten; otherwise it
    must be queued (order on the wire = order of the sends)."""
    dul = _Dul()
    pdata.install(dul)
    assert pdata.direct(dul, bytearray(b"one"))
    assert dul.b.recv(16) == b"one"
    dul.to_provider_queue.put("queued")            # a primitive waiting for the DUL
    assert not pdata.direct(dul, bytearray(b"two"))
    dul.to_provider_queue.get(False)               # DT-1 took it off, not yet written
    assert not pdata.direct(dul, bytearray(b"two"))
    dul._send("pdu")                               # ... and wrote it
    assert dul.sent == ["pdu"]
    assert pdata.direct(dul, [b"tw", bytearray(b"o")])
    assert dul.b.recv(16) == b"two"
    dul.state_machine.current_state = "Sta7"       # release under way: the DUL's job
    assert not pdata.direct(dul, bytearray(b"x"))
    dul.state_machine.current_state = "Sta6"
    dul.a.close()                                  # a failed write: connection lost
    assert pdata.direct(dul, bytearray(b"x"))
    assert dul.event_queue.get_nowait() == "Evt17"
    assert not pdata.direct(_Dul(), bytearray(b"x"))  # not installed: never direct


def test_outgoing_carries_the_uids_as_pydicom_would():
    """net.Outgoing sets its two UIDs without pydicom's validation: same values, VR and
    type as ``ds.SOPClassUID = ...`` gives."""
    from pydicom.dataset import Dataset

    from pacsd.dimse.net import Outgoing
    out = Outgoing(CT_IMAGE, "1.2.826.0.1.3680043.8.498.1", lambda accepted: b"")
    ref = Dataset()
    ref.SOPClassUID, ref.SOPInstanceUID = CT_IMAGE, "1.2.826.0.1.3680043.8.498.1"
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        assert getattr(out, keyword) == getattr(ref, keyword)
        assert type(getattr(out, keyword)) is type(getattr(ref, keyword))
        assert out[keyword].VR == ref[keyword].VR == "UI"
    assert list(out.keys()) == list(ref.keys())
