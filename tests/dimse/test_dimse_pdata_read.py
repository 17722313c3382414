"""P-DATA-TF PDUs read by pacsd in data transfer (issue 6, R-H1, BI-33/BI-34).

``net.BusyAwareDUL._pacsd_read_pdata`` reads a P-DATA-TF PDU in Sta6 into one buffer and
hands its PDV items to ``dimse.receive_primitive`` itself (what the state machine's DT-2
does) instead of pynetdicom's read, PDU objects, event queue and state machine. Checked
here against pynetdicom's own path on the same bytes: the same primitives reach DIMSE;
whatever pynetdicom would refuse or treat otherwise goes to pynetdicom (same events);
the PDU guard's limits still hold. Also: the DUL loop's ``time.sleep(0)`` after a wait
returns at once, and in Sta6 the DUL waits for its wake-ups longer than 1 ms.
"""
from __future__ import annotations

import inspect
import socket
import struct
import threading
import time

import pynetdicom.dul as pydul
from pynetdicom.dul import DULServiceProvider

from pacsd.dimse import net


class _Dimse:
    def __init__(self) -> None:
        self.got: list[list] = []

    def receive_primitive(self, primitive) -> None:
        self.got.append([(cid, bytes(data))
                         for cid, data in primitive.presentation_data_value_list])


class _Assoc:
    def __init__(self, handlers: dict | None = None) -> None:
        self.dimse = _Dimse()
        self.handlers = handlers or {}

    def get_handlers(self, event):
        return self.handlers.get(event, [])


class _Sock:
    def __init__(self, sock) -> None:
        self.socket = sock
        self.ready = True


def _dul(policy: net.Policy | None = None, handlers: dict | None = None):
    assoc = _Assoc(handlers)
    dul = DULServiceProvider(assoc)
    net.busy_aware(dul)
    a, b = socket.socketpair()
    s = _Sock(a)
    dul.socket = s
    s.recv = lambda n: net._guarded_recv(s, policy or net.Policy([], 16384, 5.0), n)
    if policy is not False:
        s._pacsd_policy = policy or net.Policy([], 16384, 5.0)
    dul.state_machine.current_state = "Sta6"
    return dul, assoc, a, b


def pdu(*items: tuple[int, bytes]) -> bytes:
    body = b"".join(struct.pack(">LB", len(d) + 1, cid) + d for cid, d in items)
    return struct.pack(">BBL", 4, 0, len(body)) + body


def _pynetdicom_path(data: bytes):
    """What pynetdicom does with ``data``: read, then the queued event's action."""
    dul, assoc, a, b = _dul(policy=False)
    b.sendall(data)
    DULServiceProvider._read_pdu_data(dul)
    events = list(dul.event_queue.queue)
    if events == ["Evt10"]:
        dul.state_machine.do_action(dul.event_queue.get())
    return assoc.dimse.got, events


def _pacsd_path(data: bytes, **kw):
    dul, assoc, a, b = _dul(**kw)
    b.sendall(data)
    dul._read_pdu_data()
    events = list(dul.event_queue.queue)
    if events == ["Evt10"]:
        dul.state_machine.do_action(dul.event_queue.get())
    return assoc.dimse.got, events, dul


def test_same_primitives_as_pynetdicom():
    cases = [
        pdu((1, b"\x03" + b"cmd" * 10)),
        pdu((3, b"\x00" + bytes(range(256)) * 64)),
        pdu((1, b"\x01abc"), (1, b"\x03def"), (1, b"\x00data"), (1, b"\x02end")),
        pdu((5, b"\x02")),  # a last data set fragment with no data
    ]
    for data in cases:
        got, events, dul = _pacsd_path(data)
        assert (got, events) == (_pynetdicom_path(data)[0], [])  # handed on directly
        assert dul.state_machine.current_state == "Sta6"


def test_what_pynetdicom_would_refuse_goes_to_pynetdicom():
    bad = [
        struct.pack(">BBL", 4, 0, 0),                          # no item
        struct.pack(">BBL", 4, 0, 5) + struct.pack(">LB", 1, 1),   # item of 1 byte
        struct.pack(">BBL", 4, 0, 6) + struct.pack(">LBB", 9, 1, 3),  # item past the end
        struct.pack(">BBL", 4, 0, 9) + struct.pack(">LBB", 2, 1, 3) + b"\0\0\0",  # 3 bytes left
    ]
    for data in bad:
        expected = _pynetdicom_path(data)
        try:
            got = _pacsd_path(data)[:2]
        except Exception as exc:  # pynetdicom's action raised: so must ours
            got = type(exc)
            try:
                _pynetdicom_path(data)
            except Exception as exc2:
                expected = type(exc2)
        assert got == expected, data


def test_other_pdus_and_other_states_are_pynetdicoms():
    release_rq = struct.pack(">BBL", 5, 0, 4) + b"\0" * 4
    got, events, _ = _pacsd_path(release_rq)
    assert events == ["Evt12"] and got == []
    dul, assoc, a, b = _dul()
    dul.state_machine.current_state = "Sta7"
    b.sendall(pdu((1, b"\x03x")))
    assert dul._pacsd_read_pdata() is False
    dul.state_machine.current_state = "Sta6"
    dul.event_queue.put("Evt18")  # something queued first: in order, pynetdicom's way
    assert dul._pacsd_read_pdata() is False
    dul.event_queue.get()
    assert dul._pacsd_read_pdata() is True and assoc.dimse.got == [[(1, b"\x03x")]]


