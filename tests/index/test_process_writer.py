"""Two processes writing one SQLite index (``pacsd serve --workers 2``, issue 6 / R-H1):
their writers take turns on ``<index>.writer`` (``catalogue._ProcessWriterLock``) instead
of SQLite's busy-handler sleeps. Nothing is lost, counters stay exact, a writer kept out
longer than ``busy_timeout_s`` gets a clean OutOfResources (FT-10), and a lock held by a
process that died is free again."""
from __future__ import annotations

import fcntl
import multiprocessing
import os
import time

import pytest

from pacsd.errors import OutOfResources
from pacsd.index import Catalogue
from tests.index.conftest import make_instance, store
from tests.index.test_store import counters

PER_PROCESS = 60


def _writer(url: str, k: int, start, results) -> None:
    cat = Catalogue(url, busy_timeout_s=20)
    try:
        start.wait(30)
        # Every process writes its own studies and a share of one common study, so the
        # counters of a study are updated by both processes.
        for i in range(PER_PROCESS):
            store(cat, make_instance(f"9.{k}", f"9.{k}.1", f"9.{k}.1.{i}"))
            store(cat, make_instance("9.9", "9.9.1", f"9.9.1.{k}.{i}"))
        results.put((k, "ok"))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        results.put((k, repr(e)))
    finally:
        cat.close()


@pytest.mark.timeout(180)
def test_two_processes_write_one_sqlite_index_nothing_lost(tmp_path):
    url = f"sqlite:///{tmp_path / 'index.db'}"
    cat = Catalogue(url)
    cat.migrate()
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, k, start, results)) for k in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    got = dict(results.get(timeout=5) for _ in procs)
    assert got == {0: "ok", 1: "ok"}
    n = cat.counts()
    assert n == {"patients": 1, "studies": 3, "series": 3, "instances": 4 * PER_PROCESS}
    c = counters(cat)  # also checks every counter against a recount
    assert c["9.9"][1] == 2 * PER_PROCESS and c["9.0"][1] == c["9.1"][1] == PER_PROCESS
    assert os.path.exists(str(tmp_path / "index.db") + ".writer")
    cat.close()


def test_writer_waits_for_the_other_process_then_stores(tmp_path):
    """A writer whose turn is taken waits (polling, not SQLite's 1-100 ms sleeps) and
    stores as soon as the other process lets go."""
    path = tmp_path / "index.db"
    cat = Catalogue(f"sqlite:///{path}", busy_timeout_s=5)
    cat.migrate()
    fd = os.open(str(path) + ".writer", os.O_RDONLY | os.O_CREAT)
    ctx = multiprocessing.get_context("fork")
    held, release = ctx.Event(), ctx.Event()

    def holder() -> None:
        hfd = os.open(str(path) + ".writer", os.O_RDONLY)
        fcntl.flock(hfd, fcntl.LOCK_EX)
        held.set()
        release.wait(30)
        time.sleep(0.2)
        fcntl.flock(hfd, fcntl.LOCK_UN)
        os._exit(0)

    p = ctx.Process(target=holder)
    p.start()
    try:
        assert held.wait(10)
        release.set()
        t0 = time.monotonic()
        assert store(cat, make_instance("5.5")).created
        waited = time.monotonic() - t0
        assert 0.15 <= waited < 2.0
    finally:
        p.join(10)
        os.close(fd)
    assert cat.counts()["instances"] == 1
    cat.close()


def test_writer_kept_out_times_out_cleanly_then_recovers(tmp_path):
    """FT-10 with the process lock: held by another process beyond busy_timeout_s ->
    OutOfResources (503 / 0xA700), nothing stored; a holder that dies frees it."""
    path = tmp_path / "index.db"
    cat = Catalogue(f"sqlite:///{path}", busy_timeout_s=0.3)
    cat.migrate()
    ctx = multiprocessing.get_context("fork")
    held = ctx.Event()

    def holder() -> None:
        hfd = os.open(str(path) + ".writer", os.O_RDONLY | os.O_CREAT)
        fcntl.flock(hfd, fcntl.LOCK_EX)
        held.set()
        time.sleep(60)

    p = ctx.Process(target=holder)
    p.start()
    try:
        assert held.wait(10)
        t0 = time.monotonic()
        with pytest.raises(OutOfResources) as ei:
            store(cat, make_instance("6.6"))
        assert 0.25 <= time.monotonic() - t0 < 5
        assert ei.value.http_status == 503 and ei.value.dimse_status == 0xA700
        with pytest.raises(OutOfResources):
            cat.delete("6.6")
        assert cat.counts()["instances"] == 0
    finally:
        p.kill()  # the kernel drops a dead process's flock
        p.join(10)
    assert store(cat, make_instance("6.6")).created
    assert cat.counts()["instances"] == 1
    cat.close()


def test_lock_descriptor_is_not_shared_over_fork(tmp_path):
    """A child process opens its own lock file description (a shared one would share
    the lock with the parent, i.e. exclude nobody)."""
    path = tmp_path / "index.db"
    cat = Catalogue(f"sqlite:///{path}")
    cat.migrate()
    store(cat, make_instance("7.7"))  # the parent opened its descriptor
    lock = cat._process_lock
    parent_fd = lock._fd
    assert parent_fd is not None
    ctx = multiprocessing.get_context("fork")
    out, done = ctx.Queue(), ctx.Event()

    def child() -> None:
        assert lock.acquire(1)
        out.put(lock._fd != parent_fd)
        done.wait(10)
        lock.release()
        os._exit(0)

    p = ctx.Process(target=child)
    p.start()
    assert out.get(timeout=10) is True
    with pytest.raises(BlockingIOError):  # held by the child: the parent is kept out
        fcntl.flock(parent_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    done.set()
    p.join(10)
    assert lock.acquire(1)
    lock.release()
    cat.close()


def test_refused_single_write_rolls_back_everything_it_wrote(tmp_path):
    """A group of one runs without a savepoint: a write refused after its rows were
    inserted (outside the write scope, R-A12) must still leave no row behind; the next
    write of the same instance is not affected."""
    from pacsd.errors import WriteDenied
    from pacsd.services.scoping import OneOf
    from tests.index.conftest import sha_of

    cat = Catalogue(f"sqlite:///{tmp_path / 'index.db'}")
    cat.migrate()
    p = make_instance("8.8")
    with pytest.raises(WriteDenied):
        cat.store_instance(p, sha256=sha_of(p), size=1, scope=(OneOf("institution", ["A"]),),
                           institution="B")
    assert cat.counts() == {"patients": 0, "studies": 0, "series": 0, "instances": 0}
    assert cat.store_instance(p, sha256=sha_of(p), size=1, institution="A",
                              scope=(OneOf("institution", ["A"]),)).created
    assert cat.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
    assert cat.group_stats["groups"] == 2
    cat.close()
