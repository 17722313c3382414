"""Pre-framed C-STORE requests: a stored instance goes out as whole P-DATA-TF PDUs (R-H1).

pynetdicom sends a C-STORE data set as one ``P_DATA`` primitive per fragment: at DCMTK's
16 kB maximum PDU a 0.5 MB CT slice is ~32 primitives, each a queue hop, a state-machine
transition, a PDU object and an encode in Python (8-10 ms of CPU per instance, against
Orthanc's 0.8 ms). Here the C-STORE-RQ command set (Implicit VR Little Endian, encoded by
:func:`c_store_rq`, byte-identical to pynetdicom's) and the data set bytes of the Part 10
object (as stored, or the transcode the caller made) are cut into the same PDUs in one
pass (:func:`frame`: 12 header bytes per fragment, the peer's maximum PDU length
respected, ``0`` = unlimited) and handed to pynetdicom's DUL thread as one
:class:`FramedPData` primitive per :data:`WRITE_BYTES` of data.

The state machine stays pynetdicom's: a :class:`FramedPData` is a ``P_DATA`` (Evt9, action
DT-1, Sta6 -> Sta6), queued on the DUL's provider queue behind anything already there; the
per-DUL ``_send`` that :func:`install` sets writes its buffer with one ``sendall`` instead
of encoding a PDU object (any other PDU goes to pynetdicom's own ``_send``). When nothing
queued for the DUL thread is unwritten and the association is in Sta6, the sending thread
writes the buffer itself instead (:func:`direct`, under the same per-DUL lock as ``_send``). The response is read by pynetdicom as before
(``dimse.get_msg``); instead of pausing the reactor (``Association.send_c_store``), the
reactor is kept off the message queue meanwhile (:func:`guard`).
Not triggered for these PDUs: EVT_DIMSE_SENT, EVT_PDU_SENT, EVT_DATA_SENT (pacsd binds no
handler to them; their pynetdicom log handlers are off, ``server.configure_pynetdicom``).
"""
from __future__ import annotations

import ssl
import struct
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator

from pydicom.dataset import Dataset
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.utils import set_ae

from . import receive

#: Data bytes per socket write (one FramedPData): large objects go out in a few writes,
#: so at most this much is framed (copied) at a time.
WRITE_BYTES = 4 * 1024 * 1024
#: Buffers queued to the DUL thread and not yet written, at most (memory bound for
#: large objects: about this many times WRITE_BYTES).
IN_FLIGHT = 2
#: Fragment size for a peer with no maximum PDU length (0): any size is allowed.
UNLIMITED_FRAGMENT = WRITE_BYTES
#: PDU header (type, reserved, length) + PDV item header (length, context ID, control).
HEADER = struct.Struct(">BBLLBB")
_TS = 0x00020010
_SOP_CLASS = 0x00020002
_SOP_INSTANCE = 0x00020003
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})


class Part10Error(ValueError):
    """Not a Part 10 object this module can split (no DICM prefix, broken meta)."""


def split_part10(data: bytes | memoryview) -> tuple[dict[int, str], int]:
    """(File Meta Information string values by tag, offset of the data set) of a Part 10
    object: the group 0002 elements are always Explicit VR Little Endian."""
    mv = memoryview(data)
    if len(mv) < 132 or bytes(mv[128:132]) != b"DICM":
        raise Part10Error("no DICM prefix")
    meta: dict[int, str] = {}
    pos = 132
    while len(mv) >= pos + 8 and mv[pos] == 0x02 and mv[pos + 1] == 0x00:
        group, element = struct.unpack_from("<HH", mv, pos)
        vr = bytes(mv[pos + 4:pos + 6])
        if vr in _LONG_VRS:
            if len(mv) < pos + 12:
                raise Part10Error("truncated file meta")
            length = struct.unpack_from("<L", mv, pos + 8)[0]
            start = pos + 12
        else:
            length = struct.unpack_from("<H", mv, pos + 6)[0]
            start = pos + 8
        end = start + length
        if length == 0xFFFFFFFF or end > len(mv):
            raise Part10Error("truncated file meta")
        if vr == b"UI":
            meta[(group << 16) | element] = bytes(mv[start:end]).decode(
                "ascii", "replace").rstrip("\0 ")
        pos = end
    return meta, pos


