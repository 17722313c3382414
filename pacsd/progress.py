"""L1: the one progress line of pacsd's long commands (verify, import, pull, export,
purge, reconcile): on stderr, only when it is a terminal, redrawn at most 5 times a
second, never with patient data (counts only)."""
from __future__ import annotations

import sys
import time


class ProgressBar:
    """``bar(phase, done, total, note=..., final=...)`` draws ``label phase: [###] n/N``;
    ``final=True`` (or ``done == total``) always draws and, with ``final``, ends the
    line. :meth:`close` ends a line left open."""

    def __init__(self, label: str, stream=None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._last = 0.0
        self._open = False

    def __call__(self, phase: str, done: int, total: int | None, *, note: str = "",
                 final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.2 and done != total and not final):
            return
        self._last = now
        head = f"{self.label} {phase}".rstrip()
        if total:
            frac = min(1.0, done / total)
            line = f"{head}: [{'#' * int(frac * 30):<30}] {done}/{total} ({frac:.0%})"
        else:
            line = f"{head}: {done}"
        self.stream.write("\r" + f"{line} {note}".rstrip().ljust(72))
        self._open = True
        if final:
            self.close()
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
