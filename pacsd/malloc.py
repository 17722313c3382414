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
    return _mallopt({"MALLOC_ARENA_MAX": (M_ARENA_MAX, arenas)})


def _mallopt(settings: dict[str, tuple[int, int]]) -> bool:
    """Set each glibc malloc parameter (environment name -> (mallopt number, value)) and
    hand it to child processes through the environment; nothing when the operator set
    any of those names (their choice) or on a libc without ``mallopt``."""
    if any(os.environ.get(name) for name in settings):
        return False   # the operator chose
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False   # not glibc
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    for param, value in settings.values():
        if mallopt(param, value) != 1:
            return False
    os.environ.update({name: str(value) for name, (_, value) in settings.items()})
    return True


#: mallopt parameter numbers of M_TRIM_THRESHOLD and M_MMAP_THRESHOLD (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the arenas, not from a fresh mmap each time.
MMAP_THRESHOLD = 4 * 1024**2
#: Free memory an arena keeps at its top before giving it back to the kernel.
TRIM_THRESHOLD = 32 * 1024**2


def keep_object_buffers() -> bool:
    """Let freed buffers of a few MB be reused instead of returned to the kernel (R-H1,
    issue 6). A WADO-RS study answer reads each stored object (0.5 MB for a CT slice)
    into a fresh buffer; with glibc's default (dynamic) thresholds those blocks were
    mmapped or trimmed away and faulted in and zeroed again for every object: 15 % of
    the server's GIL time, and 0.7-0.9 against 0.48-0.55 ms of server CPU per MB at 8
    concurrent study retrievals (benchmarks/notes.md). Blocks up to
    :data:`MMAP_THRESHOLD` now come from the (two, :func:`limit_arenas`) arenas, each of
    which keeps up to :data:`TRIM_THRESHOLD` free: RSS may stay up to that much higher
    after a burst. An operator's own ``MALLOC_MMAP_THRESHOLD_`` or
    ``MALLOC_TRIM_THRESHOLD_`` is respected (then nothing is set); True when set here."""
    return _mallopt({"MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                     "MALLOC_TRIM_THRESHOLD_": (M_TRIM_THRESHOLD, TRIM_THRESHOLD)})
