"""Incoming DIMSE messages assembled by hand for the common cases (R-H1, issue 6).

pynetdicom's ``DIMSEServiceProvider.receive_primitive`` (on the DUL thread) writes every
fragment into a ``BytesIO``, decodes the finished command set into a pydicom Dataset
(``DIMSEMessage.decode_msg``) and copies it element by element into a primitive
(``message_to_primitive``): ~0.4 ms of a tiny C-STORE's ~3.5 ms CPU, and every C-STORE-RSP
of a C-GET/C-MOVE sub-operation pays its share of it. Here (:func:`install`) one message
at a time is followed:

* Command fragments are collected until the last one; the command set (Implicit VR Little
  Endian, group 0000) is read with ``struct`` (:func:`command_fields`).
* A **C-STORE-RQ** with a data set and nothing but the elements of PS3.7 9.3.1.1 has its
  data set fragments collected as they come (memoryviews of the received PDVs, no copy)
  and joined once when the last one is in; the ``C_STORE`` primitive is built and queued
  as pynetdicom's ``receive_primitive`` would (``msg_queue``, context ID). Its data set is
  a ``BytesIO`` over that one ``bytes`` object (``getvalue()`` is not a copy).
* A plain **C-STORE-RSP** (no data set, no Error Comment / Offending Element) while a
  pre-framed C-STORE waits for it (``pdata.send_c_store``) becomes pynetdicom's
  ``C_STORE`` response primitive.
* **Anything else** — other commands, unknown or repeated elements, a data set fragment
  on another presentation context than its command, a command fragment in the middle of
  a data set, fragments after the last one in the same P-DATA, an invalid value the
  primitive refuses, EVT_DIMSE_RECV handlers bound, pynetdicom's chunked-dataset mode —
  is replayed, primitive by primitive and in order, into pynetdicom's own
  ``receive_primitive``: pynetdicom sees exactly what it would have seen and answers as
  it always did (decode, abort on an invalid message).

With a ``prefix`` (``install(assoc, prefix=...)``: the C-STORE SCP's Part 10 preamble and
File Meta Information for the command, ``cstore.part10_prefix``) the data set is joined
behind it in the same single copy and handed on as a :class:`Part10Data`, so the handler
stores the object without copying the data set again (issue 6: a CT slice was copied
twice after arrival).

A message that never completes (A-ABORT, connection lost mid-data set) is never handed
on: nothing of it reaches the C-STORE handler, so nothing partial is written (BI-24).
Relies on pynetdicom 3.0.4's ``receive_primitive`` / ``message`` / ``msg_queue`` and the
``C_STORE`` primitive's ``_context_id`` (guard tests in tests/dimse/test_dimse_receive.py).
"""
from __future__ import annotations

import struct
from io import BytesIO
from typing import Any, Callable

from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE

_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")
_UL, _UI, _US_KIND, _AE = 0, 1, 2, 3
#: C-STORE-RSP (PS3.7 9.3.1.2): (group length), Affected SOP Class UID, Command Field,
#: Message ID Being Responded To, Command Data Set Type, Status, Affected SOP Instance UID.
STORE_RSP_TAGS = {0x0000: _UL, 0x0002: _UI, 0x0100: _US_KIND, 0x0120: _US_KIND,
                  0x0800: _US_KIND, 0x0900: _US_KIND, 0x1000: _UI}
#: C-STORE-RQ (PS3.7 9.3.1.1): (group length), Affected SOP Class UID, Command Field,
#: Message ID, Priority, Command Data Set Type, Affected SOP Instance UID, Move
#: Originator AE Title and Message ID.
STORE_RQ_TAGS = {0x0000: _UL, 0x0002: _UI, 0x0100: _US_KIND, 0x0110: _US_KIND,
                 0x0700: _US_KIND, 0x0800: _US_KIND, 0x1000: _UI, 0x1030: _AE,
                 0x1031: _US_KIND}
_STORE_RQ_REQUIRED = (0x0002, 0x0110, 0x0700, 0x1000)


