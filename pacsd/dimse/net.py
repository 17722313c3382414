"""Network plumbing around pynetdicom: association policy, socket guards, bit-exact sends.

* :class:`PacsdAE` — the Application Entity. Calling-AE allow-list (reason 3), called-AE
  check (reason 7) and ``maximum_associations`` (transient, local limit exceeded) are
  pynetdicom's own acceptor checks (``acse._negotiate_as_acceptor``), configured here
  (SEC-18, LD-4). Outgoing associations (C-MOVE destinations) get the same send path.
* :class:`RequestHandler` — per accepted connection: TCP_NODELAY (a DIMSE exchange is a
  string of small PDUs; with Nagle + delayed ACK each response can wait ~40 ms) and the
  PDU guard below.
* :func:`on_requested` (EVT_REQUESTED, before negotiation) — the source-IP allow-list
  (A-ASSOCIATE-RJ permanent, source 1, reason 3) and the transfer syntax preference
  (:func:`prefer_requestor_order`).
* PDU guard (BI-33, BI-34): pynetdicom reads a PDU by its declared length and, on an
  accepted socket, without any timeout, so a peer declaring 0xFFFFFFFF bytes, or sending
  one byte every few seconds, would hold an association thread for ever. Each PDU must
  declare at most ``max(max_pdu, 1 MiB)`` bytes and arrive within ``network_timeout_s``;
  otherwise pacsd sends A-ABORT and drops the connection. Nothing is allocated up front.
* Every association's DUL thread waits for its socket or a queued primitive instead of
  polling (:class:`BusyAwareDUL`; set up in the DUL thread itself for associations pacsd
  requests), and an accepted association's reactor's 1 ms sleep ends when a DIMSE
  message arrives (:class:`_ReactorTime`).
* :class:`Outgoing` + the ``send_c_store`` override — C-GET/C-MOVE sub-operations (and
  store-and-forward) send the stored Part 10 object's dataset bytes unchanged (R-A5).
  pynetdicom's Q/R service insists on yielded ``Dataset`` objects and re-encodes them;
  an :class:`Outgoing` is a stand-in Dataset (SOP Class/Instance UID only) that the
  association's ``send_c_store`` turns into the object's bytes (:func:`load_instance`:
  as stored or transcoded, in memory or, when large, a memory-mapped staging file),
  sent as pre-framed P-DATA-TF PDUs (``pdata.py``: never decoded, one write per
  instance instead of a primitive per PDU).
"""
from __future__ import annotations

import concurrent.futures
import ipaddress
import logging
import mmap
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time
import weakref
from typing import Any, AsyncIterator, Callable

from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
import pynetdicom.association as _pynetdicom_association
import pynetdicom.dul as _pynetdicom_dul
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import RequestHandler as _PynetdicomRequestHandler

from .. import errors
from ..dicom import SUPPORTED_TRANSCODE_TARGETS
from ..model import InstanceRow
from ..services.retrieve import WHOLE_READ_LIMIT, RetrieveService
from . import cstore, pdata, receive
from .bridge import Bridge
from .contexts import AcceptorContext, choose_transfer_syntax

log = logging.getLogger(__name__)

#: A PDU may always be this large, whatever ``max_pdu`` says: A-ASSOCIATE-RQs with many
#: presentation contexts are tens of kB and are not bound by the maximum PDU length.
PDU_FLOOR = 1024 * 1024
#: Bytes read per recv() call.
RECV_CHUNK = 256 * 1024
#: pynetdicom's DUL sleeps this long between loops that found nothing to do while PDUs
#: arrived within the last BUSY_WINDOW_S (instead of its 1 ms): see BusyAwareDUL.
BUSY_LOOP_DELAY_S = 0.0002
BUSY_WINDOW_S = 0.05
#: How long the DUL thread of an association in data transfer (Sta6, ARTIM timer not
#: running) waits for its socket or a wake-up before looking again: nothing else it
#: polls for can happen meanwhile (see BusyAwareDUL); a safety net, not a poll interval.
IDLE_WAIT_S = 0.05
#: Largest P-DATA-TF PDU read by :meth:`BusyAwareDUL._pacsd_read_pdata` into a buffer
#: of its declared length (bigger ones, up to the policy's limit, are read by pynetdicom
#: through the guard, which allocates only what arrives).
FAST_PDU_MAX = 4 * 1024 * 1024
#: Lossy transfer syntaxes: JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000,
#: HTJ2K (lossy allowed).
LOSSY_TRANSFER_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"})


