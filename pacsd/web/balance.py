"""Connections spread evenly over worker processes (R-H1, issue 6; ``pacsd serve --workers``).

With ``SO_REUSEPORT`` the kernel picks a worker's socket by a hash of the connection's
addresses, not by how busy the worker is. Eight long keep-alive connections (eight
viewers pulling whole studies) then land 5/3 or 6/2 on two workers as often as 4/4, and the
busier worker, bound by its GIL, sets the pace while the other idles: the WADO-RS study
benchmark at c=8 measured ~1330 MB/s on uneven splits and ~2100 MB/s on 4/4, same tree.

So the workers share ONE listening socket (opened by the supervisor and inherited) and
each runs its own accept loop (:class:`BalancedSite`, in place of asyncio's, which
accepts every pending connection at each wake-up). Every worker is woken for a new
connection; before accepting, a worker publishes its open connections in a small table
in shared memory (:class:`ConnectionTable`, made before the fork) and, if it holds more
than the least-loaded other worker, steps back for ``DEFER_S`` so that one can take it.
It steps back at most once per connection: when nobody else took it meanwhile (that
worker is busy, blocked or gone) it accepts itself, so no connection waits longer than
``DEFER_S`` (10 ms: longer than a scheduler time slice on a loaded machine) for that. One connection is accepted per wake-up; epoll (level-triggered)
wakes the loop again for the next.

The counts are advisory (a stale count only makes a worker step back once in vain, or
not at all); correctness never depends on them.
"""
from __future__ import annotations

import asyncio
import logging
import mmap
import socket
import struct

from aiohttp import web

log = logging.getLogger("pacsd")

#: How long a worker holding more connections than another waits for that one to accept.
DEFER_S = 0.010
#: Pause after an accept error such as EMFILE (asyncio's accept loop waits 1 s).
ACCEPT_ERROR_PAUSE_S = 0.1

_SLOT = struct.Struct("=q")
#: The count of a worker that is not running: never the least loaded.
GONE = 2**62


class ConnectionTable:
    """Open connections per worker, in anonymous shared memory (fork keeps it). The
    slot of a worker that died reads :data:`GONE` until its successor starts."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._mem = mmap.mmap(-1, max(1, workers) * _SLOT.size)

    def gone(self, index: int) -> None:
        self.set(index, GONE)

    def set(self, index: int, count: int) -> None:
        _SLOT.pack_into(self._mem, index * _SLOT.size, count)

    def get(self, index: int) -> int:
        return _SLOT.unpack_from(self._mem, index * _SLOT.size)[0]

    def least_other(self, index: int) -> int | None:
        """The fewest connections any other worker holds (None: there is no other)."""
        others = [self.get(i) for i in range(self.workers) if i != index]
        return min(others) if others else None


class BalancedSite(web.BaseSite):
    """An aiohttp site on an inherited listening socket with the accept loop of the
    module docstring. ``index`` is this worker's slot in ``table``."""

    __slots__ = ("_sock", "_table", "_index", "_loop", "_handle", "_deferred",
                 "_starting", "_closed", "_name", "_tasks")

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, table: ConnectionTable,
                 index: int, *, ssl_context=None) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._sock = sock
        self._table = table
        self._index = index
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._deferred = False
        self._starting = 0   # accepted, connection_made not yet run
        self._closed = False
        self._tasks: set[asyncio.Task] = set()
        host, port = sock.getsockname()[:2]
        self._name = f"{'https' if ssl_context else 'http'}://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        self._loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        self._server = self   # BaseSite.stop() calls self._server.close()
        self._table.set(self._index, 0)
        self._loop.add_reader(self._sock.fileno(), self._ready)

    def close(self) -> None:
        """Stop accepting (connections already accepted are the runner's to drain)."""
        if self._closed or self._loop is None:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        if self._handle is not None:
            self._handle.cancel()
        self._table.gone(self._index)

    def open_connections(self) -> int:
        server = self._runner.server
        return (len(server.connections) if server is not None else 0) + self._starting

    def _resume(self) -> None:
        self._handle = None
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._ready)

    def _pause(self, seconds: float) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._handle = self._loop.call_later(seconds, self._resume)

    def _ready(self) -> None:
        mine = self.open_connections()
        self._table.set(self._index, mine)
        least = self._table.least_other(self._index)
        if not self._deferred and least is not None and mine > least:
            self._deferred = True
            self._pause(DEFER_S)
            return
        self._deferred = False
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return            # another worker took it
        except OSError as exc:  # EMFILE, ENFILE, ENOBUFS ...: the connection waits
            log.error("accepting a connection failed: %s", exc)
            self._pause(ACCEPT_ERROR_PAUSE_S)
            return
        conn.setblocking(False)
        self._starting += 1
        self._table.set(self._index, mine + 1)
        task = self._loop.create_task(self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(
                self._runner.server, conn, ssl=self._ssl_context)
        except Exception as exc:  # noqa: BLE001 - a failed TLS handshake, a reset peer
            log.debug("connection setup failed: %s", exc)
            conn.close()
        finally:
            self._starting -= 1
