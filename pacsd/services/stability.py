"""Stable studies (ARCHITECTURE "study_stable", Orthanc's StableStudy idea): a built-in
plugin, registered like any other, that notes when each study last received a new
instance and fires the ``study_stable`` hook once a study has been quiet for
``[server] stable_age_s`` seconds (e.g. to make its e-film by rule, R-C1).

State is per process and in memory: after a restart, studies that were still arriving
are not announced (their next instance starts the clock again). With worker processes
(``pacsd serve --workers N``, server.py) only the primary watches: the other workers send
it the Study Instance UID of each new instance over a pipe the supervisor made
(:meth:`StudyStability.attach`), so a study received by several workers is announced
once, when it is quiet on all of them.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

from ..hookspecs import hookimpl

log = logging.getLogger(__name__)


class StudyStability:
    def __init__(self, age_s: float) -> None:
        self.age_s = age_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()  # instance_stored runs on ingest worker threads
        self._send: int | None = None  # a secondary worker: the pipe to the primary
        self._receive: int | None = None  # the primary worker: the pipe's read end
        self._partial = b""
        self._dropped = False

    def attach(self, pipe: tuple[int, int], primary: bool) -> None:
        """Worker processes (module docstring): ``pipe`` is (read fd, write fd)."""
        read_fd, write_fd = pipe
        fd = read_fd if primary else write_fd
        os.set_blocking(fd, False)
        if primary:
            self._receive = read_fd
        else:
            self._send = write_fd

    @hookimpl
    def instance_stored(self, parsed, outcome):
        if not (outcome.created and self.age_s > 0):
            return
        if self._send is not None:
            try:  # one line < PIPE_BUF: written whole, never mixed with another worker's
                os.write(self._send, outcome.study_instance_uid.encode() + b"\n")
            except BlockingIOError:  # the primary is not reading (restarting): bounded
                if not self._dropped:
                    log.warning("stable-study notices dropped: the primary worker is "
                                "not reading them")
                self._dropped = True
            else:
                self._dropped = False
            return
        with self._lock:
            self._last[outcome.study_instance_uid] = time.monotonic()

    def _read_notices(self) -> None:
        assert self._receive is not None
        try:
            data = os.read(self._receive, 65536)
        except BlockingIOError:
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        now = time.monotonic()
        with self._lock:
            for line in lines:
                if line:
                    self._last[line.decode()] = now

    @hookimpl
    def api_ready(self, api):
        if not (self.age_s > 0 and api.has_hook("study_stable")):
            self._send = None
            self.age_s = 0.0  # nobody listens: note nothing
        elif self._send is None:
            api.spawn(self._watch(api), name="pacsd-stability", daemon=True)

    def due(self, now: float) -> list[str]:
        with self._lock:
            out = [s for s, t in self._last.items() if now - t >= self.age_s]
            for s in out:
                del self._last[s]
        return out

    async def _watch(self, api) -> None:
        tick = min(1.0, max(self.age_s / 4, 0.02))
        loop = asyncio.get_running_loop()
        if self._receive is not None:
            loop.add_reader(self._receive, self._read_notices)
        try:
            while True:
                await asyncio.sleep(tick)
                for study in self.due(time.monotonic()):
                    await api.fire_async("study_stable", api=api, study_uid=study)
        finally:
            if self._receive is not None:
                loop.remove_reader(self._receive)