def command_fields(command: bytes | memoryview, kinds: dict[int, int]
                   ) -> dict[int, int | str] | None:
    """The elements of a command set (Implicit VR Little Endian, group 0000) by element
    number, when it holds only elements of ``kinds`` (each once, well formed: UL and US
    of their length, ASCII text); None for anything else."""
    mv = memoryview(command)
    n = len(mv)
    pos = 0
    out: dict[int, int | str] = {}
    while pos < n:
        if pos + 8 > n:
            return None
        group, element, length = _ELEMENT.unpack_from(mv, pos)
        pos += 8
        end = pos + length
        kind = kinds.get(element)
        if group != 0 or kind is None or element in out or end > n:
            return None
        if kind == _UL:
            if length != 4:
                return None
            out[element] = struct.unpack_from("<L", mv, pos)[0]
        elif kind == _US_KIND:
            if length != 2:
                return None
            out[element] = _US.unpack_from(mv, pos)[0]
        else:
            raw = bytes(mv[pos:end])
            if not raw.isascii() or b"\\" in raw:
                return None
            out[element] = raw.decode("ascii").rstrip("\0 ") if kind == _UI \
                else raw.decode("ascii").strip(" ")
        pos = end
    return out


def store_rsp_fields(command: bytes | memoryview) -> dict[int, int | str] | None:
    """A plain C-STORE-RSP's elements (Command Field 0x8001, no data set), else None."""
    out = command_fields(command, STORE_RSP_TAGS)
    if (out is None or out.get(0x0100) != 0x8001 or out.get(0x0800) != 0x0101
            or 0x0120 not in out or 0x0900 not in out):
        return None
    return out


def store_rq_fields(command: bytes | memoryview) -> dict[int, int | str] | None:
    """A C-STORE-RQ's elements (Command Field 0x0001, a data set follows), else None."""
    out = command_fields(command, STORE_RQ_TAGS)
    if (out is None or out.get(0x0100) != 0x0001 or out.get(0x0800, 0x0101) == 0x0101
            or any(tag not in out for tag in _STORE_RQ_REQUIRED)):
        return None
    return out


def store_rsp_primitive(fields: dict[int, int | str], context_id: int) -> C_STORE:
    rsp = C_STORE()
    rsp._context_id = context_id
    rsp.MessageIDBeingRespondedTo = fields[0x0120]
    rsp.Status = fields[0x0900]
    if 0x0002 in fields:
        rsp.AffectedSOPClassUID = fields[0x0002]
    if 0x1000 in fields:
        rsp.AffectedSOPInstanceUID = fields[0x1000]
    return rsp


class Part10Data(BytesIO):
    """A received C-STORE data set that arrived behind a Part 10 prefix: ``part10`` is
    the whole object (preamble, File Meta Information, data set bytes as received) and
    ``offset`` where the data set starts. ``getvalue()`` is the data set (copied only
    when asked); reading starts at the data set. The C-STORE handler stores ``part10``
    as it is once it has checked the prefix is its own."""

    def __init__(self, part10: bytes, offset: int) -> None:
        super().__init__(part10)  # shares the bytes object: no copy
        self.seek(offset)
        self.part10 = part10
        self.offset = offset

    def getvalue(self) -> bytes:  # type: ignore[override]
        return self.part10[self.offset:]


def store_rq_primitive(fields: dict[int, int | str], context_id: int,
                       dataset: "bytes | Part10Data") -> C_STORE | None:
    """The ``C_STORE`` request primitive pynetdicom's ``message_to_primitive`` makes of
    these elements, or None when a value is one its setters refuse or drop (then
    pynetdicom decodes the message itself and answers as it always did)."""
    req = C_STORE()
    try:
        req.MessageID = fields[0x0110]
        req.AffectedSOPClassUID = fields[0x0002]
        req.AffectedSOPInstanceUID = fields[0x1000]
        req.Priority = fields[0x0700]
        if 0x1030 in fields:
            req.MoveOriginatorApplicationEntityTitle = fields[0x1030]
            if req.MoveOriginatorApplicationEntityTitle is None:
                return None
        if 0x1031 in fields:
            req.MoveOriginatorMessageID = fields[0x1031]
    except (ValueError, TypeError):
        return None
    if req.AffectedSOPClassUID is None or req.AffectedSOPInstanceUID is None:
        return None
    req.DataSet = dataset if isinstance(dataset, Part10Data) else BytesIO(dataset)
    req._context_id = context_id
    req._dataset_path = None
    req._dataset_file = None
    return req


