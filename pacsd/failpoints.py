"""L0: named fail points for crash testing (reliability-matrix FT-1).

The ingest path calls :func:`hit` at each instant where a crash must not lose an
acknowledged object or leave a half-written one behind: after the staged file is
fsynced, after the rename into the store, after each copy, around the index commit,
before the answer is sent. Normally nothing is armed and :func:`hit` is one dictionary
lookup. A test arms fail points for a whole ``pacsd serve`` process through the
environment, never through settings or the network:

    PACSD_FAILPOINTS="store.after_rename=kill@3;index.after_commit=kill"

``NAME=ACTION[@N]``: on the N-th time the point is reached (default: the first), do
ACTION: ``kill`` (SIGKILL this process: no cleanup, no flush, like a crash or an OOM
kill) or ``error`` (raise OutOfResources, like a failing disk or database). Points are listed in
:data:`POINTS` and in docs/operations.md; an unknown name stops the start-up, so a typo
cannot make a crash test pass vacuously.
"""
from __future__ import annotations

import os
import signal
import threading

from .errors import OutOfResources

#: Every fail point the code calls, in ingest order.
POINTS = (
    "ingest.after_parse",      # header parsed, nothing stored yet
    "store.after_fsync",       # staged file fsynced, not yet renamed into the store
    "store.after_rename",      # renamed into objects/, directory not yet fsynced
    "store.after_copy",        # one more copy of a replicated store is durable
    "index.before_commit",     # index rows written, transaction not committed
    "index.after_commit",      # committed, the caller not yet told
    "web.before_response",     # STOW-RS: all parts stored, response not sent
    "dimse.before_status",     # C-STORE: stored, status not sent
)

ENV = "PACSD_FAILPOINTS"

_armed: dict[str, list] = {}   # name -> [action, remaining hits]
_lock = threading.Lock()


def configure(spec: str | None) -> None:
    """Arm the fail points of ``spec`` (the :data:`ENV` syntax); ``None``/'' disarms."""
    armed: dict[str, list] = {}
    for item in filter(None, (p.strip() for p in (spec or "").split(";"))):
        name, _, rest = item.partition("=")
        action, _, count = rest.partition("@")
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown fail point {name!r}")
        if action not in ("kill", "error"):
            raise ValueError(f"{ENV}: action must be kill or error, not {action!r}")
        armed[name] = [action, int(count) if count else 1]
    with _lock:
        _armed.clear()
        _armed.update(armed)


def hit(name: str) -> None:
    """Reached fail point ``name``: act if it is armed and its count is reached."""
    if not _armed:
        return
    with _lock:
        entry = _armed.get(name)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _armed[name]
    if entry[0] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OutOfResources(f"fail point {name}")


configure(os.environ.get(ENV))
