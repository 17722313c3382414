"""R-H1 (issue 6 item 3): QIDO totals counted up to a bound, on SQLite and PostgreSQL.

A page counts at most ``qido_sql.COUNT_AHEAD`` matches past itself: up to there the total is
exact; past it ``exact`` is False and the total is the bound (offset + limit +
COUNT_AHEAD + 1), a lower bound. ``limit=0`` (the number alone) is always exact. The bound is
set to 3 here so a few studies cross it."""
from __future__ import annotations

import pytest

from pacsd.index import parse_qido, qido_sql
from tests.index.conftest import bulk_store, make_instance

AHEAD = 3


@pytest.fixture
def seven(catalogue, monkeypatch):
    """Seven studies of one patient name (two of them with a Smith phonetic group only:
    the name count is summed over the three groups), modality CT."""
    monkeypatch.setattr(qido_sql, "COUNT_AHEAD", AHEAD)
    rows = []
    for s in range(7):
        name = f"Smith^N{s}" if s % 3 else f"Jones^N{s}==smith"
        rows.append(make_instance(f"7.{s}", PatientID=f"P{s}", PatientName=name,
                                  StudyDate=f"202401{1 + s:02d}", Modality="CT"))
    bulk_store(catalogue, rows)
    return catalogue


def search(cat, level, **params):
    return cat.search(parse_qido(level, [(k, str(v)) for k, v in params.items()]))


@pytest.mark.parametrize("level,key,value", [
    ("study", "PatientID", "P*"),
    ("study", "PatientName", "Smi*"),   # the name count: three groups summed
    ("series", "Modality", "CT"),
])
@pytest.mark.parametrize("limit,offset,total,exact", [
    (7, 0, 7, True),     # exactly at the limit: a full page, nothing more
    (6, 0, 7, True),     # one more
    (3, 0, 7, False),    # four more: the count reaches 3 + 3 + 1 = 7 ("more than 3")
    (2, 0, 6, False),    # many more: 5 past the page, counted up to 2 + 3 + 1
    (2, 2, 7, True),     # with offset: counted up to 2 + 2 + 3 + 1 = 8 > 7: exact
    (1, 1, 6, False),    # with offset, past the bound
    (2, 6, 7, True),     # the last page (short): no COUNT
    (2, 9, 7, True),     # past the end: empty page, exact
    (0, 0, 7, True),     # limit=0: the number alone, exact
])
def test_R_H1_total_counted_up_to_a_bound(seven, level, key, value, limit, offset, total,
                                          exact):
    r = search(seven, level, **{key: value}, limit=limit, offset=offset)
    if key == "PatientName" and limit:
        # A name match that may walk counts up to its own (larger) bound: _name_cap.
        with seven.engine.connect() as conn:
            cap, _n = qido_sql._name_cap(conn, parse_qido(level, [
                ("limit", str(limit)), ("offset", str(offset))]))
        if offset < 7 and offset + limit < 7:  # a full page: counted
            total, exact = min(7, cap), 7 < cap
    assert (r.total, r.exact) == (total, exact)
    assert len(r.items) == max(0, min(limit, 7 - offset))
    if not r.exact:  # a lower bound of the matches, at least the page + AHEAD + 1
        assert offset + limit + AHEAD + 1 <= r.total <= 7


def test_R_H1_name_count_bound_keeps_the_walk_choice(seven, monkeypatch):
    """The name count's bound (``_name_cap``) is large enough that the walk-or-index
    choice is the one the exact count makes: a count at the bound always walks."""
    seen = []
    real = qido_sql._walk_order
    monkeypatch.setattr(qido_sql, "_walk_order", lambda conn, q, total, **kw: seen.append(
        (total, real(conn, q, total, **kw))) or seen[-1][1])
    q = parse_qido("study", [("PatientName", "Smi*"), ("limit", "1")])
    r = seven.search(q)
    with seven.engine.connect() as conn:
        cap, _n = qido_sql._name_cap(conn, q)
    assert not r.exact and r.total == cap  # 7 matches, counted up to max(5, isqrt(14) + 2)
    assert seen[0][0] >= cap and seen[0][1]  # decided on a total at the bound: walks
    assert cap * cap > 2 * 1 * 7


def test_R_H1_scoped_query_counts_up_to_the_bound(seven):
    """A scope clause (R-A12) builds its own statements: bounded the same way."""
    r = seven.search(parse_qido("study", [("PatientID", "P*"), ("limit", "1")]),
                     scope=None, extra_filter=qido_sql.studies.c.pk > 0)
    assert (r.total, r.exact) == (1 + AHEAD + 1, False)
