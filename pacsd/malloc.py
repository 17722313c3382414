"""glibc malloc arenas of the server process (issue 6 item 4, R-H1).

glibc gives each thread that allocates concurrently an arena of its own, up to 8 per core.
pacsd's worker threads build answers of a few kB (metadata, rendered images: above
pymalloc's 512-byte limit, so glibc allocates them) that the bounded caches keep and that
another thread frees on eviction; spread over many arenas that fragments: the 50-minute
soak (benchmarks/notes.md, session 4) showed 15 arenas holding ~125 MiB and RSS still
rising for ten minutes after the caches were full. Two arenas keep the same work in far
less memory (same soak, first minutes: RSS ~37 MiB lower); Python holds the GIL around
most allocations anyway, so the lock contention saved by more arenas is small here.

:func:`limit_arenas` is called once at ``pacsd serve`` start. An operator's own
``MALLOC_ARENA_MAX`` is respected; on a libc without ``mallopt`` it does nothing.
"""
from __future__ import annotations

import ctypes
import os

#: mallopt parameter number of M_ARENA_MAX (glibc malloc.h).
M_ARENA_MAX = -8
DEFAULT_ARENAS = 2


def limit_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap this process's malloc arenas (and, through the environment, those of the
    processes it starts); True when the cap was set here."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False   # the operator chose
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False   # not glibc
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if mallopt(M_ARENA_MAX, arenas) != 1:
        return False
    os.environ["MALLOC_ARENA_MAX"] = str(arenas)
    return True
