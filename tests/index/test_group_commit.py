"""LD-6 / issue 6: group commit of concurrent instance stores on SQLite.

Writes queued while another writer holds the lock are committed together, each in its own
savepoint: a refused instance rolls back only its own rows, the others are stored, and
nobody is answered before the commit that holds their row (catalogue module docstring).
The lock is held by the test while the writers queue, so the grouping is deterministic.
"""
from __future__ import annotations

import threading
import time

import pytest

from pacsd.errors import DuplicateInstance, HierarchyConflict, OutOfResources
from pacsd.index import Catalogue, parse_qido
from tests.index.conftest import make_instance, store
from tests.index.test_store import counters


@pytest.fixture
def cat(tmp_path):
    c = Catalogue(f"sqlite:///{tmp_path / 'index.db'}", busy_timeout_s=20)
    c.migrate()
    yield c
    c.close()


def _queued_behind_lock(cat: Catalogue, jobs: list) -> dict[int, object]:
    """Run each job on its own thread while the test holds the writer lock, wait until all
    are queued, release, and return job index -> result or exception."""
    results: dict[int, object] = {}

    def run(k: int) -> None:
        try:
            results[k] = jobs[k]()
        except BaseException as e:  # noqa: BLE001 - asserted on
            results[k] = e

    assert cat._write_lock.acquire(timeout=5)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(jobs))]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(cat._queue) < len(jobs):
            assert time.monotonic() < deadline, "writers did not queue"
            time.sleep(0.005)
    finally:
        cat._write_lock.release()
    for t in threads:
        t.join(30)
    return results


def test_LD6_queued_writes_commit_as_one_group(cat):
    insts = [make_instance("1.5", "1.5.1", f"1.5.1.{i}", InstanceNumber=i) for i in range(12)]
    before = dict(cat.group_stats)
    results = _queued_behind_lock(cat, [lambda p=p: store(cat, p) for p in insts])
    assert all(r.created for r in results.values()), results
    assert cat.group_stats["groups"] - before["groups"] == 1
    assert cat.group_stats["writes"] - before["writes"] == 12
    assert counters(cat)["1.5"][:2] == (1, 12)
    found = cat.search(parse_qido("instance", [("StudyInstanceUID", "1.5")]))
    assert len(found.items) == 12


def test_BI26_BI27_refused_write_rolls_back_only_itself(cat):
    store(cat, make_instance("1.6", "1.6.1", "1.6.1.1"))
    store(cat, make_instance("1.6", "1.6.1", "1.6.1.2"))
    good = [make_instance("1.7", "1.7.1", f"1.7.1.{i}", PatientID="P7") for i in range(3)]
    # A new study whose series already belongs to study 1.6: the study and its patient
    # get inserted before the series conflict is seen; the savepoint must undo them.
    conflict = make_instance("1.8", "1.6.1", "1.8.1.1", PatientID="P8")
    different = make_instance("1.6", "1.6.1", "1.6.1.2")  # same SOP, other content
    jobs = [lambda: store(cat, good[0]), lambda: store(cat, conflict),
            lambda: store(cat, good[1]), lambda: store(cat, different, salt="x"),
            lambda: store(cat, good[2])]
    results = _queued_behind_lock(cat, jobs)
    assert isinstance(results[1], HierarchyConflict)
    assert isinstance(results[3], DuplicateInstance)
    assert all(results[k].created for k in (0, 2, 4))
    c = counters(cat)  # also checks every counter against a recount
    assert c["1.7"][:2] == (1, 3) and c["1.6"][:2] == (1, 2) and "1.8" not in c
    assert cat.search(parse_qido("study", [("StudyInstanceUID", "1.8")])).items == []
    assert cat.search(parse_qido("study", [("PatientID", "P8")])).items == []


def test_FT10_writer_that_cannot_get_the_lock_gives_up_cleanly(tmp_path):
    cat = Catalogue(f"sqlite:///{tmp_path / 'index.db'}", busy_timeout_s=0.2)
    cat.migrate()
    try:
        assert cat._write_lock.acquire(timeout=5)
        try:
            with pytest.raises(OutOfResources):
                store(cat, make_instance("1.9", "1.9.1", "1.9.1.1"))
        finally:
            cat._write_lock.release()
        assert cat._queue == []  # the abandoned write is not committed later
        assert cat.search(parse_qido("study", [("StudyInstanceUID", "1.9")])).items == []
        assert store(cat, make_instance("1.9", "1.9.1", "1.9.1.1")).created
    finally:
        cat.close()
