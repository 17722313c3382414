"""Start and stop the servers under test on free loopback ports; nothing is installed here.

* :class:`PacsdProcess` — ``python -m pacsd.cli serve`` with a fresh data directory.
* :class:`OrthancProcess` — the Debian ``Orthanc`` binary with a generated JSON
  configuration (storage and index in a temp dir, DICOMweb plugin at /dicom-web/,
  ``RemoteAccessAllowed`` false, no authentication, environment ``TCP_NODELAY=1``). When
  the binary or the plugin is missing the error says which apt packages to install.
* :class:`StubProcess` — :mod:`benchmarks.stub`, canned answers for the client ceiling.

Every process is started by us, tracked by its Popen object and stopped by its pid only.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ORTHANC_HINT = ("Orthanc with its DICOMweb plugin is needed: apt-get update && "
                "apt-get install -y orthanc orthanc-dicomweb")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
                return
        except (OSError, urllib.error.URLError):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"server did not start ({url}); log {log}:\n{tail}")
            time.sleep(0.2)


def _wait_dimse(port: int, aet: str, proc: subprocess.Popen) -> None:
    """DIMSE answers a C-ECHO (DCMTK echoscu; a real association, so no connection is
    left waiting for an A-ASSOCIATE-RQ)."""
    from .dimse import DicomAddress, wait_echo
    wait_echo(DicomAddress("127.0.0.1", port, aet), lambda: proc.poll() is None)


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())



def stop_process(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; returns once the process is gone."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

class _Process:
    name = "server"

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.tmp: tempfile.TemporaryDirectory | None = None
        self.url = ""
        self.version = ""
        self._log = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 30)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def effective_workers(workers: str | None) -> int:
    """The worker processes ``pacsd serve --workers WORKERS`` runs: N, ``auto`` = one per
    usable CPU, None = pacsd's own default (``[server] workers``, 0 = auto)."""
    from pacsd.config import ServerSettings
    from pacsd.server import usable_cpus
    if workers is None:
        n = ServerSettings().workers
    else:
        n = 0 if workers.strip().lower() == "auto" else int(workers)
    return n if n > 0 else usable_cpus()


class PacsdProcess(_Process):
    """pacsd from this work tree, fresh data directory in a temp dir. ``workers`` (N or
    ``auto``; ``python -m benchmarks side-by-side --pacsd-workers``) is passed as
    ``pacsd serve --workers``; None leaves pacsd's default, or the environment variable
    ``PACSD_BENCH_WORKERS`` when set (R-H1). ``self.workers`` is the number of worker
    processes it runs, and the version string names it (RESULTS.md records it)."""

    name = "pacsd"

    def __init__(self, *, keep_dir: str | None = None, extra: tuple[str, ...] = (),
                 dicom: bool = False, peers: dict[str, int] | None = None,
                 workers: str | None = None) -> None:
        """``dicom``: listen for DIMSE on a free loopback port (``self.dicom_port``, AE
        ``PACSD``); ``peers``: C-MOVE destinations, AE title -> loopback port."""
        super().__init__()
        if workers is None:
            workers = os.environ.get("PACSD_BENCH_WORKERS", "").strip() or None
        if workers is not None:
            extra = ("--workers", workers, *extra)
        self.workers = effective_workers(workers)
        if keep_dir:
            data = Path(keep_dir)
            data.mkdir(parents=True, exist_ok=True)
        else:
            self.tmp = tempfile.TemporaryDirectory(prefix="pacsd-bench-")
            data = Path(self.tmp.name)
        port = free_port()
        self.dicom_port = free_port() if dicom else 0
        self.aet = "PACSD"
        for aet, peer_port in (peers or {}).items():
            extra = (*extra, "--peer", f"{aet}=127.0.0.1:{peer_port}")
        log = data / "server.log"
        self._log = open(log, "wb")
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pacsd.cli", "serve", "--data-dir", str(data / "data"),
             "--http", f"127.0.0.1:{port}", "--dicom-port", str(self.dicom_port), "--log-level", "WARNING",
             *extra],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=str(REPO), env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_http(base + "/api/v1/health", self.proc, log)
            self.version = str(_get_json(base + "/api/v1/health").get("version", "?"))
            self.version += (f", {self.workers} worker process"
                             f"{'es' if self.workers > 1 else ''}"
                             + (f" (--workers {workers})" if workers is not None else ""))
            if self.workers > 1:
                time.sleep(3)  # the other workers listen a moment after the first
            if self.dicom_port:
                _wait_dimse(self.dicom_port, self.aet, self.proc)
        except BaseException:
            self.stop()
            raise
        self.url = base + "/dicom-web"
        self.version += _git_note()