def stored_syntax(data: bytes | memoryview) -> tuple[str, str, str, int]:
    """(SOP Class UID, SOP Instance UID, Transfer Syntax UID, data set offset) from the
    File Meta Information — what pynetdicom's file-based send_c_store takes them from."""
    meta, offset = split_part10(data)
    try:
        return meta[_SOP_CLASS], meta[_SOP_INSTANCE], meta[_TS], offset
    except KeyError:
        raise Part10Error("file meta without Media Storage SOP Class/Instance UID or "
                          "Transfer Syntax UID") from None


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def c_store_rq(msg_id: int, sop_class: str, sop_instance: str, priority: int = 2,
               originator_aet: str | None = None, originator_id: int | None = None
               ) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1), Implicit VR Little Endian, with a data
    set present — the bytes pynetdicom's ``C_STORE_RQ`` encodes for the same values."""
    if not 0 <= msg_id <= 0xFFFF or priority not in (0, 1, 2):
        raise ValueError("Message ID or Priority out of range")
    us = struct.Struct("<H").pack
    body = [_element(0x00000002, _ui(sop_class)), _element(0x00000100, us(0x0001)),
            _element(0x00000110, us(msg_id)), _element(0x00000700, us(priority)),
            _element(0x00000800, us(0x0001)), _element(0x00001000, _ui(sop_instance))]
    aet = set_ae(originator_aet, "Move Originator AE Title") if originator_aet else None
    if aet:
        raw = aet.encode("ascii")
        body.append(_element(0x00001030, raw + b" " if len(raw) % 2 else raw))
    if originator_id is not None:
        body.append(_element(0x00001031, us(originator_id)))
    rest = b"".join(body)
    return _element(0x00000000, struct.pack("<L", len(rest))) + rest


def _fragments(data: memoryview, control_more: int, control_last: int, size: int
               ) -> Iterator[tuple[memoryview, int]]:
    n = len(data)
    for start in range(0, n, size):
        end = min(start + size, n)
        yield data[start:end], control_last if end == n else control_more


def frame(context_id: int, command: bytes, dataset: bytes | memoryview, max_pdu: int,
          write_bytes: int = WRITE_BYTES) -> Iterator[bytearray]:
    """P-DATA-TF PDUs for one message, in buffers of about ``write_bytes`` of data each:
    one PDV per PDU, command fragments (control 0x01, last 0x03) then data set fragments
    (0x00, last 0x02), each fragment at most ``max_pdu - 6`` bytes (PS3.8 9.3.5: the PDU
    length is at most the peer's maximum; 0 = no maximum) — pynetdicom's fragmentation."""
    if max_pdu and max_pdu < 7:
        raise ValueError("the peer's maximum PDU length is too small to carry data")
    size = max_pdu - 6 if max_pdu else UNLIMITED_FRAGMENT
    buf = bytearray()
    for data, more, last in ((memoryview(command), 0x01, 0x03),
                             (memoryview(dataset), 0x00, 0x02)):
        for chunk, control in _fragments(data, more, last, size):
            n = len(chunk)
            buf += HEADER.pack(0x04, 0, n + 6, n + 2, context_id, control)
            buf += chunk
            if len(buf) >= write_bytes:
                yield buf
                buf = bytearray()
    if buf:
        yield buf


class _Framed(bytes):
    """The PDV value of a :class:`FramedPData`: empty bytes that carry the buffer, so
    the P_DATA_TF that DT-1 builds from the primitive still leads to it."""

    buf: bytearray
    sent: threading.Event


