"""The persistent job queue (R-B2) on SQLite and the real PostgreSQL: dedupe, backoff
with jitter on a controllable clock, dead letter with the last error, lease expiry
(resume after a crash), manual resubmit, and exactly-once claiming by two workers on one
PostgreSQL (FOR UPDATE SKIP LOCKED)."""
from __future__ import annotations

import random
import threading
import time

import pytest

from pacsd import errors
from pacsd.index import Catalogue
from pacsd.index.jobs import Backoff, JobQueue


def make_queue(catalogue, clock, **kw) -> JobQueue:
    kw.setdefault("backoff", Backoff(base_s=10.0, max_s=100.0, jitter=0.0))
    return JobQueue(catalogue, clock=clock, **kw)


def test_enqueue_claim_complete(catalogue, clock):
    q = make_queue(catalogue, clock)
    pk = q.enqueue("test.kind", {"a": 1})
    assert q.counts() == {"test.kind": {"queued": 1}}
    (job,) = q.claim("w1", ["test.kind"], limit=5, lease_s=30)
    assert (job.pk, job.payload, job.state, job.attempts) == (pk, {"a": 1}, "running", 1)
    assert job.lease_until == clock.now + 30
    assert q.claim("w2", ["test.kind"]) == []  # leased: nobody else gets it
    assert q.claim("w1", ["other.kind"]) == []  # kinds filter
    assert q.complete(job) is True
    assert q.get(pk).state == "done" and q.get(pk).finished_at == clock.now
    assert q.claim("w1", None) == []


def test_delay_and_dedupe(catalogue, clock):
    q = make_queue(catalogue, clock)
    a = q.enqueue("k", {"n": 1}, dedupe_key="study-1", delay_s=5)
    assert q.enqueue("k", {"n": 2}, dedupe_key="study-1") == a  # still queued: same job
    assert q.claim("w", ["k"]) == []  # not due yet
    clock.advance(5)
    (job,) = q.claim("w", ["k"])
    # Once it runs, a new arrival needs a new job (the running one may have missed it).
    b = q.enqueue("k", {"n": 3}, dedupe_key="study-1")
    assert b != a
    # The running job fails and would be retried: folded into the queued twin.
    assert q.fail(job, "peer down") == "queued"
    assert q.get(a) is None
    twin = q.get(b)
    assert twin.state == "queued" and twin.attempts == 1 and twin.last_error == "peer down"
    assert twin.run_at == clock.now + 10


def test_backoff_is_exponential_capped_and_jittered(catalogue, clock):
    q = make_queue(catalogue, clock, max_attempts=20)
    pk = q.enqueue("k")
    delays = []
    for _ in range(6):
        clock.advance(1000)
        (job,) = q.claim("w", ["k"])
        start = clock.now
        assert q.fail(job, "try later") == "queued"
        run_at = q.get(pk).run_at
        delays.append(run_at - start)
        clock.now = run_at - 0.001
        assert q.claim("w", ["k"]) == []  # not before its time
        clock.now = run_at
    assert delays == [10, 20, 40, 80, 100, 100]
    # Jitter: up to 20 % less, never more; deterministic with a seeded generator.
    b = Backoff(base_s=10, max_s=100, jitter=0.2)
    rng = random.Random(7)
    got = [b.delay(3, rng) for _ in range(200)]
    assert all(32 <= d <= 40 for d in got) and len(set(got)) > 100


def test_dead_letter_keeps_last_error_and_resubmit(catalogue, clock):
    q = make_queue(catalogue, clock, max_attempts=3)
    pk = q.enqueue("k", dedupe_key="x")
    for n in range(1, 4):
        (job,) = q.claim("w", ["k"])
        assert job.attempts == n
        state = q.fail(job, f"refused {n}")
        clock.advance(1000)
    assert state == "dead"
    dead = q.get(pk)
    assert dead.state == "dead" and dead.last_error == "refused 3" and dead.attempts == 3
    assert q.claim("w", ["k"]) == []
    assert [j.pk for j in q.list(state="dead")] == [pk]
    with pytest.raises(errors.Conflict):
        q.resubmit(q.enqueue("k"))  # a queued job cannot be resubmitted
    again = q.resubmit(pk)
    assert (again.state, again.attempts, again.run_at) == ("queued", 0, clock.now)
    with pytest.raises(errors.NotFound):
        q.resubmit(10**9)


