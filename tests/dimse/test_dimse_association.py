"""Association policy and hostile input on the DICOM port (SEC-18, LD-4, BI-33, BI-34).

One server with: calling AE allow-list, source address allow-list (127.0.0.1 only; a
client bound to 127.0.0.2 is "another host"), eight associations at most, and 2-second
ACSE/network timeouts so slow peers are cut quickly. Hostile peers are plain sockets.
"""
from __future__ import annotations

import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from dimse_helpers import association, dcmtk, run, start_server
from pynetdicom import build_context
from pynetdicom.sop_class import Verification

CONFIG = """
[dimse]
allowed_calling_aets = ["GOODSCU", "ECHOSCU"]
allowed_source_ips = ["127.0.0.1"]
max_associations = 8
acse_timeout_s = 2.0
network_timeout_s = 2.0
"""
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module")
def apacs(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("pacsd-a"), CONFIG)
    yield srv
    srv.stop()


def echo_ok(srv) -> bool:
    with association(srv.dicom_port, [build_context(Verification)], ae_title="GOODSCU") as a:
        return a.is_established and a.send_c_echo().Status == 0x0000


def rejection(assoc) -> tuple[int, int, int]:
    p = assoc.acceptor.primitive
    return p.result, p.result_source, p.diagnostic


# --- SEC-18 -----------------------------------------------------------------------------

def test_unknown_calling_ae_rejected_reason_3(apacs):
    p = run(dcmtk("echoscu"), "-aet", "BADSCU", "-aec", "PACSD", "127.0.0.1",
            str(apacs.dicom_port))
    assert p.returncode != 0 and "Calling AE Title Not Recognized" in p.stderr, p.stderr
    with association(apacs.dicom_port, [build_context(Verification)], ae_title="EVIL") as a:
        assert a.is_rejected and rejection(a) == (1, 1, 3)
    p = run(dcmtk("echoscu"), "-aec", "PACSD", "127.0.0.1", str(apacs.dicom_port))
    assert p.returncode == 0, p.stderr  # ECHOSCU is on the list


def test_wrong_called_ae_rejected_reason_7(apacs):
    with association(apacs.dicom_port, [build_context(Verification)], ae_title="GOODSCU",
                     called="NOTPACSD") as a:
        assert a.is_rejected and rejection(a) == (1, 1, 7)


def test_source_address_not_allowed_rejected_reason_3(apacs):
    with association(apacs.dicom_port, [build_context(Verification)], ae_title="GOODSCU",
                     bind_address=("127.0.0.2", 0)) as a:
        assert a.is_rejected and rejection(a) == (1, 1, 3)
    assert echo_ok(apacs)


def test_LD4_max_associations_transient_local_limit(apacs):
    held = [association(apacs.dicom_port, [build_context(Verification)], ae_title="GOODSCU")
            for _ in range(8)]
    assocs = [cm.__enter__() for cm in held]
    try:
        assert all(a.is_established for a in assocs)
        with association(apacs.dicom_port, [build_context(Verification)],
                         ae_title="GOODSCU") as third:
            assert third.is_rejected and rejection(third) == (2, 3, 2)
    finally:
        for cm in held:
            cm.__exit__(None, None, None)
    deadline = time.monotonic() + 5
    while not echo_ok(apacs):  # the slots are free again once the releases completed
        assert time.monotonic() < deadline
        time.sleep(0.1)


# --- BI-33 / BI-34: raw bytes -------------------------------------------------------------

def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def associate_rq(max_pdu: int, calling: str = "GOODSCU", called: str = "PACSD") -> bytes:
    """A minimal A-ASSOCIATE-RQ (PS3.8 9.3.2): Verification, Explicit VR LE."""
    pc = _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, VERIFICATION.encode())
               + _item(0x40, EXPLICIT_LE.encode()))
    ui = _item(0x50, _item(0x51, struct.pack(">L", max_pdu))
               + _item(0x52, b"1.2.826.0.1.3680043.9.3811.2.0.0"))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode()
            + bytes(32) + _item(0x10, b"1.2.840.10008.3.1.1.1") + pc + ui)
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def connect(srv) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.dicom_port), timeout=10)
    return s


