"""The scheduled scrub in the serve process (R-A6; reliability-matrix §3 target 3, FT-6,
FT-13): runs when due, in slices that resume after a restart, one process at a time
(lease), repairs bad copies from a valid one, records and audits the result."""
from __future__ import annotations

import asyncio

import orjson
import pytest
from dicomgen import make_instance

from pacsd.services.audit import AuditTrail
from pacsd.services.scheduled_scrub import LEASE_S, ScrubScheduler
from pacsd.store.verification import CopyState, check_copy

from .conftest import Clock, ingest

pytestmark = pytest.mark.asyncio
DAY = 86400.0


async def stored(archive, n=5):
    return [(await ingest(archive, d), d) for d in
            (make_instance(seed=i, sop=f"1.2.826.0.1.3680043.9.13.{i}") for i in range(n))]


def damage(archive, sha):
    path = archive.store.copies[1].local_path(sha)
    with open(path, "r+b") as fh:
        fh.seek(250)
        b = fh.read(1)
        fh.seek(250)
        fh.write(bytes([b[0] ^ 0x55]))


async def test_R_A6_scheduled_scrub_slices_repairs_and_audits(archive):
    objs = await stored(archive)
    damage(archive, objs[3][0])
    archive.settings.storage.scrub_every_days = 7
    clock = Clock(1_000_000.0)
    audit = AuditTrail(archive.catalogue)
    a = ScrubScheduler(archive, audit, clock=clock, slice_objects=2, orphan_grace_s=0)
    reports = []
    while True:
        r = a.tick()
        assert r is not None
        reports.append(r)
        if r.complete:
            break
    assert len(reports) == 3 and sum(r.objects for r in reports) == 5
    assert check_copy(archive.store.copies[1], objs[3][0], len(objs[3][1])) is CopyState.OK
    status = a.status()
    assert status["in_progress"] is False and status["last_completed_at"] == clock.t
    result = status["last_result"]
    assert result["objects"] == 5 and result["repairs"] == 1 and result["ok"] is True
    assert result["counts"] == {"OK": 14, "DIFFERING_CHECKSUM": 1}
    audit.flush_sync()
    events = audit.query(event_type="scrub", limit=5)
    assert len(events) == 1 and events[0]["object_count"] == 5
    assert orjson.loads(events[0]["detail"])["repairs"] == 1
    assert a.tick() is None                    # not due again yet
    clock.t += 7 * DAY
    assert a.tick() is not None                # a week later: the next run


async def test_R_A6_FT13_one_process_at_a_time_and_resume_after_crash(archive):
    await stored(archive)
    archive.settings.storage.scrub_every_days = 1
    clock = Clock(5_000_000.0)
    a = ScrubScheduler(archive, clock=clock, slice_objects=2)
    b = ScrubScheduler(archive, clock=clock, slice_objects=2)
    first = a.tick()
    assert first is not None and not first.complete and first.last_pk > 0
    # Process A takes the next slice and "dies" holding the lease.
    assert a._claim() == first.last_pk
    assert b.tick() is None                    # B waits while the lease is held
    clock.t += LEASE_S + 1                     # the lease of the dead process expires
    second = b.tick()
    assert second is not None and second.last_pk > first.last_pk  # goes on, not over
    while not second.complete:
        second = b.tick()
    assert b.status()["last_result"]["objects"] == 5


async def test_R_A6_serve_runs_the_scheduled_scrub_and_reports_it(aiohttp_client, settings):
    from pacsd.web import create_app
    settings.storage.scrub_every_days = 7
    client = await aiohttp_client(create_app(settings))
    for _ in range(200):                       # bounded wait for the first run
        status = await (await client.get("/api/v1/storage/scrub")).json()
        if status["last_completed_at"] is not None:
            break
        await asyncio.sleep(0.05)
    assert status["last_result"]["ok"] is True and status["every_days"] == 7
