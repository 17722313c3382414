"""SQLite group commits on the writer's own DBAPI connection (issue 6, session 8,
``catalogue._RawWriter``): the same rows, counters and refusals as through SQLAlchemy,
a refused write rolls back, a scoped write still runs its check through SQLAlchemy, and
a writer connection that broke is replaced by the next group (R-H1, LD-6, FT-10)."""
from __future__ import annotations

import multiprocessing
import os

import pytest

from pacsd.errors import DuplicateInstance, HierarchyConflict, PacsdError, WriteDenied
from pacsd.index import Catalogue
from tests.index.conftest import make_instance, sha_of, store
from tests.index.test_store import counters


@pytest.fixture()
def cat(tmp_path):
    c = Catalogue(f"sqlite:///{tmp_path / 'index.db'}", busy_timeout_s=5)
    c.migrate()
    yield c
    c.close()


def test_unscoped_store_runs_on_the_writer_connection(cat):
    p = make_instance("1.5", "1.5.1", "1.5.1.1")
    assert store(cat, p).created
    writer = cat._raw_writer._fairy
    assert writer is not None  # kept for the next group
    assert store(cat, make_instance("1.5", "1.5.1", "1.5.1.2")).created
    assert cat._raw_writer._fairy is writer
    assert not writer.dbapi_connection.in_transaction  # committed, nothing left open
    assert cat.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 2}
    assert counters(cat)["1.5"][:2] == (1, 2)  # also checked against a recount
    assert not store(cat, p).created  # BI-25 re-send


def test_refused_write_rolls_back_on_the_writer_connection(cat):
    p = make_instance("1.6", "1.6.1", "1.6.1.1")
    store(cat, p)
    with pytest.raises(HierarchyConflict):  # BI-27
        store(cat, make_instance("1.6", "1.6.2", "1.6.1.1"))
    with pytest.raises(DuplicateInstance):  # BI-26
        store(cat, make_instance("1.6", "1.6.1", "1.6.1.1"), salt="x")
    assert not cat._raw_writer._fairy.dbapi_connection.in_transaction
    assert cat.counts()["series"] == 1
    assert store(cat, make_instance("1.6", "1.6.1", "1.6.1.2")).created
    assert counters(cat)["1.6"][:2] == (1, 2)


def test_several_at_once_with_a_refusal(cat):
    store(cat, make_instance("1.7", "1.7.1", "1.7.1.0"))
    items = [(make_instance("1.7", "1.7.1", f"1.7.1.{i}"), sha_of(
        make_instance("1.7", "1.7.1", f"1.7.1.{i}"), "x" if i == 0 else ""), 10, None,
        None) for i in range(4)]
    out = cat.store_instances(items)
    assert isinstance(out[0], DuplicateInstance)
    assert all(o.created for o in out[1:])
    assert counters(cat)["1.7"][:2] == (1, 4)


def test_scoped_write_checks_its_scope_through_sqlalchemy(cat):
    from pacsd.index.access import OneOf
    p = make_instance("1.8", "1.8.1", "1.8.1.1")
    scope = (OneOf("institution", ("A",)),)
    with pytest.raises(WriteDenied):
        cat.store_instance(p, sha256=sha_of(p), size=10, scope=scope, institution="B")
    assert cat.counts()["instances"] == 0
    assert cat.store_instance(p, sha256=sha_of(p), size=10, scope=scope,
                              institution="A").created


def test_broken_writer_connection_is_replaced(cat):
    store(cat, make_instance("1.9", "1.9.1", "1.9.1.1"))
    cat._raw_writer._fairy.dbapi_connection.close()  # broken behind the catalogue
    with pytest.raises(PacsdError):  # nothing stored, nothing acknowledged
        store(cat, make_instance("1.9", "1.9.1", "1.9.1.2"))
    assert store(cat, make_instance("1.9", "1.9.1", "1.9.1.2")).created  # a new one
    assert counters(cat)["1.9"][:2] == (1, 2)


def _child(cat: Catalogue, q) -> None:
    try:
        q.put(store(cat, make_instance("2.1", "2.1.1", "2.1.1.2")).created)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        q.put(repr(e))


def test_forked_process_opens_its_own_writer(cat):
    store(cat, make_instance("2.1", "2.1.1", "2.1.1.1"))
    parent_conn = cat._raw_writer._fairy.dbapi_connection
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_child, args=(cat, q))
    proc.start()
    assert q.get(timeout=30) is True
    proc.join(30)
    assert cat._raw_writer._fairy.dbapi_connection is parent_conn  # untouched
    assert store(cat, make_instance("2.1", "2.1.1", "2.1.1.3")).created
    assert counters(cat)["2.1"][:2] == (1, 3)
    assert os.getpid()  # the parent's writer still works after the child's exit