def read_until_closed(s: socket.socket, limit_s: float) -> tuple[bytes, float, float]:
    """Everything the server sends until it closes: (bytes, seconds to the first byte,
    seconds to the close). pynetdicom answers at once and closes when the peer does or
    its ARTIM timer (acse_timeout_s) expires."""
    t0 = time.monotonic()
    first = None
    s.settimeout(limit_s)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if first is None:
                first = time.monotonic() - t0
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    closed = time.monotonic() - t0
    return data, closed if first is None else first, closed


def test_BI33_huge_max_pdu_is_legal_but_bounded(apacs):
    """Max PDU 0xFFFFFFFF in the request is accepted (PS3.8: a length, not an
    allocation); a P-DATA-TF declaring 4 GiB with no data is aborted at once."""
    s = connect(apacs)
    s.sendall(associate_rq(0xFFFFFFFF))
    ac = s.recv(6)
    assert ac[:1] == b"\x02"  # A-ASSOCIATE-AC
    s.recv(struct.unpack(">L", ac[2:6])[0], socket.MSG_WAITALL)
    s.sendall(b"\x04\x00\xff\xff\xff\xff")
    s.settimeout(5)
    t0 = time.monotonic()
    assert s.recv(10)[:1] == b"\x07"  # A-ABORT, no 4 GiB read attempted
    assert time.monotonic() - t0 < 1.5
    s.close()
    assert echo_ok(apacs)


def test_BI33_huge_associate_rq_length(apacs):
    s = connect(apacs)
    s.sendall(b"\x01\x00\xff\xff\xff\xff" + b"\x00\x01")
    s.settimeout(5)
    t0 = time.monotonic()
    assert s.recv(10)[:1] == b"\x07"  # A-ABORT at once, nothing allocated
    assert time.monotonic() - t0 < 1.5
    s.close()
    assert echo_ok(apacs)


def test_BI33_max_pdu_zero_peer_served(apacs):
    """Max PDU 0 (= no limit) from the peer: pacsd still answers normally."""
    with association(apacs.dicom_port, [build_context(Verification)], ae_title="GOODSCU",
                     max_pdu=0) as a:
        assert a.send_c_echo().Status == 0x0000


def _garbage(srv, payload: bytes) -> float:
    s = connect(srv)
    s.sendall(payload)
    closed = read_until_closed(s, 10)[2]
    s.close()
    return closed


def _silent(srv) -> float:
    s = connect(srv)
    closed = read_until_closed(s, 10)[2]
    s.close()
    return closed


def _slow(srv) -> float:
    """One byte every 0.3 s: the request would take ~40 s."""
    s = connect(srv)
    rq = associate_rq(16384)
    t0 = time.monotonic()
    try:
        for i in range(len(rq)):
            s.sendall(rq[i:i + 1])
            s.settimeout(0.3)
            try:
                s.recv(64)  # an A-ABORT or EOF: the server gave up on us
                break
            except socket.timeout:
                pass
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        s.close()
    return time.monotonic() - t0


def test_BI34_hostile_peers_cut_while_others_served(apacs):
    """HTTP, a TLS ClientHello, random bytes, a silent and a 1-byte-per-0.3 s peer, all
    at once: each is dropped within the ACSE/network timeout (2 s here; ARTIM) and a
    normal association is served meanwhile."""
    jobs = {
        "http": lambda: _garbage(apacs, b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n"),
        "tls": lambda: _garbage(apacs, bytes.fromhex("16030100a5010000a10303") + bytes(160)),
        "random": lambda: _garbage(apacs, bytes(range(256)) * 4),
        "silent": lambda: _silent(apacs),
        "slow": lambda: _slow(apacs),
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(fn) for name, fn in jobs.items()}
        time.sleep(0.3)
        assert echo_ok(apacs)  # other associations unaffected
        took = {name: f.result(timeout=20) for name, f in futures.items()}
    assert all(t < 5 for t in took.values()), took
    assert took["silent"] > 1  # ARTIM, not an immediate drop of a quiet peer
    assert echo_ok(apacs)
