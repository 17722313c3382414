"""A received C-STORE-RQ's data set joined behind its Part 10 prefix on arrival (issue 6):
``receive.install(assoc, prefix=cstore.part10_prefix(assoc))`` copies the fragments once,
behind the preamble and File Meta Information the C-STORE SCP stores the object with; the
handler stores that buffer as it is when the prefix is exactly its own, and builds the
object as before otherwise. Either way the stored bytes are the same."""
from __future__ import annotations

import os
import queue
from types import SimpleNamespace

from pynetdicom import dimse
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsd.dimse import cstore, pdata, receive

from test_dimse_receive import CT_IMAGE, _pdus  # noqa: E402

SOP = "1.2.826.0.1.3680043.8.498.1"


class _Assoc:
    def __init__(self, ts: str, calling: str = "STORESCU") -> None:
        self.dul = SimpleNamespace(event_queue=queue.Queue())
        self.dimse = dimse.DIMSEServiceProvider(self)  # type: ignore[arg-type]
        self._accepted_cx = {3: SimpleNamespace(transfer_syntax=[ts])}
        self.requestor = SimpleNamespace(ae_title=calling)

    def get_handlers(self, event):
        return []


def _dataset(ts_implicit: bool) -> bytes:
    """A small data set whose first elements are SOP Class/Instance UID."""
    import struct

    def el(tag, vr, value):
        if ts_implicit:
            return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    cls = CT_IMAGE.encode() + (b"\0" if len(CT_IMAGE) % 2 else b"")
    sop = SOP.encode() + (b"\0" if len(SOP) % 2 else b"")
    return el(0x00080016, b"UI", cls) + el(0x00080018, b"UI", sop) + os.urandom(3000)


def _received(assoc, data: bytes, max_pdu: int = 1001):
    receive.install(assoc, prefix=cstore.part10_prefix(assoc))
    cmd = pdata.c_store_rq(7, CT_IMAGE, SOP)
    for p in _pdus(pdata.frame(3, cmd, data, max_pdu)):
        assoc.dimse.receive_primitive(p)
    cid, req = assoc.dimse.msg_queue.get_nowait()
    return req


def _event(assoc, req, ts):
    return SimpleNamespace(request=req, assoc=assoc,
                           context=SimpleNamespace(transfer_syntax=ts), file_meta=None)


def _stored(event) -> bytes:
    got = []
    ctx = SimpleNamespace(ingest=SimpleNamespace(
        ingest_bytes_sync=lambda data, actor: got.append(data) or "ok"))
    assert cstore._store(event, ctx, actor=None) == "ok"
    return got[0]


def test_data_set_arrives_behind_the_prefix_and_is_stored_as_is():
    for ts, implicit in ((ExplicitVRLittleEndian, False), (ImplicitVRLittleEndian, True)):
        assoc = _Assoc(ts)
        data = _dataset(implicit)
        req = _received(assoc, data)
        assert isinstance(req.DataSet, receive.Part10Data)
        assert req.DataSet.getvalue() == data  # the data set, as pynetdicom's would be
        assert req.DataSet.read() == data
        expected = cstore.PREAMBLE + cstore.file_meta_bytes(CT_IMAGE, SOP, ts, "STORESCU") \
            + data
        assert req.DataSet.part10 == expected
        stored = _stored(_event(assoc, req, ts))
        assert stored is req.DataSet.part10  # no copy
        assert stored == expected


def test_handler_builds_the_object_itself_when_the_prefix_is_not_its_own():
    ts = ExplicitVRLittleEndian
    assoc = _Assoc(ts, calling="OTHER")
    data = _dataset(False)
    req = _received(assoc, data)
    assoc.requestor.ae_title = "STORESCU"  # the handler's view differs from the prefix's
    stored = _stored(_event(assoc, req, ts))
    assert stored == cstore.PREAMBLE + cstore.file_meta_bytes(CT_IMAGE, SOP, ts,
                                                              "STORESCU") + data


def test_no_prefix_for_an_unknown_context_or_odd_values():
    assoc = _Assoc(ExplicitVRLittleEndian)
    prefix = cstore.part10_prefix(assoc)
    assert prefix({0x0002: CT_IMAGE, 0x1000: SOP}, 9) is None
    assert prefix({0x0002: CT_IMAGE, 0x1000: "1.2.x"}, 3) is None  # not a plain UID
    req = _received(_Assoc("1.2.840.10008.1.2.1.99"), b"\x08\x00\x16\x00UI\x02\x001\0")
    # deflate etc.: still Part10Data with that syntax in the meta; the handler checks
    assert req.DataSet.getvalue() == b"\x08\x00\x16\x00UI\x02\x001\0"


def test_BI35_mismatch_still_refused_on_the_joined_buffer():
    ts = ExplicitVRLittleEndian
    assoc = _Assoc(ts)
    data = _dataset(False).replace(SOP.encode(), SOP[:-1].encode() + b"9")
    req = _received(assoc, data)
    try:
        _stored(_event(assoc, req, ts))
    except cstore.st.DatasetMismatch:
        pass
    else:
        raise AssertionError("BI-35 mismatch not refused")