def git_state(tree: Path) -> tuple[str, bool]:
    """(short commit or "", whether pacsd/ has local changes) of a source tree
    (read-only git commands)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pacsd"], cwd=tree,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "", False
    return head, bool(dirty)


def _git_note() -> str:
    head, dirty = git_state(REPO)
    if not head:
        return ""
    return f" (git {head}{', pacsd/ modified in work tree' if dirty else ''})"


def find_orthanc() -> tuple[str, str]:
    """(Orthanc binary, DICOMweb plugin library) from the installed Debian packages."""
    binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists(
        "/usr/sbin/Orthanc") else None)
    if not binary:
        raise RuntimeError(ORTHANC_HINT)
    try:
        files = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True,
                               text=True, timeout=20).stdout.split()
    except (OSError, subprocess.SubprocessError):
        files = []
    libs = [f for f in files if ".so" in os.path.basename(f) and os.path.isfile(f)]
    # Prefer the path Orthanc's own plugin folder links to.
    libs.sort(key=lambda f: (not f.startswith("/usr/share/orthanc/plugins"), len(f)))
    if not libs:
        raise RuntimeError(ORTHANC_HINT + " (no plugin library in dpkg -L orthanc-dicomweb)")
    return binary, libs[0]


class OrthancProcess(_Process):
    """Orthanc + DICOMweb plugin with a generated configuration."""

    name = "orthanc"

    def __init__(self, *, aet: str = "ORTHANCBENCH", extra: dict | None = None,
                 peers: dict[str, int] | None = None) -> None:
        """``extra``: more configuration keys (e.g. ``DicomModalities`` for tests that use
        Orthanc as a peer PACS). ``peers``: AE title -> loopback port of the driver's
        C-MOVE destinations; the driver's calling AE (``BENCHSCU``) is known too, so its
        C-FIND / C-GET / C-MOVE are allowed."""
        super().__init__()
        binary, plugin = find_orthanc()
        self.tmp = tempfile.TemporaryDirectory(prefix="orthanc-bench-")
        root = Path(self.tmp.name)
        http_port, dicom_port = free_port(), free_port()
        self.config = {
            "Name": "pacsd-bench-orthanc",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "index"),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": http_port,
            "DicomServerEnabled": True,
            "DicomAet": aet,
            "DicomPort": dicom_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                         "Ssl": False},
        }
        if peers is not None:
            from .dimse import CALLING_AET
            modalities = {"bench-scu": [CALLING_AET, "127.0.0.1", 104]}
            modalities.update({aet.lower(): [aet, "127.0.0.1", port]
                               for aet, port in peers.items()})
            self.config["DicomModalities"] = modalities
        self.config.update(extra or {})
        self.http_port, self.dicom_port, self.aet = http_port, dicom_port, aet
        cfg = root / "orthanc.json"
        cfg.write_text(json.dumps(self.config, indent=2))
        log = root / "orthanc.log"
        self._log = open(log, "wb")
        env = dict(os.environ, TCP_NODELAY="1")
        self.proc = subprocess.Popen([binary, str(cfg)], stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=str(root), env=env)
        base = f"http://127.0.0.1:{http_port}"
        try:
            _wait_http(base + "/system", self.proc, log)
            _wait_http(base + "/dicom-web/studies?limit=1", self.proc, log)
            system = _get_json(base + "/system")
            plugin_info = _get_json(base + "/plugins/dicom-web")
        except BaseException:
            self.stop()
            raise
        self.version = (f"Orthanc {system.get('Version', '?')}, DICOMweb plugin "
                        f"{plugin_info.get('Version', '?')}")
        self.plugin = plugin
        self.url = base + "/dicom-web"


class StubProcess(_Process):
    """The canned-answer server of :mod:`benchmarks.stub` (client ceiling)."""

    name = "stub"

    def __init__(self, seed: int, slices: int) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-stub-")
        port = free_port()
        log = Path(self.tmp.name) / "stub.log"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.stub", "--port", str(port), "--seed",
             str(seed), "--slices", str(slices)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=str(REPO))
        try:
            _wait_http(f"http://127.0.0.1:{port}/ready", self.proc, log)
        except BaseException:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{port}/dicom-web"