class FramedPData(P_DATA):
    """A P-DATA request whose PDUs are already encoded (``framed``); ``sent`` is set once
    the DUL thread has written them (or failed to)."""

    def __init__(self, framed: bytearray | list, context_id: int) -> None:
        super().__init__()
        mark = _Framed()
        mark.buf = framed
        mark.sent = self.sent = threading.Event()
        self.presentation_data_value_list.append((context_id, mark))


def guard(assoc: Any) -> None:
    """Keep this association's reactor off the DIMSE message queue while a pre-framed
    C-STORE waits for its response.

    pynetdicom's ``send_c_store`` pauses the reactor for that: it clears a checkpoint
    and waits for a "paused" flag the reactor sets before blocking on it. On a
    requestor (C-MOVE destination, forwarding) that costs up to the reactor's 1 ms
    sleep per C-STORE, and right after the previous C-STORE resumed it the flag still
    reads "paused" until the reactor thread runs: a C-STORE started at once (the next
    sub-operation, read ahead) was answered while the resuming reactor took the
    response off the queue (sub-operations failing after the DIMSE timeout; main shows
    it now and then). Instead the reactor keeps running (release, abort and timeout
    checks as usual) and its non-blocking ``get_msg`` sees nothing while
    ``_pacsd_sending`` is set; the sender's blocking ``get_msg`` is pynetdicom's own.
    On an acceptor (C-GET) the caller is the reactor thread itself."""
    dimse = assoc.dimse
    if getattr(dimse, "_pacsd_guarded", False):
        return
    original = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if not block and getattr(assoc, "_pacsd_sending", False):
            return None, None
        return original(block)

    dimse.get_msg = get_msg
    dimse._pacsd_guarded = True


def install(dul: Any) -> None:
    """Let this DUL write :class:`FramedPData` buffers as they are (module docstring),
    and let the sending thread write them itself when nothing is waiting (:func:`direct`).
    Call before pacsd queues anything on the association (``net.prepare_association``)."""
    if getattr(dul, "_pacsd_framed", False):
        return
    original = dul._send
    lock = threading.Lock()
    queue = dul.to_provider_queue
    get = queue.get

    def dequeue(*args: Any, **kwargs: Any) -> Any:
        # The DUL's actions take the primitive off the queue and then write its PDU
        # (DT-1); until that write, a sending thread must not write past it.
        with lock:
            item = get(*args, **kwargs)
            dul._pacsd_dequeued = True
            return item

    def send(pdu: Any) -> None:
        with lock:
            try:
                items = getattr(pdu, "presentation_data_value_items", None)
                if items and len(items) == 1 and isinstance(
                        items[0].presentation_data_value, _Framed):
                    mark = items[0].presentation_data_value
                    try:
                        _write(dul, mark.buf)
                    finally:
                        mark.sent.set()
                    return
                original(pdu)
            finally:
                dul._pacsd_dequeued = False

    dul._pacsd_dequeued = False
    dul._pacsd_wlock = lock
    queue.get = dequeue
    dul._send = send
    dul._pacsd_framed = True


def direct(dul: Any, buf: bytearray | list) -> bool:
    """Write ``buf`` (whole P-DATA-TF PDUs) on this thread, when the association is in
    data transfer (Sta6: DT-1 writes and stays), on a plain TCP socket, and nothing
    queued for the DUL thread is unwritten (its queue is empty and no primitive it took
    off is still being written): the order on the wire stays the order of the sends,
    and the hop to the DUL thread and back (two thread wake-ups, a GIL hand-off, each
    waiting for a CPU on a busy machine) is saved (issue 6). False: queue it instead
    (:class:`FramedPData`). TLS sockets always go through the DUL thread (one thread
    reads and writes an SSL object)."""
    lock = getattr(dul, "_pacsd_wlock", None)
    sock = getattr(dul.socket, "socket", None)
    if lock is None or sock is None or isinstance(sock, ssl.SSLSocket):
        return False
    with lock:
        if (dul._pacsd_dequeued or dul.to_provider_queue.qsize()
                or dul.state_machine.current_state != "Sta6"):
            return False
        _write(dul, buf)
    return True


