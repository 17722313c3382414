"""Stable studies (ARCHITECTURE "study_stable", Orthanc's StableStudy idea): a built-in
plugin, registered like any other, that notes when each study last received a new
instance and fires the ``study_stable`` hook once a study has been quiet for
``[server] stable_age_s`` seconds (e.g. to make its e-film by rule, R-C1).

State is per process and in memory: after a restart, studies that were still arriving
are not announced (their next instance starts the clock again).
"""
from __future__ import annotations

import asyncio
import threading
import time

from ..hookspecs import hookimpl


class StudyStability:
    def __init__(self, age_s: float) -> None:
        self.age_s = age_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()  # instance_stored runs on ingest worker threads

    @hookimpl
    def instance_stored(self, parsed, outcome):
        if outcome.created and self.age_s > 0:
            with self._lock:
                self._last[outcome.study_instance_uid] = time.monotonic()

    @hookimpl
    def api_ready(self, api):
        if self.age_s > 0 and api.has_hook("study_stable"):
            api.spawn(self._watch(api), name="pacsd-stability", daemon=True)

    def due(self, now: float) -> list[str]:
        with self._lock:
            out = [s for s, t in self._last.items() if now - t >= self.age_s]
            for s in out:
                del self._last[s]
        return out

    async def _watch(self, api) -> None:
        tick = min(1.0, max(self.age_s / 4, 0.02))
        while True:
            await asyncio.sleep(tick)
            for study in self.due(time.monotonic()):
                await api.fire_async("study_stable", api=api, study_uid=study)