# --- UID conversion, memoized ------------------------------------------------------------

#: Distinct (value, parameters) pairs :func:`memoized_set_uid` keeps; emptied when full.
SET_UID_CACHE = 4096


def memoized_set_uid(original: Callable[..., Any]) -> Callable[..., Any]:
    """pynetdicom's ``utils.set_uid`` (str/bytes -> pydicom UID, validated by regular
    expressions) with its results kept per argument tuple: a DCMTK getscu's
    A-ASSOCIATE-RQ carries ~120 SCP/SCU role selection items and as many presentation
    contexts, and their decode was a fifth of the server's GIL time of a 100-instance
    C-GET (issue 6, session 6 profile); every C-STORE-RSP converts two UIDs more. Only
    exact str/bytes values (and plain UIDs, by their text) and successful results are kept (an invalid UID raises
    every time); the key includes the validation switches of pynetdicom and pydicom, so
    changing them takes effect. A non-conformant UID's warning is logged the first
    time only."""
    from pydicom.uid import UID
    from pynetdicom import _config as pnd_config

    cache: dict[tuple, Any] = {}

    def set_uid(value: Any, name: str, allow_empty: bool = True, allow_none: bool = True,
                validate: bool = True) -> Any:
        kind = type(value)
        if kind is UID:
            if value.__dict__:   # e.g. a private transfer syntax's encoding: as is
                return original(value, name, allow_empty, allow_none, validate)
            value = str(value)
        elif kind is not str and kind is not bytes:
            return original(value, name, allow_empty, allow_none, validate)
        key = (value, name, allow_empty, allow_none, validate,
               pnd_config.ENFORCE_UID_CONFORMANCE, id(pnd_config.VALIDATORS.get("UI")),
               pydicom_config.settings.reading_validation_mode)
        hit = cache.get(key)
        if hit is not None:
            return hit
        out = original(value, name, allow_empty, allow_none, validate)
        if out is not None:
            if len(cache) >= SET_UID_CACHE:
                cache.clear()
            cache[key] = out
        return out

    set_uid.__wrapped__ = original  # type: ignore[attr-defined]
    return set_uid


def install_memoized_set_uid() -> None:
    """Use :func:`memoized_set_uid` in the pynetdicom modules that import ``set_uid``
    (idempotent)."""
    import pynetdicom.ae
    import pynetdicom.dimse_primitives
    import pynetdicom.pdu_items
    import pynetdicom.pdu_primitives
    import pynetdicom.presentation
    import pynetdicom.utils

    original = getattr(pynetdicom.utils.set_uid, "__wrapped__", pynetdicom.utils.set_uid)
    fast = memoized_set_uid(original)
    for module in (pynetdicom.ae, pynetdicom.dimse_primitives, pynetdicom.pdu_items,
                   pynetdicom.pdu_primitives, pynetdicom.presentation):
        if getattr(module.set_uid, "__wrapped__", None) is None:
            module.set_uid = fast


install_memoized_set_uid()


def a_abort(source: int = 2, reason: int = 0) -> bytes:
    """A-ABORT PDU (PS3.8 9.3.8): source 2 = service provider."""
    return struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, source, reason)


class Policy:
    """Association policy from ``[dimse]`` settings (SEC-18)."""

    def __init__(self, networks: list, max_pdu: int, network_timeout_s: float) -> None:
        self.networks = networks
        self.pdu_limit = max(max_pdu, PDU_FLOOR) if max_pdu else 0xFFFFFFFF
        self.pdu_timeout_s = network_timeout_s

    def ip_allowed(self, host: str) -> bool:
        if not self.networks:
            return True
        try:
            addr = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if getattr(addr, "ipv4_mapped", None):
            addr = addr.ipv4_mapped  # ::ffff:10.0.0.1 on a dual-stack socket
        return any(addr in net for net in self.networks)


# --- PDU guard -------------------------------------------------------------------------