def _write(dul: Any, buf: bytearray | list) -> None:
    sock = getattr(dul.socket, "socket", None)
    if sock is None:
        return
    try:
        if isinstance(buf, list):
            _sendmsg_all(sock, buf)
        else:
            sock.sendall(buf)
    except Exception:  # noqa: BLE001 - like AssociationSocket.send: Evt17, connection lost
        event = getattr(dul, "pacsd_event", None)  # wakes a waiting DUL thread
        if event is not None:
            event("Evt17")
        else:
            dul.event_queue.put("Evt17")


def _sendmsg_all(sock: Any, bufs: list) -> None:
    """``sendall`` of several buffers in order, without joining them (one ``sendmsg``
    per try; what a partial send left is sent next). TLS sockets: one at a time."""
    if isinstance(sock, ssl.SSLSocket):
        for b in bufs:
            sock.sendall(b)
        return
    views = [memoryview(b) for b in bufs if len(b)]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


class Prepared:
    """A Part 10 object made ready to send on one association: its SOP Class/Instance
    UIDs, the presentation context it goes on and its data set already cut into
    P-DATA-TF PDUs (:func:`frame_dataset`), while the previous sub-operation waits for
    its response (:func:`send_c_store` ``after_send``); only the C-STORE-RQ command,
    which carries the Message ID, is framed at send time."""

    __slots__ = ("assoc", "sop_class", "sop_instance", "cid", "buffers")

    def __init__(self, assoc: Any, part10: bytes | bytearray | memoryview) -> None:
        sop_class, sop_instance, ts, offset = stored_syntax(part10)
        self.assoc = assoc
        self.sop_class, self.sop_instance = sop_class, sop_instance
        self.cid = int(_context(assoc, sop_class, ts).context_id)
        self.buffers = list(frame_dataset(self.cid, memoryview(part10)[offset:],
                                          int(assoc.dimse.maximum_pdu_size or 0)))


def frame_dataset(context_id: int, dataset: bytes | memoryview, max_pdu: int,
                  write_bytes: int = WRITE_BYTES) -> Iterator[bytearray]:
    """The data set fragments of :func:`frame` alone (an empty command has none)."""
    return frame(context_id, b"", dataset, max_pdu, write_bytes)


def _context(assoc: Any, sop_class: str, ts: str) -> Any:
    contexts = assoc.__dict__.setdefault("_pacsd_contexts", {})  # fixed once negotiated
    context = contexts.get((sop_class, ts))
    if context is None:
        context = assoc._get_valid_context(sop_class, ts, "scu", allow_conversion=False)
        contexts[(sop_class, ts)] = context
    return context


def send_c_store(assoc: Any, part10: "bytes | memoryview | Prepared", msg_id: int,
                 priority: int = 2, originator_aet: str | None = None,
                 originator_id: int | None = None,
                 after_send: "Callable[[Any], None] | None" = None) -> Dataset:
    """``Association.send_c_store`` for a Part 10 object in memory (or already
    :class:`Prepared` for this association), pre-framed: the same context choice (the
    stored transfer syntax, no conversion), response handling and return value (the
    status Dataset; empty when no response came). ``after_send(assoc)`` runs once the
    object is queued for sending, before waiting for the response (prepare the next
    one while the peer stores this one); its errors are ignored."""
    if not assoc.is_established:
        raise RuntimeError("The association with a peer SCP must be established before "
                           "sending a C-STORE request")
    if isinstance(part10, Prepared) and part10.assoc is assoc:
        prepared = part10
    else:
        prepared = Prepared(assoc, part10)
    command = c_store_rq(msg_id, prepared.sop_class, prepared.sop_instance, priority,
                         originator_aet, originator_id)
    cid = prepared.cid
    dul = assoc.dul
    install(dul)
    head = list(frame(cid, command, b"", int(assoc.dimse.maximum_pdu_size or 0)))
    data = prepared.buffers
    prepared.buffers = []          # sent once; the caller's reference frees nothing more
    # The command and the first data buffer go out in one sendmsg.
    writes: list = [head + data[:1]] + data[1:]
    guard(assoc)
    receive.install(assoc)  # the response decoded by hand (receive.py)
    assoc._pacsd_sending = True  # the reactor cannot take the response (guard)
    try:
        in_flight: deque[threading.Event] = deque()
        while writes and direct(dul, writes[0]):  # this thread writes, or the DUL does
            writes.pop(0)
        for buf in writes:
            if len(in_flight) >= IN_FLIGHT:
                _wait_written(dul, in_flight.popleft())
            primitive = FramedPData(buf, cid)
            dul.send_pdu(primitive)
            in_flight.append(primitive.sent)
        del writes, data, head
        if after_send is not None:
            try:
                after_send(assoc)
            except Exception:  # noqa: BLE001 - only a read ahead; the send path reports
                pass
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._pacsd_sending = False
    if rsp is None:
        assoc._handle_no_response()
        return Dataset()
    return assoc._check_received_status(rsp)


