"""The job runner inside pacsd (R-B2): handlers per kind on the worker pool or the event
loop, retries recorded, graceful stop gives running jobs back, a restarted runner
resumes jobs whose lease expired, and two runners sharing one PostgreSQL run each job
exactly once."""
from __future__ import annotations

import asyncio
import threading

import pytest

from pacsd.config import Settings
from pacsd.services import Archive
from pacsd.services.jobs import JobFailed, JobService


def open_archive(tmp_path, url: str, name: str = "a") -> Archive:
    s = Settings()
    s.server.data_dir = str(tmp_path / name)
    s.index.url = url
    s.jobs.poll_interval_s = 0.05
    return Archive.open(s)


async def wait_for(predicate, timeout_s: float = 20.0) -> None:
    """Poll until ``predicate()`` holds (a deadline, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)


async def test_runner_runs_sync_and_async_handlers_and_records_failures(db_url, tmp_path,
                                                                       clock):
    archive = open_archive(tmp_path, db_url)
    svc = JobService(archive, clock=clock)
    seen: list[tuple[str, int]] = []
    thread_names: list[str] = []

    def sync_handler(job):
        thread_names.append(threading.current_thread().name)
        seen.append(("sync", job.payload["n"]))

    async def async_handler(job):
        seen.append(("async", job.payload["n"]))

    def failing(job):
        raise JobFailed("destination unreachable")

    def permanent(job):
        raise JobFailed("refused for good", retry=False)

    svc.register("t.sync", sync_handler)
    svc.register("t.async", async_handler)
    svc.register("t.fail", failing, max_attempts=2)
    svc.register("t.permanent", permanent)
    await svc.start()
    try:
        await svc.enqueue("t.sync", {"n": 1})
        await svc.enqueue("t.async", {"n": 2})
        fail_pk = await svc.enqueue("t.fail")
        perm_pk = await svc.enqueue("t.permanent")
        await wait_for(lambda: len(seen) == 2)
        await wait_for(lambda: svc.queue.get(perm_pk).state == "dead")
        await wait_for(lambda: svc.queue.get(fail_pk).attempts == 1
                       and svc.queue.get(fail_pk).state == "queued")
    finally:
        await svc.stop()
    assert sorted(seen) == [("async", 2), ("sync", 1)]
    assert thread_names[0].startswith("pacsd-io")  # the archive's worker pool
    failed = svc.queue.get(fail_pk)
    assert failed.last_error == "destination unreachable"
    assert clock.now + 8 <= failed.run_at <= clock.now + 10  # 10 s base, 20 % jitter
    # Second attempt after the backoff: the last allowed one -> dead letter.
    clock.advance(11)
    assert await svc.run_due() == 1
    dead = svc.queue.get(fail_pk)
    assert dead.state == "dead" and dead.attempts == 2
    assert svc.queue.get(perm_pk).last_error == "refused for good"
    archive.close()


async def test_graceful_stop_gives_running_jobs_back(db_url, tmp_path, clock):
    archive = open_archive(tmp_path, db_url)
    svc = JobService(archive, clock=clock)
    started = asyncio.Event()

    async def slow(job):
        started.set()
        await asyncio.sleep(3600)

    svc.register("t.slow", slow)
    await svc.start()
    pk = await svc.enqueue("t.slow")
    await asyncio.wait_for(started.wait(), 20)
    assert svc.queue.get(pk).state == "running"
    await svc.stop(timeout_s=0.05)
    job = svc.queue.get(pk)
    assert (job.state, job.attempts) == ("queued", 0)  # not counted as an attempt
    archive.close()


async def test_restart_resumes_jobs_of_a_crashed_process(db_url, tmp_path, clock):
    """A process that died mid-job leaves a lease; after it expires a new runner does
    the job (reliability: restart mid-queue loses nothing)."""
    archive = open_archive(tmp_path, db_url)
    done: list[int] = []
    svc = JobService(archive, clock=clock)
    svc.register("t.work", lambda job: done.append(job.pk))
    pks = [svc.queue.enqueue("t.work", {"n": n}) for n in range(3)]
    crashed = svc.queue.claim("dead-process", ["t.work"], limit=2, lease_s=60)
    assert len(crashed) == 2
    assert await svc.run_due() == 1  # only the unclaimed one is due
    clock.advance(61)                 # the dead process's leases expire
    assert await svc.run_due() == 2
    assert sorted(done) == sorted(pks)
    assert all(svc.queue.get(pk).state == "done" for pk in pks)
    archive.close()


@pytest.mark.postgres
async def test_two_runners_on_one_postgresql_run_each_job_once(pg_jobs_url, tmp_path):
    from jobhelpers import clear_queue_tables

    clear_queue_tables(pg_jobs_url)
    archives = [open_archive(tmp_path, pg_jobs_url, n) for n in ("one", "two")]
    runs: list[tuple[str, int]] = []
    services = []
    for n, archive in enumerate(archives):
        svc = JobService(archive, worker_id=f"runner-{n}")

        async def handler(job, n=n):
            runs.append((f"runner-{n}", job.payload["i"]))
            await asyncio.sleep(0.02)

        svc.register("t.pg", handler)
        services.append(svc)
    ids = [services[0].queue.enqueue("t.pg", {"i": i}) for i in range(120)]
    for svc in services:
        await svc.start()
    try:
        await wait_for(lambda: len(runs) >= 120, 60)
        await wait_for(lambda: services[0].queue.counts("t.") == {"t.pg": {"done": 120}})
    finally:
        for svc in services:
            await svc.stop()
    assert sorted(i for _, i in runs) == list(range(120))  # each exactly once
    assert {r for r, _ in runs} == {"runner-0", "runner-1"}
    assert len(ids) == 120
    for archive in archives:
        archive.close()