class _Incoming:
    """The message being received: its P-DATA primitives (for a replay), command
    fragments, then, once the command is a C-STORE-RQ, its data set fragments."""

    __slots__ = ("primitives", "command", "cid", "fields", "fragments", "prefix")

    def __init__(self) -> None:
        self.primitives: list[Any] = []
        self.command: list[memoryview] = []
        self.cid: int | None = None
        self.fields: dict[int, int | str] | None = None
        self.fragments: list[memoryview] = []
        self.prefix: bytes | None = None


def install(assoc: Any, prefix: "Callable[[dict, int], bytes | None] | None" = None
            ) -> None:
    """Receive this association's DIMSE messages as the module docstring says
    (idempotent; before the association's first P-DATA). ``prefix(fields, context_id)``:
    the bytes to join in front of a C-STORE-RQ's data set (None: none); given once, by
    the first call."""
    dimse = assoc.dimse
    if getattr(dimse, "_pacsd_receive", False):
        return
    original = dimse.receive_primitive
    state: list[_Incoming | None] = [None]

    def replay(incoming: _Incoming) -> None:
        state[0] = None
        for primitive in incoming.primitives:
            original(primitive)

    def receive_primitive(primitive: Any) -> None:
        incoming = state[0]
        if incoming is None:
            items = primitive.presentation_data_value_list
            if (dimse.message is not None or not items or not items[0][1]
                    or not items[0][1][0] & 1 or pynetdicom_config.STORE_RECV_CHUNKED_DATASET
                    or assoc.get_handlers(evt.EVT_DIMSE_RECV)):
                original(primitive)  # pynetdicom's message under way, or not ours
                return
            incoming = state[0] = _Incoming()
        incoming.primitives.append(primitive)
        items = primitive.presentation_data_value_list
        last = len(items) - 1
        for index, (context_id, data) in enumerate(items):
            if not data:
                return replay(incoming)
            control = data[0]
            if incoming.fields is None:  # command phase
                if not control & 1:
                    return replay(incoming)
                incoming.command.append(memoryview(data)[1:])
                if not control & 2:
                    continue
                command = b"".join(incoming.command)
                if index == last and getattr(assoc, "_pacsd_sending", False):
                    rsp = store_rsp_fields(command)
                    if rsp is not None:  # a sub-operation's response (pdata.send_c_store)
                        state[0] = None
                        dimse.msg_queue.put((context_id, store_rsp_primitive(rsp, context_id)))
                        return None
                fields = store_rq_fields(command)
                if fields is None:
                    return replay(incoming)
                incoming.cid, incoming.fields = context_id, fields
                if prefix is not None:
                    try:
                        incoming.prefix = prefix(fields, context_id)
                    except Exception:  # noqa: BLE001 - only an optimisation: none then
                        incoming.prefix = None
            else:  # data set phase
                if control & 1 or context_id != incoming.cid:
                    return replay(incoming)
                incoming.fragments.append(memoryview(data)[1:])
                if not control & 2:
                    continue
                if index != last:
                    return replay(incoming)
                head = incoming.prefix
                if head:  # one copy: the prefix and the fragments
                    dataset: "bytes | Part10Data" = Part10Data(
                        b"".join([head, *incoming.fragments]), len(head))
                else:
                    dataset = b"".join(incoming.fragments)
                request = store_rq_primitive(incoming.fields, context_id, dataset)
                if request is None:
                    return replay(incoming)
                state[0] = None
                dimse.msg_queue.put((context_id, request))
        return None

    dimse.receive_primitive = receive_primitive
    dimse._pacsd_receive = True