def _wait_written(dul: Any, sent: threading.Event) -> None:
    while not sent.wait(0.5):
        if not dul.is_alive():
            raise RuntimeError("the association was lost while sending")


# --- responses -------------------------------------------------------------------------------

_RSP_FIELDS = {"C_STORE": 0x8001, "C_GET": 0x8010, "C_MOVE": 0x8021}
_COUNTS = ((0x00001020, "NumberOfRemainingSuboperations"),
           (0x00001021, "NumberOfCompletedSuboperations"),
           (0x00001022, "NumberOfFailedSuboperations"),
           (0x00001023, "NumberOfWarningSuboperations"))


def response_command(primitive: Any) -> bytes | None:
    """The command set of a C-STORE-RSP, or of a C-GET-RSP / C-MOVE-RSP without an
    identifier, with no Offending Element or Error Comment — the responses sent once per
    instance — encoded as pynetdicom's ``primitive_to_message`` + ``encode`` would;
    ``None`` for anything else (pynetdicom encodes it)."""
    field = _RSP_FIELDS.get(type(primitive).__name__)
    if (field is None or primitive.MessageIDBeingRespondedTo is None
            or primitive.Status is None
            or getattr(primitive, "ErrorComment", None) is not None
            or getattr(primitive, "OffendingElement", None) is not None
            or getattr(primitive, "Identifier", None) is not None):
        return None
    us = struct.Struct("<H").pack
    body = []
    if primitive.AffectedSOPClassUID is not None:
        body.append(_element(0x00000002, _ui(str(primitive.AffectedSOPClassUID))))
    body += [_element(0x00000100, us(field)),
             _element(0x00000120, us(int(primitive.MessageIDBeingRespondedTo))),
             _element(0x00000800, us(0x0101)),
             _element(0x00000900, us(int(primitive.Status)))]
    if field == 0x8001:
        if primitive.AffectedSOPInstanceUID is not None:
            body.append(_element(0x00001000, _ui(str(primitive.AffectedSOPInstanceUID))))
    else:
        for tag, keyword in _COUNTS:
            value = getattr(primitive, keyword)
            if value is not None:
                body.append(_element(tag, us(int(value))))
    rest = b"".join(body)
    return _element(0x00000000, struct.pack("<L", len(rest))) + rest


def install_responses(assoc: Any) -> None:
    """Send the per-instance responses of :func:`response_command` pre-framed (one
    FramedPData through the DUL's queue, in order with everything else); any other
    message through pynetdicom's ``send_msg``."""
    dimse = assoc.dimse
    if getattr(dimse, "_pacsd_responses", False):
        return
    original = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        command = response_command(primitive)
        if command is None:
            original(primitive, context_id)
            return
        dul = assoc.dul
        install(dul)
        for buf in frame(context_id, command, b"", int(dimse.maximum_pdu_size or 0)):
            if not direct(dul, buf):
                dul.send_pdu(FramedPData(buf, context_id))

    dimse.send_msg = send_msg
    dimse._pacsd_responses = True

