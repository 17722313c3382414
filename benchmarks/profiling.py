"""Sampling profiles of the server under test with py-spy, summarised to hotspots.

:class:`PySpy` attaches ``py-spy record --format raw --nonblocking`` to a pid for the length
of one phase (it is started and stopped by us, by pid); the runner records each phase
twice at once: ``--gil`` (only the thread holding the GIL: where the Python CPU goes, the
limit of a one-process Python server) and all non-idle threads (adds time in C calls that
release the GIL — fsync, SQLite, hashing). :func:`summarise` reads the collapsed stacks
and returns, per function (``file:function``), the share of samples where it is on top of
the stack (self) and anywhere on it (inclusive).

py-spy is an optional tool (``pip install py-spy``); without it profiling is skipped with a
note.
"""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def available() -> bool:
    return shutil.which("py-spy") is not None


class PySpy:
    """One ``py-spy record`` of ``pid``. ``gil=True`` samples only the thread holding the
    GIL (where Python CPU goes); otherwise every non-idle thread (adds I/O and fsync
    waits, and threads waiting for the GIL)."""

    def __init__(self, pid: int, out: Path, rate: int = 100, gil: bool = False) -> None:
        self.out = out
        self.log = open(str(out) + ".log", "wb")
        self.proc = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--output", str(out),
             "--rate", str(rate), "--nonblocking"] + (["--gil"] if gil else []),
            stdout=self.log, stderr=subprocess.STDOUT)
        time.sleep(0.5)  # let it attach before the workload starts

    def stop(self) -> Path | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.out if self.out.exists() and self.out.stat().st_size else None


def short_path(path: str) -> str:
    """``pacsd/services/ingest.py`` / ``aiohttp/multipart.py``: py-spy already gives paths
    relative to sys.path; absolute ones (``--full-filenames``) are cut the same way."""
    for marker in ("/site-packages/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    m = re.search(r"/lib/python3\.\d+/(.*)$", path)
    if m:
        return m.group(1)
    return path


def frame_key(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{short_path(m.group('file'))}:{m.group('func')}"


def summarise(raw: Path, top: int = 15) -> dict:
    """Self and inclusive shares of the busiest functions (and of pacsd's own code)."""
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        keys = [frame_key(f) for f in stack.split(";") if f]
        if not keys:
            continue
        total += n
        self_c[keys[-1]] += n
        for k in set(keys):
            incl_c[k] += n

    def pct(c: int) -> float:
        return round(100.0 * c / total, 1) if total else 0.0

    def is_pacsd(k: str) -> bool:
        # The event loop's root frames (cli main -> serve) and the middleware chain wrap
        # every request: their inclusive share says nothing about where time goes.
        return (k.startswith("pacsd/") and not k.startswith(("pacsd/cli.py", "pacsd/server.py"))
                and "middleware" not in k)

    # Leaves grouped by package: where CPU goes (pacsd, sqlalchemy, aiohttp, pydicom ...).
    by_pkg: Counter[str] = Counter()
    for k, c in self_c.items():
        parts = k.split(":", 1)[0].split("/")
        pkg = "/".join(parts[:2]) if parts[0] == "pacsd" and len(parts) > 2 else parts[0]
        by_pkg[pkg.removesuffix(".py")] += c
    return {
        "samples": total,
        "self": [{"function": k, "pct": pct(c)} for k, c in self_c.most_common(top)],
        "inclusive_pacsd": [{"function": k, "pct": pct(c)}
                            for k, c in incl_c.most_common() if is_pacsd(k)][:top],
        "by_package": [{"package": k, "pct": pct(c)} for k, c in by_pkg.most_common(10)],
    }