def test_permanent_failure_goes_straight_to_dead_letter(catalogue, clock):
    q = make_queue(catalogue, clock)
    pk = q.enqueue("k")
    (job,) = q.claim("w", ["k"])
    assert q.fail(job, "destination refused the SOP class", retry=False) == "dead"
    assert q.get(pk).last_error == "destination refused the SOP class"


def test_resubmit_refused_while_an_identical_job_is_queued(catalogue, clock):
    q = make_queue(catalogue, clock, max_attempts=1)
    pk = q.enqueue("k", dedupe_key="d")
    (job,) = q.claim("w", ["k"])
    q.fail(job, "boom")
    q.enqueue("k", dedupe_key="d")
    with pytest.raises(errors.Conflict):
        q.resubmit(pk)


def test_expired_lease_is_taken_over_and_the_old_worker_loses(catalogue, clock):
    """A worker that crashed (or hung) holds its jobs only until the lease ends."""
    q = make_queue(catalogue, clock)
    pk = q.enqueue("k")
    (old,) = q.claim("crashed", ["k"], lease_s=60)
    clock.advance(59)
    assert q.claim("w2", ["k"], lease_s=60) == []
    assert q.extend(old, 60) is True  # a live worker keeps its lease with heartbeats
    clock.advance(61)
    (new,) = q.claim("w2", ["k"], lease_s=60)
    assert new.pk == pk and new.attempts == 2 and new.leased_by == "w2"
    assert q.complete(old) is False and q.fail(old, "late") is None  # lease lost
    assert q.extend(old, 60) is False
    assert q.complete(new) is True


def test_lease_expiring_on_the_last_attempt_is_dead(catalogue, clock):
    q = make_queue(catalogue, clock, max_attempts=1)
    pk = q.enqueue("k")
    q.claim("crashed", ["k"], lease_s=10)
    clock.advance(11)
    assert q.claim("w", ["k"]) == []
    job = q.get(pk)
    assert job.state == "dead" and "lease expired" in job.last_error


def test_release_gives_the_job_back_without_counting(catalogue, clock):
    q = make_queue(catalogue, clock)
    pk = q.enqueue("k")
    (job,) = q.claim("w", ["k"])
    assert q.release(job) is True
    j = q.get(pk)
    assert j.state == "queued" and j.attempts == 0 and j.run_at == clock.now


def test_purge_removes_old_done_jobs_only(catalogue, clock):
    q = make_queue(catalogue, clock, max_attempts=1)
    done, dead = q.enqueue("k"), q.enqueue("k")
    for job in q.claim("w", ["k"], limit=2):
        q.complete(job) if job.pk == done else q.fail(job, "x")
    clock.advance(100)
    assert q.purge(older_than_s=200) == 0
    assert q.purge(older_than_s=50) == 1
    assert q.get(done) is None and q.get(dead).state == "dead"


@pytest.mark.postgres
def test_two_workers_on_one_postgresql_claim_every_job_exactly_once(pg_jobs_url):
    """R-B2 scale-out: two pacsd workers (separate engines, as separate processes have)
    share one PostgreSQL; SKIP LOCKED hands each job to exactly one of them."""
    from jobhelpers import clear_queue_tables

    clear_queue_tables(pg_jobs_url)
    producer = Catalogue(pg_jobs_url)
    q0 = JobQueue(producer)
    ids = {q0.enqueue("pg.kind", {"n": n}) for n in range(300)}
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def work(name: str) -> None:
        cat = Catalogue(pg_jobs_url)
        q = JobQueue(cat)
        barrier.wait()
        try:
            while True:
                batch = q.claim(name, ["pg.kind"], limit=7, lease_s=300)
                if not batch:
                    return
                for job in batch:
                    claimed[name].append(job.pk)
                    time.sleep(0.002)  # some work, so both workers overlap under load
                    assert q.complete(job)
        finally:
            cat.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    everything = claimed["a"] + claimed["b"]
    assert sorted(everything) == sorted(ids)  # every job, none twice
    assert claimed["a"] and claimed["b"]      # both really worked
    assert q0.counts("pg.") == {"pg.kind": {"done": 300}}
    producer.close()
