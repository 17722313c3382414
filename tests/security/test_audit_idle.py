"""The audit trail's background writer (MLPS 12, R-G3): an idle tick does not hop to the
worker pool (issue 6: the empty hops took the GIL from ingest threads ten times a
second), and a queued event is still written by the next tick without any flush call."""
from __future__ import annotations

import asyncio

from pacsd.index.catalogue import Catalogue
from pacsd.services.audit import AuditTrail


async def test_idle_ticks_do_not_hop_and_queued_events_are_written(tmp_path):
    cat = Catalogue(f"sqlite:///{tmp_path / 'index.db'}")
    cat.migrate()
    hops = []

    async def run(fn):
        hops.append(fn)
        return fn()

    trail = AuditTrail(cat, run=run, flush_interval_s=0.02)
    await trail.start()
    try:
        await asyncio.sleep(0.2)  # ~10 ticks with nothing queued
        assert hops == []
        trail.record("query", detail={"level": "studies"})
        for _ in range(100):
            if trail.pending == 0 and hops:
                break
            await asyncio.sleep(0.01)
        assert len(hops) == 1 and trail.pending == 0
        assert [e["event_type"] for e in trail.query(limit=10)] == ["query"]
    finally:
        await trail.stop()
        cat.close()