def test_handlers_bound_or_no_policy_or_tls_keep_pynetdicoms_read():
    from pynetdicom import evt
    for event in (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_FSM_TRANSITION):
        dul, assoc, a, b = _dul(handlers={event: [(print, None)]})
        b.sendall(pdu((1, b"\x03x")))
        assert dul._pacsd_read_pdata() is False
    dul, assoc, a, b = _dul(policy=False)
    b.sendall(pdu((1, b"\x03x")))
    assert dul._pacsd_read_pdata() is False
    dul, assoc, a, b = _dul()
    assert dul._pacsd_read_pdata() is False  # nothing there yet


def test_half_a_header_is_read_by_pynetdicom():
    dul, assoc, a, b = _dul()
    b.sendall(pdu((1, b"\x03x"))[:3])
    assert dul._pacsd_read_pdata() is False


def test_guard_limits_still_apply():
    policy = net.Policy([], 16384, 0.3)
    # declared above the limit: the guarded read aborts (A-ABORT, reason 6), Evt17
    dul, assoc, a, b = _dul(policy=policy)
    b.sendall(struct.pack(">BBL", 4, 0, policy.pdu_limit + 1))
    dul._read_pdu_data()
    assert list(dul.event_queue.queue) == ["Evt17"]
    assert b.recv(100) == net.a_abort(2, 6)
    # too slow: A-ABORT (reason 0), Evt17
    dul, assoc, a, b = _dul(policy=policy)
    b.sendall(pdu((1, b"\x03" + b"x" * 100))[:50])
    t0 = time.monotonic()
    dul._read_pdu_data()
    assert 0.25 < time.monotonic() - t0 < 3
    assert list(dul.event_queue.queue) == ["Evt17"] and assoc.dimse.got == []
    assert b.recv(100) == net.a_abort(2, 0)
    # peer closes mid-PDU: Evt17, nothing handed on
    dul, assoc, a, b = _dul(policy=policy)
    b.sendall(pdu((1, b"\x03" + b"x" * 100))[:50])
    b.close()
    dul._read_pdu_data()
    assert list(dul.event_queue.queue) == ["Evt17"] and assoc.dimse.got == []


def test_a_pdu_arriving_in_pieces_is_read_whole():
    dul, assoc, a, b = _dul()
    data = pdu((1, b"\x02" + b"y" * 300000))
    b.sendall(data[:10])
    t = threading.Timer(0.05, lambda: b.sendall(data[10:]))
    t.start()
    assert dul._pacsd_read_pdata() is True
    t.join()
    assert assoc.dimse.got == [[(1, b"\x02" + b"y" * 300000)]]


def test_dul_sleep_zero_returns_at_once_only_in_a_dul_thread():
    assert isinstance(pydul.time, net._DulTime)
    assert "time.sleep(self._run_loop_delay)" in inspect.getsource(
        DULServiceProvider.run_reactor)
    dul, assoc, a, b = _dul()
    seen = []
    real = time.sleep
    try:
        time.sleep = lambda s: seen.append(s)  # type: ignore[assignment]
        current = threading.current_thread
        threading.current_thread = lambda: dul  # type: ignore[assignment]
        try:
            pydul.time.sleep(0.0)
        finally:
            threading.current_thread = current  # type: ignore[assignment]
        assert seen == []
        pydul.time.sleep(0.0)  # another thread: the real sleep
        pydul.time.sleep(0.001)
        assert seen == [0.0, 0.001]
    finally:
        time.sleep = real  # type: ignore[assignment]
    assert pydul.time.monotonic() > 0  # the rest is the time module


def test_sta6_waits_longer_and_kill_wakes_it():
    dul, assoc, a, b = _dul()
    assert dul._pacsd_timeout(0.001) == net.IDLE_WAIT_S
    dul.artim_timer.start()
    assert dul._pacsd_timeout(0.001) == 0.001  # ARTIM running: polled as before
    dul.artim_timer.stop()
    assert dul._pacsd_timeout(0.001) == net.IDLE_WAIT_S
    dul.state_machine.current_state = "Sta13"
    assert dul._pacsd_timeout(0.001) == 0.001
    dul.state_machine.current_state = "Sta6"
    # a kill from another thread ends the wait at once
    threading.Timer(0.05, dul.kill_dul).start()
    t0 = time.perf_counter()
    assert dul._pacsd_wait(5.0) == 0.0
    assert time.perf_counter() - t0 < 2.0
    assert dul._pacsd_wait(5.0) == 0.0  # killed already: no wait
    # an event queued from another thread too
    dul, assoc, a, b = _dul()
    threading.Timer(0.05, lambda: dul.pacsd_event("Evt17")).start()
    t0 = time.perf_counter()
    dul._pacsd_wait(5.0)
    assert time.perf_counter() - t0 < 2.0
    assert dul.event_queue.get_nowait() == "Evt17"
