"""The association's threads are woken by their work instead of polling for it (issue 6,
R-H1): the DUL thread waits in ``select`` on the socket and a wake-up socket that a
queued primitive signals; the acceptor reactor's 1 ms sleep ends when a DIMSE message
arrives. Sleeping less is all that changes: pynetdicom's loops are its own."""
from __future__ import annotations

import inspect
import socket
import threading
import time

import pynetdicom.association as pyassoc
from pynetdicom.dul import DULServiceProvider

from pacsd.dimse import net


class _Assoc:
    pass


class _Sock:
    def __init__(self, sock) -> None:
        self.socket = sock


def _dul_with_socket():
    dul = DULServiceProvider(_Assoc())
    net.busy_aware(dul)
    a, b = socket.socketpair()
    dul.socket = _Sock(a)
    return dul, a, b


def test_dul_wait_is_woken_by_a_queued_primitive_and_by_a_pdu():
    dul, a, b = _dul_with_socket()
    waited: list[float] = []

    def in_dul_thread(action) -> None:
        def body():
            t0 = time.perf_counter()
            assert dul._run_loop_delay == 0.0  # what pynetdicom then sleeps
            waited.append(time.perf_counter() - t0)
        t = threading.Thread(target=body)
        # the property waits only in the DUL's own thread: run it as that thread
        dul_ident = threading.current_thread
        try:
            threading.current_thread = lambda: dul  # type: ignore[assignment]
            t.run()  # runs body in this thread, seen as the DUL thread
        finally:
            threading.current_thread = dul_ident  # type: ignore[assignment]
        action()

    dul._pacsd_idle_delay = 5.0  # a long timeout: only a wake-up can end the wait
    timer = threading.Timer(0.05, lambda: dul.send_pdu("primitive"))
    timer.start()
    in_dul_thread(lambda: None)
    assert 0.03 < waited[-1] < 2.0
    assert dul.to_provider_queue.get_nowait() == "primitive"
    timer = threading.Timer(0.05, lambda: b.send(b"\x04"))
    timer.start()
    in_dul_thread(lambda: None)
    assert 0.03 < waited[-1] < 2.0
    assert a.recv(1) == b"\x04"
    # something queued already: no wait at all
    dul.send_pdu("x")
    in_dul_thread(lambda: None)
    assert waited[-1] < 0.5
    dul._pacsd_close()
    assert dul._pacsd_wake_pair is None
    dul.send_pdu("after close")  # a send after the end never fails
    a.close()
    b.close()


def test_dul_other_threads_get_the_plain_delay():
    dul, a, b = _dul_with_socket()
    assert dul._run_loop_delay == 0.001  # e.g. pynetdicom's stop_dul from the assoc
    dul._pacsd_close()
    a.close()
    b.close()


def test_dul_without_socket_sleeps_as_before():
    dul = DULServiceProvider(_Assoc())
    net.busy_aware(dul)
    real = threading.current_thread
    try:
        threading.current_thread = lambda: dul  # type: ignore[assignment]
        assert dul._run_loop_delay == 0.001
    finally:
        threading.current_thread = real  # type: ignore[assignment]
    dul._pacsd_close()


def test_reactor_sleep_ends_when_a_message_arrives():
    clock = pyassoc.time
    assert isinstance(clock, net._ReactorTime)
    event = threading.Event()
    me = threading.current_thread()
    me._pacsd_reactor_wake = event  # type: ignore[attr-defined]
    try:
        t0 = time.perf_counter()
        clock.sleep(net.REACTOR_SLEEP_S)  # nothing arrives: pynetdicom's 1 ms
        assert time.perf_counter() - t0 >= 0.0009
        event.set()
        t0 = time.perf_counter()
        clock.sleep(net.REACTOR_SLEEP_S)
        assert time.perf_counter() - t0 < 0.0009 and not event.is_set()
        t0 = time.perf_counter()
        clock.sleep(0.002)  # any other sleep is time.sleep
        assert time.perf_counter() - t0 >= 0.0019
    finally:
        del me._pacsd_reactor_wake  # type: ignore[attr-defined]
    assert clock.monotonic() > 0  # the rest of the time module passes through


def test_pynetdicom_reactor_still_sleeps_one_ms_per_loop():
    """The wake-up relies on this line of pynetdicom's acceptor reactor."""
    src = inspect.getsource(pyassoc.Association._run_reactor)
    assert "time.sleep(0.001)" in src and net.REACTOR_SLEEP_S == 0.001
    assert "self.dimse.get_msg(block=False)" in src
    assert "time.sleep(self._run_loop_delay)" in inspect.getsource(
        DULServiceProvider.run_reactor)


def test_dul_already_running_sets_up_its_wakeup_in_its_own_thread():
    """An association pacsd requests (C-MOVE destination, forwarding) is made busy-aware
    after its DUL thread started: the wake-up is made by that thread on its first wait
    (never a queue swapped under a running reactor), then a send wakes it as above."""
    dul = DULServiceProvider(_Assoc())
    dul.is_alive = lambda: True  # type: ignore[method-assign]  # as after associate()
    net.busy_aware(dul)
    assert dul._pacsd_wake_pair is None and dul._pacsd_lazy
    a, b = socket.socketpair()
    dul.socket = _Sock(a)
    queue_before = dul.to_provider_queue
    assert dul._run_loop_delay == 0.001  # another thread: plain delay, nothing made
    assert dul._pacsd_wake_pair is None
    dul._pacsd_idle_delay = 5.0
    real = threading.current_thread
    timer = threading.Timer(0.05, lambda: dul.send_pdu("primitive"))
    timer.start()
    try:
        threading.current_thread = lambda: dul  # type: ignore[assignment]
        t0 = time.perf_counter()
        assert dul._run_loop_delay == 0.0
        assert time.perf_counter() - t0 < 2.0  # woken by the send, not the 5 s timeout
    finally:
        threading.current_thread = real  # type: ignore[assignment]
    assert dul._pacsd_wake_pair is not None and dul.to_provider_queue is queue_before
    assert dul.to_provider_queue.get_nowait() == "primitive"
    dul._pacsd_close()
    a.close()
    b.close()
