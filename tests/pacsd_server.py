"""Run a real ``pacsd serve`` process on a free loopback port (e2e tests, benchmarks)."""
from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``dicom_port``: 0 = DIMSE off (default); None = a free port; or that port. The
    DIMSE port in use is ``self.dicom_port`` (0 when off). With DIMSE on, start-up is
    detected from pacsd's INFO log line, so keep the default log level."""

    def __init__(self, data_dir: str, *extra: str, dicom_port: int | None = 0,
                 env: dict[str, str] | None = None, https_ca: str | None = None) -> None:
        """``https_ca``: the server speaks HTTPS with a certificate from this CA file."""
        self.port = free_port()
        self.dicom_port = free_port() if dicom_port is None else dicom_port
        self.url = f"{'https' if https_ca else 'http'}://127.0.0.1:{self.port}"
        ssl_context = ssl.create_default_context(cafile=https_ca) if https_ca else None
        self.log = open(os.path.join(data_dir, "server.log"), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pacsd.cli", "serve", "--data-dir", data_dir,
             "--http", f"127.0.0.1:{self.port}", "--dicom-port", str(self.dicom_port),
             # One process unless a test asks for workers (the default is one per CPU):
             # tests signal, profile and count this pid (tests/e2e/test_workers.py).
             *(() if "--workers" in extra else ("--workers", "1")), *extra],
            stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, **env} if env else None)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/api/v1/health", timeout=1,
                                       context=ssl_context).read()
                if self.dicom_port and not self._dimse_listening():
                    raise OSError("DIMSE not listening yet")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("pacsd did not start: see " + self.log.name)
                time.sleep(0.1)

    def _dimse_listening(self) -> bool:
        # DIMSE starts just after HTTP. Not probed with a connection: pynetdicom keeps a
        # connection that sends no A-ASSOCIATE-RQ as an association until acse_timeout_s.
        self.log.flush()
        with open(self.log.name, "rb") as fh:
            return b"DIMSE listening" in fh.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def stow_sigterm_midway(srv: Server, body: bytes, ctype: str) -> int | None:
    """POST a STOW-RS ``body`` slowly, sending SIGTERM to the server process while it is
    still arriving (graceful shutdown, FT-1); the answer's status, None without one."""
    import requests

    def slow_body():
        for i in range(0, len(body), 1024):
            yield body[i:i + 1024]
            if i == 2048:
                time.sleep(0.5)  # let the server start handling the request
                os.kill(srv.proc.pid, signal.SIGTERM)  # shutdown starts mid-request
                time.sleep(0.5)

    r = requests.post(srv.url + "/dicom-web/studies", data=slow_body(),
                      headers={"Content-Type": ctype}, timeout=40)
    return r.status_code
