"""The real server process: start-up rules, graceful shutdown, durability across restarts."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import requests
from pacsd_server import Server, free_port, stow_sigterm_midway
from dicomgen import make_dataset, multipart, to_part10


def test_graceful_shutdown_finishes_inflight_store(tmp_path):
    """SIGTERM while a STOW-RS body is still arriving: the store completes and is
    acknowledged, and the instance is there after a restart (issue 2 item 2)."""
    srv = Server(str(tmp_path))
    ds = make_dataset(rows=64, columns=64)
    body, ctype = multipart([to_part10(ds)])
    assert stow_sigterm_midway(srv, body, ctype) == 200
    assert srv.proc.wait(40) == 0
    srv.stop()
    srv2 = Server(str(tmp_path))
    try:
        r = requests.get(f"{srv2.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
                         f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/metadata")
        assert r.status_code == 200
        assert not os.listdir(tmp_path / "blobs" / "staging")
    finally:
        srv2.stop()


def test_SEC20_refuses_non_loopback_without_auth(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pacsd.cli", "serve", "--data-dir", str(tmp_path),
                        "--http", f"0.0.0.0:{free_port()}"], capture_output=True, timeout=60)
    assert p.returncode == 2
    assert b"refusing to listen on a non-loopback address" in p.stderr


def test_BI20_health_answers_while_a_slow_upload_is_streaming(server):
    """A request that trickles its body must not block the event loop."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 b"multipart/related; type=\"application/dicom\"; boundary=b\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n5\r\n--b\r\n\r\n")
    try:
        t0 = time.monotonic()
        r = requests.get(server.url + "/api/v1/health", timeout=5)
        assert r.status_code == 200
        assert time.monotonic() - t0 < 2
    finally:
        sock.close()