def _guarded_recv(assoc_socket, policy: Policy, nr_bytes: int) -> bytearray:
    """Replacement for ``AssociationSocket.recv`` (see module docstring)."""
    sock = assoc_socket.socket
    if sock is None:
        return bytearray()
    if nr_bytes > policy.pdu_limit:
        _abort(sock, reason=6)  # invalid PDU parameter value
        raise OSError("PDU length above the accepted maximum")
    deadline = time.monotonic() + policy.pdu_timeout_s
    buf = bytearray()
    while len(buf) < nr_bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _abort(sock, reason=0)
            raise TimeoutError("PDU not received within network_timeout_s")
        if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            ready, _, _ = select.select([sock], [], [], min(remaining, 1.0))
            if not ready:
                continue
        chunk = sock.recv(min(RECV_CHUNK, nr_bytes - len(buf)))
        if not chunk:
            return buf  # peer closed: pynetdicom sees the short read
        buf += chunk
    return buf


def _abort(sock: socket.socket, reason: int) -> None:
    try:
        sock.sendall(a_abort(2, reason))
    except OSError:
        pass
    log.info("DIMSE peer aborted: %s", "PDU too long" if reason else "PDU too slow")


def guard_socket(assoc: Association, policy: Policy) -> None:
    assoc_socket = assoc.dul.socket
    if assoc_socket is not None:
        assoc_socket.recv = lambda n: _guarded_recv(assoc_socket, policy, n)
        assoc_socket._pacsd_policy = policy  # the P-DATA read path keeps the same limits


def _recv_exact(sock: socket.socket, buf: bytearray, policy: Policy) -> int:
    """Fill ``buf`` from ``sock`` within ``policy.pdu_timeout_s`` (else A-ABORT and
    TimeoutError, as :func:`_guarded_recv`); returns the bytes read (fewer: the peer
    closed). Reads straight into ``buf``, without waiting while data is there."""
    view = memoryview(buf)
    n, got = len(buf), 0
    deadline = time.monotonic() + policy.pdu_timeout_s
    poller = None
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _abort(sock, reason=0)
                raise TimeoutError("PDU not received within network_timeout_s") from None
            if poller is None:
                poller = select.poll()
                poller.register(sock, select.POLLIN)
            poller.poll(min(remaining, 1.0) * 1000)
            continue
        if not k:
            return got
        got += k
    return got


def _pdv_items(pdu: bytearray) -> list | None:
    """The PDV items of a whole P-DATA-TF PDU as ``[context ID, data]`` (data: a
    memoryview of ``pdu``, message control header first), or None when pynetdicom's
    decoder should see it (no item, an item shorter than 2 bytes or past the end)."""
    view = memoryview(pdu)
    end = len(pdu)
    pos = 6
    items: list = []
    unpack = struct.unpack_from
    while pos < end:
        if pos + 4 > end:
            return None
        length = unpack(">L", pdu, pos)[0]
        stop = pos + 4 + length
        if length < 2 or stop > end:
            return None
        items.append([pdu[pos + 4], view[pos + 5:stop]])
        pos = stop
    return items or None


