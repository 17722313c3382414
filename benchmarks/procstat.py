"""CPU time of a server under test: a process and its worker processes (Linux /proc).

``pacsd serve --workers N`` is a supervisor and N forked workers; the supervisor's own
``/proc/PID/stat`` does not count its children while they run, so every benchmark reads
the whole process tree through :func:`cpu_s`."""
from __future__ import annotations

import os
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")


def server_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (``/proc/PID/task/*/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def children(pid: int) -> list[int]:
    """The worker processes of ``pid`` (its descendants), or ``[pid]`` when it has none."""
    return server_pids(pid)[1:] or [pid]


def cpu_s(pid: int, *, sys_only: bool = False) -> float:
    """User + system (or system only) CPU seconds of ``pid``, its threads and its
    descendants; a process that ended meanwhile counts nothing."""
    ticks = 0
    for p in server_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[12]) + (0 if sys_only else int(fields[11]))
    return ticks / CLK