def set_nodelay(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not TCP (tests) or already closed


# --- bit-exact sub-operations ------------------------------------------------------------

class Outgoing(Dataset):
    """A C-STORE sub-operation to perform: the stored instance, by reference.

    ``stage(accepted)`` receives the transfer syntaxes the peer accepted for this SOP
    class and returns the Part 10 object to send: its bytes, the path of a staging
    file (large objects; the sender deletes it), or a ``pdata.Prepared`` made for this
    association. ``originator``: (AE title, Message ID) of a C-MOVE. ``after_send``:
    ``pdata.send_c_store``'s hook (prepare the next sub-operation while the peer
    stores this one).
    """

    def __init__(self, sop_class_uid: str, sop_instance_uid: str,
                 stage: Callable[[frozenset[str]], "bytes | str | pdata.Prepared"],
                 originator: tuple[str, int] | None = None,
                 after_send: Callable[[Association], None] | None = None) -> None:
        super().__init__()
        # UIDs from the index (validated at ingest): not validated again per
        # sub-operation (pydicom's regular expressions were ~5 % of a C-GET's profile).
        self._dict[0x00080016] = DataElement(0x00080016, "UI", sop_class_uid,
                                             validation_mode=pydicom_config.IGNORE)
        self._dict[0x00080018] = DataElement(0x00080018, "UI", sop_instance_uid,
                                             validation_mode=pydicom_config.IGNORE)
        self._pacsd_stage = stage
        self._pacsd_originator = originator
        self._pacsd_after_send = after_send


def accepted_syntaxes(assoc: Association, sop_class_uid: str) -> frozenset[str]:
    """Transfer syntaxes of contexts on which this side may send ``sop_class_uid``
    (cached per association: the accepted contexts are fixed once negotiated)."""
    cache = assoc.__dict__.setdefault("_pacsd_accepted", {})
    found = cache.get(sop_class_uid)
    if found is None:
        found = cache[sop_class_uid] = frozenset(
            str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
            if cx.abstract_syntax == sop_class_uid and cx.as_scu)
    return found


def load_instance(retrieve: RetrieveService, bridge: Bridge, row: InstanceRow,
                  accepted: frozenset[str],
                  read: "concurrent.futures.Future[bytes] | None" = None) -> bytes | str:
    """What an :class:`Outgoing` sends: the stored object (sha256-verified, FT-6) when
    the peer accepted its transfer syntax, else a verified lossless transcode to one it
    accepted; in memory, or in a staging file when it is larger than
    ``WHOLE_READ_LIMIT`` as stored. NotAcceptable when no accepted syntax will do.
    ``read``: the object's ``read_verified``, already started (:class:`ReadAhead`)."""
    ts = choose_transfer_syntax(row.transfer_syntax_uid, accepted, SUPPORTED_TRANSCODE_TARGETS)
    if ts is None:
        if read is not None:
            read.cancel()
        raise errors.NotAcceptable("the peer accepted no transfer syntax this instance "
                                   "can be sent in")
    wanted = "*" if ts == row.transfer_syntax_uid else ts
    if read is not None:
        if wanted == "*":
            return read.result()
        read.cancel()
    if wanted != "*" or row.size <= WHOLE_READ_LIMIT:
        # One trip to the event loop: the object, or its transcode (one chunk each).
        return bridge.call(_joined(retrieve.object_chunks(row, wanted)))
    writer = retrieve.archive.store.new_staging_file()
    try:
        for chunk in bridge.iterate(retrieve.object_chunks(row, wanted)):
            writer.write(chunk)
        path, _, _ = writer.finish()
    except BaseException:
        writer.abort()
        raise
    return path


class ReadAhead:
    """Stages the instances of one retrieve in order. While the peer stores one
    instance (``after_send``), the next one, when it is in the page cache and goes as
    stored, is read and verified on the association thread
    (``RetrieveService.read_cached``: no trip to the event loop and the worker pool)
    and its data set cut into PDUs (``pdata.Prepared``), so the next sub-operation
    starts at once when the response arrives. Otherwise the object is read as it comes
    (cached: here; not: on the pool, and then the next one is read there too while the
    current one is being sent). At most two objects are in memory; a read ahead that
    turns out unneeded (transcode, no context, a cancel) is cancelled or dropped."""

    def __init__(self, retrieve: RetrieveService, bridge: Bridge,
                 rows: list[InstanceRow]) -> None:
        self.retrieve, self.bridge, self.rows = retrieve, bridge, rows
        self._ahead: tuple[int, concurrent.futures.Future[bytes]] | None = None
        self._prepared: tuple[int, pdata.Prepared] | None = None

    def stage(self, index: int, accepted: frozenset[str]) -> "bytes | str | pdata.Prepared":
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared[0] == index:
            return prepared[1]
        read = None
        if self._ahead is not None:
            ahead_index, future = self._ahead
            if ahead_index == index:
                read = future
            else:
                future.cancel()
        self._ahead = None
        row = self.rows[index]
        if read is None and row.transfer_syntax_uid in accepted:   # sent as stored
            data = self.retrieve.read_cached(row)
            if data is not None:
                return data
        nxt = index + 1
        if nxt < len(self.rows) and self.rows[nxt].size <= WHOLE_READ_LIMIT:
            self._ahead = (nxt, self.bridge.submit(self.retrieve.read_verified(self.rows[nxt])))
        return load_instance(self.retrieve, self.bridge, row, accepted, read)

    def after_send(self, index: int, assoc: Association) -> None:
        """``pdata.send_c_store``'s hook for sub-operation ``index``: prepare the next
        one if it is cached and the peer takes it as stored (else it is staged as it
        comes). Nothing is prepared while a pool read ahead is under way."""
        nxt = index + 1
        if nxt >= len(self.rows) or self._ahead is not None:
            return
        row = self.rows[nxt]
        if row.transfer_syntax_uid not in accepted_syntaxes(assoc, row.sop_class_uid):
            return
        data = self.retrieve.read_cached(row)
        if data is not None:
            self._prepared = (nxt, pdata.Prepared(assoc, data))


async def _joined(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


def _send_c_store(assoc: Association, original: Callable[..., Dataset], dataset: Any,
                  msg_id: int = 1, priority: int = 2, originator_aet: str | None = None,
                  originator_id: int | None = None) -> Dataset:
    if not isinstance(dataset, Outgoing):
        return original(dataset, msg_id=msg_id, priority=priority,
                        originator_aet=originator_aet, originator_id=originator_id)
    if dataset._pacsd_originator is not None:
        # PS3.7 9.3.1.1: the AE that asked for the C-MOVE (pynetdicom passes its own).
        originator_aet, originator_id = dataset._pacsd_originator
    try:
        payload = dataset._pacsd_stage(accepted_syntaxes(assoc, str(dataset.SOPClassUID)))
    except errors.PacsdError:
        raise  # pynetdicom counts the sub-operation failed and logs the (PHI-free) reason
    except Exception as exc:  # noqa: BLE001 - keep third-party messages out of the log
        log.error("staging a C-STORE sub-operation failed: %s", type(exc).__name__)
        raise RuntimeError("processing failure") from None
    after_send = dataset._pacsd_after_send
    if not isinstance(payload, str):
        return pdata.send_c_store(assoc, payload, msg_id, priority, originator_aet,
                                  originator_id, after_send=after_send)
    try:
        with open(payload, "rb") as fh, mmap.mmap(fh.fileno(), 0,
                                                   access=mmap.ACCESS_READ) as mapped:
            return pdata.send_c_store(assoc, mapped, msg_id, priority, originator_aet,
                                      originator_id, after_send=after_send)
    finally:
        try:
            os.unlink(payload)
        except FileNotFoundError:
            pass


class _WakingQueue(queue.Queue):
    """``queue.Queue`` that calls ``wake()`` after every put (see :class:`BusyAwareDUL`)."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._pacsd_wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._pacsd_wake()


def _waking(old: queue.Queue, wake: Callable[[], None]) -> _WakingQueue:
    new = _WakingQueue(wake)
    while True:  # anything queued already keeps its place
        try:
            new.put_nowait(old.get_nowait())
        except queue.Empty:
            return new


class BusyAwareDUL(DULServiceProvider):
    """pynetdicom's DUL provider, woken by work instead of polling for it.

    The DUL thread polls its queues and the socket and sleeps ``_run_loop_delay`` (1 ms)
    after every loop that found nothing, so each response pacsd queues and each PDU a
    peer sends next can wait up to that long: with one synchronous C-STORE per
    instance that is a good part of the time per small instance, and polling every
    0.2 ms instead (session 5) cost ~1 ms of CPU per tiny C-STORE (issue 6 profile,
    session 6). Now, in the DUL thread, that sleep is a ``poll`` of the association's
    socket and a wake-up socket that :meth:`send_pdu` (a response, a C-STORE
    sub-operation, A-RELEASE/A-ABORT: pynetdicom's one way into ``to_provider_queue``)
    signals, for at most the set delay (1 ms:
    the ARTIM timer and the kill flag are still polled): incoming PDUs and outgoing
    primitives are handled at once, an idle or waiting association costs no CPU. The
    reactor loop is pynetdicom's; only how long it sleeps differs. Other threads reading
    the attribute (``stop_dul``) get the plain delay."""

    _pacsd_wake_pair: tuple[socket.socket, socket.socket] | None = None
    _pacsd_waiting = False
    _pacsd_closed = False
    _pacsd_lazy = False

    @property  # type: ignore[override]
    def _run_loop_delay(self) -> float:
        delay = self._pacsd_idle_delay
        if threading.current_thread() is self:
            if self._pacsd_wake_pair is None and self._pacsd_lazy and not self._pacsd_closed:
                self._pacsd_setup()  # a DUL already running when made busy-aware
            if self._pacsd_wake_pair is not None:
                return self._pacsd_wait(self._pacsd_timeout(delay))
        started = self._idle_timer._start_time
        if started is not None and 0 <= time.time() - started < BUSY_WINDOW_S:
            return BUSY_LOOP_DELAY_S
        return delay

    @_run_loop_delay.setter
    def _run_loop_delay(self, value: float) -> None:
        self._pacsd_idle_delay = value

    def _pacsd_timeout(self, delay: float) -> float:
        """How long to wait: in data transfer (Sta6) with the ARTIM timer stopped,
        everything the loop looks for wakes the wait (a PDU, a queued primitive,
        :meth:`kill_dul`, an event another thread queues through :meth:`pacsd_event`),
        so it waits up to IDLE_WAIT_S instead of waking every ``delay`` (1 ms) — each
        of those wake-ups took the GIL from the thread ingesting a C-STORE (issue 6).
        Elsewhere (association set-up and release, where ARTIM runs) ``delay``."""
        artim = self.artim_timer
        if (self.state_machine.current_state == "Sta6"
                and (artim._start_time is None or artim._end_time is not None)):
            return max(delay, IDLE_WAIT_S)
        return delay

    def kill_dul(self) -> None:
        super().kill_dul()
        self._pacsd_wake()

    def pacsd_event(self, event: str) -> None:
        """Queue a state machine event from another thread (e.g. Evt17 after a failed
        write) and wake the DUL thread for it."""
        self.event_queue.put(event)
        self._pacsd_wake()

    def _pacsd_setup(self) -> None:
        """The wake-up socket pair (before the DUL thread starts, or in it)."""
        self._pacsd_lock = threading.Lock()
        pair = socket.socketpair()
        for s in pair:
            s.setblocking(False)
        self._pacsd_wake_pair = pair
        weakref.finalize(self, _close_all, pair)  # a reactor that ends without run_reactor's

    def send_pdu(self, primitive: Any) -> None:
        """pynetdicom's (the only producer of ``to_provider_queue``), then a wake-up."""
        super().send_pdu(primitive)
        self._pacsd_wake()

    def _pacsd_wake(self) -> None:
        if not self._pacsd_waiting:  # it checks the queue after setting the flag
            return
        with self._pacsd_lock:  # never a send on a closed (maybe reused) descriptor
            if self._pacsd_closed or self._pacsd_wake_pair is None:
                return
            try:
                self._pacsd_wake_pair[1].send(b"\0")
            except OSError:  # full (it is awake anyway)
                pass

    def _pacsd_wait(self, timeout: float) -> float:
        """Wait in the DUL thread until a PDU arrives, a primitive is queued or
        ``timeout`` passes; returns what is left to sleep (0)."""
        assoc_sock = self.socket
        sock = getattr(assoc_sock, "socket", None) if assoc_sock is not None else None
        if sock is None or sock.fileno() < 0:
            return timeout
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return 0.0
        wake = self._pacsd_wake_pair[0]
        self._pacsd_waiting = True
        try:
            if (self.to_provider_queue.qsize() or self.event_queue.qsize()
                    or self._kill_thread):
                return 0.0
            try:
                poller = select.poll()  # any descriptor number (select() stops at 1024)
                poller.register(sock, select.POLLIN)
                poller.register(wake, select.POLLIN)
                ready = poller.poll(timeout * 1000)
            except (OSError, ValueError):  # closed meanwhile: sleep, the loop finds out
                return timeout
            if any(fd == wake.fileno() for fd, _ in ready):
                try:
                    wake.recv(4096)
                except OSError:
                    pass
        finally:
            self._pacsd_waiting = False
        return 0.0

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        finally:
            self._pacsd_close()

    def _read_pdu_data(self) -> None:
        if not self._pacsd_read_pdata():
            super()._read_pdu_data()

    def _pacsd_read_pdata(self) -> bool:
        """A P-DATA-TF PDU in data transfer, read and handed to DIMSE directly: what
        pynetdicom does for it (read, decode into PDU and PDV item objects, Evt10 on
        the event queue, the state machine's DT-2: ``dimse.receive_primitive`` of the
        P-DATA indication, Sta6 stays Sta6) without the copies (the PDU is read into
        one buffer of its length; PDV data are memoryviews of it) and the objects
        (issue 6). Only on a plain TCP socket with the PDU guard's policy, in Sta6,
        with no other event queued and no handler bound to EVT_DATA_RECV,
        EVT_PDU_RECV or EVT_FSM_TRANSITION (those need pynetdicom's objects); the PDU
        must be wholly declared in the socket already (its header peeked). False:
        pynetdicom reads the next PDU as always. The guard's limits apply (length,
        network_timeout_s); a PDU whose items pynetdicom would refuse or that has none
        is decoded by pynetdicom from the bytes read (Evt19 as always)."""
        assoc_sock = self.socket
        policy = getattr(assoc_sock, "_pacsd_policy", None)
        sock = getattr(assoc_sock, "socket", None)
        if (policy is None or sock is None or isinstance(sock, ssl.SSLSocket)
                or self.state_machine.current_state != "Sta6" or self.event_queue.qsize()):
            return False
        assoc = self.assoc
        if (assoc.get_handlers(evt.EVT_DATA_RECV) or assoc.get_handlers(evt.EVT_PDU_RECV)
                or assoc.get_handlers(evt.EVT_FSM_TRANSITION)):
            return False
        try:
            head = sock.recv(6, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:  # nothing there yet, or an error pynetdicom's read reports
            return False
        if len(head) < 6 or head[0] != 0x04:
            return False
        length = struct.unpack_from(">L", head, 2)[0]
        if length > policy.pdu_limit or length > FAST_PDU_MAX:
            return False  # the guarded read refuses it, or reads it as it comes
        pdu = bytearray(6 + length)
        try:
            got = _recv_exact(sock, pdu, policy)
        except (OSError, TimeoutError):
            log.info("DIMSE connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")  # pynetdicom's READ_PDU_EXC_D
            return True
        if got != len(pdu):
            self.event_queue.put("Evt17")  # READ_PDU_EXC_E: peer closed mid-PDU
            return True
        items = _pdv_items(pdu)
        if items is None:  # as pynetdicom's read would go on
            try:
                decoded, event = self._decode_pdu(pdu)
                self.event_queue.put(event)
            except Exception:  # noqa: BLE001 - READ_PDU_EXC_F
                log.info("DIMSE peer sent a PDU that cannot be decoded")
                self.event_queue.put("Evt19")
                return True
            self._recv_pdu.put(decoded)
            return True
        primitive = P_DATA()
        primitive._presentation_data_value_list = items
        try:
            assoc.dimse.receive_primitive(primitive)  # DT-2
        except Exception:
            log.error("State Machine received an exception attempting to perform the "
                      "action 'DT-2' while in state 'Sta6'")
            self.kill_dul()
            raise
        return True

    def _pacsd_close(self) -> None:
        lock = getattr(self, "_pacsd_lock", None)
        if lock is None:
            return
        with lock:
            self._pacsd_closed = True
            pair, self._pacsd_wake_pair = self._pacsd_wake_pair, None
            for s in pair or ():
                s.close()


def busy_aware(dul: DULServiceProvider) -> None:
    if type(dul) is DULServiceProvider:
        idle = dul.__dict__.pop("_run_loop_delay", 0.001)
        dul.__class__ = BusyAwareDUL
        dul._run_loop_delay = idle
        if not dul.is_alive():
            dul._pacsd_setup()  # sockets closed when the reactor ends (or by GC)
        else:  # e.g. an association pacsd requested (C-MOVE, forwarding): set up by
            dul._pacsd_lazy = True  # its DUL thread, the only one that waits on it


def _close_all(sockets: Any) -> None:
    for s in sockets:
        s.close()


# --- association reactor: woken by a received message ------------------------------------

#: pynetdicom's acceptor reactor (``Association._run_reactor``) sleeps this long at the
#: top of every loop, whatever happened; :class:`_ReactorTime` makes that sleep end when a
#: DIMSE message (or an A-RELEASE/A-ABORT primitive) arrives for the association.
REACTOR_SLEEP_S = 0.001


class _ReactorTime:
    """Stands in for the ``time`` module inside ``pynetdicom.association``: the reactor's
    1 ms sleep waits on the association's wake-up event (set by a put on its DIMSE
    message queue or its DUL's to-user queue) for at most that long; every other use
    is the time module's. A wake-up lost between a wait and the event's reset costs at
    most the 1 ms pynetdicom always slept."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds == REACTOR_SLEEP_S:
            event = getattr(threading.current_thread(), "_pacsd_reactor_wake", None)
            if event is not None:
                if event.wait(seconds):
                    event.clear()
                return
        time.sleep(seconds)


def reactor_wake(assoc: Association) -> None:
    """Let ``assoc``'s reactor be woken by what it waits for (before it starts)."""
    if getattr(assoc, "_pacsd_reactor_wake", None) is not None or assoc.is_alive():
        return
    event = threading.Event()
    assoc.dimse.msg_queue = _waking(assoc.dimse.msg_queue, event.set)
    assoc.dul.to_user_queue = _waking(assoc.dul.to_user_queue, event.set)
    assoc._pacsd_reactor_wake = event


_pynetdicom_association.time = _ReactorTime()  # type: ignore[attr-defined]


class _DulTime:
    """Stands in for the ``time`` module inside ``pynetdicom.dul``: the DUL loop's
    ``time.sleep(self._run_loop_delay)`` of a :class:`BusyAwareDUL` thread that has
    already waited (the delay then reads 0) returns at once instead of giving up the
    GIL and queueing for it again (~50-90 us between two PDUs of one C-STORE on a busy
    machine, issue 6); every other use is the time module's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds <= 0 and isinstance(threading.current_thread(), BusyAwareDUL):
            return
        time.sleep(seconds)


_pynetdicom_dul.time = _DulTime()  # type: ignore[attr-defined]


def prepare_association(assoc: Association, policy: Policy | None) -> None:
    """Install the bit-exact send path, the busy-aware DUL loop delay and, when a policy
    is given, the PDU guard."""
    busy_aware(assoc.dul)
    reactor_wake(assoc)
    pdata.install(assoc.dul)  # before pacsd queues anything: see pdata.direct
    original = assoc.send_c_store
    assoc.send_c_store = (  # type: ignore[method-assign]
        lambda dataset, *a, **kw: _send_c_store(assoc, original, dataset, *a, **kw))
    pdata.install_responses(assoc)  # C-STORE / C-GET / C-MOVE responses pre-encoded
    # C-STORE requests and responses decoded by hand; a C-STORE-RQ's data set joined
    # behind the Part 10 prefix the C-STORE SCP stores it with (one copy on arrival).
    receive.install(assoc, prefix=cstore.part10_prefix(assoc))
    if policy is not None:
        guard_socket(assoc, policy)


# --- A-ASSOCIATE-RQ: source address, transfer syntax preference ------------------------

def on_requested(event, policy: Policy) -> None:
    """EVT_REQUESTED (the A-ASSOCIATE-RQ has arrived, nothing negotiated yet)."""
    assoc = event.assoc
    if not policy.ip_allowed(str(assoc.requestor.address)):
        # SEC-18: same answer as an unknown calling AE, before anything is negotiated.
        log.info("DIMSE association from a source address that is not allowed: rejected")
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()
        return
    prefer_requestor_order(assoc)


def prefer_requestor_order(assoc: Association) -> None:
    """Accept, per context, the requestor's first proposed transfer syntax that is not
    lossy — not pynetdicom's default (the acceptor's list order). A sender lists its
    objects' own transfer syntax first, so compressed objects arrive, and are stored,
    exactly as they are (R-A2, R-A5); a lossy syntax is taken only when the context
    offers nothing else, so pacsd never makes a sender compress lossily."""
    proposed: dict[str, list[str]] = {}
    for cx in assoc.requestor.primitive.presentation_context_definition_list:
        order = proposed.setdefault(str(cx.abstract_syntax), [])
        order.extend(str(ts) for ts in cx.transfer_syntax if str(ts) not in order)
    for cx in assoc.acceptor.supported_contexts:
        order = proposed.get(str(cx.abstract_syntax))
        if not order:
            continue
        ours = [str(ts) for ts in cx.transfer_syntax]
        ranked = [ts for ts in order if ts in ours] + [ts for ts in ours if ts not in order]
        ranked.sort(key=lambda ts: ts in LOSSY_TRANSFER_SYNTAXES)  # stable: lossy last
        if ranked == ours:
            continue
        if isinstance(cx, AcceptorContext):
            cx.reorder(ranked)
        else:
            cx.transfer_syntax = ranked


# --- the AE and the connection handler ---------------------------------------------------

class PacsdAE(AE):
    """pynetdicom AE that prepares every association it makes (C-MOVE destinations)."""

    policy: Policy

    def associate(self, *args: Any, **kwargs: Any) -> Association:  # type: ignore[override]
        assoc = super().associate(*args, **kwargs)
        if assoc.is_established:
            set_nodelay(getattr(assoc.dul.socket, "socket", None))
        prepare_association(assoc, self.policy)  # a destination is a peer like any other
        return assoc


class RequestHandler(_PynetdicomRequestHandler):
    """Per accepted connection: TCP_NODELAY and the PDU guard."""

    def handle(self) -> None:
        set_nodelay(self.request)
        super().handle()

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        prepare_association(assoc, self.server.ae.policy)  # type: ignore[attr-defined]
        return assoc
