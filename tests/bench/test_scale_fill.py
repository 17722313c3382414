"""The scale curve's fast fill (issue 6 item 3, R-H1): ``benchmarks.scale.RowFill`` (the
rows of pacsd's write path built in Python and copied in: COPY on PostgreSQL, multi-row
INSERTs on SQLite) leaves exactly the rows ``writes.store_instance`` leaves — every
column of the four catalogue tables, foreign keys followed to the row they name — on
SQLite and on the real PostgreSQL. Filled in two steps split inside a patient, so rows
the write path updates later (the patient's second study) are covered too; the guard
that runs before every benchmark fill names a column that differs."""
from __future__ import annotations

import pytest

from benchmarks import scale as SC
from benchmarks.dataset import DataSet


def _fill_both(write_url: str, rows_url: str) -> None:
    insts = DataSet(seed=3, tiny=40).tiny_all()
    assert len({i.charset for i in insts}) >= 2   # GB18030 / UTF-8 names among them
    split = 15   # inside the second patient: its second study comes in the second step
    SC.fill(write_url, insts[:split], batch=7, log=lambda _: None)
    SC.fill(write_url, insts[split:], batch=7, log=lambda _: None)
    filler = SC.RowFill()
    filler.fill(rows_url, insts[:split], batch=7, log=lambda _: None)
    filler.fill(rows_url, insts[split:], batch=7, log=lambda _: None)


def _assert_same(write_url: str, rows_url: str) -> None:
    want, got = SC.catalogue_rows(write_url), SC.catalogue_rows(rows_url)
    assert {t: len(rows) for t, rows in want.items()} == {
        "patients": 4, "studies": 8, "series": 16, "instances": 40}
    assert [r["num_studies"] for r in want["patients"].values()] == [2, 2, 2, 2]
    for table in want:
        assert got[table].keys() == want[table].keys(), table
        for key, row in want[table].items():
            assert got[table][key] == row, (table, key)


def test_row_fill_leaves_the_write_paths_rows_sqlite(tmp_path):
    write_url = f"sqlite:///{tmp_path / 'write.db'}"
    rows_url = f"sqlite:///{tmp_path / 'rows.db'}"
    _fill_both(write_url, rows_url)
    _assert_same(write_url, rows_url)


def _pg_database():
    """tests/conftest.py's fresh-database helper (this test needs two databases)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "_root_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.pg_database()


def test_row_fill_leaves_the_write_paths_rows_postgresql(pg_fresh_url):
    with _pg_database() as write_url:
        _fill_both(write_url, pg_fresh_url)
        _assert_same(write_url, pg_fresh_url)
    # Keys were handed out by the filler; the sequences follow them, so pacsd's own write
    # path adds rows after the fill without a key collision.
    more = DataSet(seed=3, tiny=0).tiny_range(900, 2)
    SC.fill(pg_fresh_url, more, log=lambda _: None)
    after = SC.catalogue_rows(pg_fresh_url)
    assert len(after["instances"]) == 40 + len(more) and len(after["studies"]) == 10


def test_row_fill_refuses_a_target_that_is_not_fresh(tmp_path):
    url = f"sqlite:///{tmp_path / 'index.db'}"
    insts = DataSet(seed=4, tiny=10).tiny_all()
    SC.fill(url, insts[:5], log=lambda _: None)
    with pytest.raises(RuntimeError, match="not empty"):
        SC.RowFill().fill(url, insts[5:], log=lambda _: None)


def test_the_guard_names_a_column_the_builder_gets_wrong(monkeypatch):
    """Before a benchmark fill, RowFill stores a few instances both ways and compares; a
    column it fills differently from the write path (as if a migration had added a
    derived key the builder does not know) stops the run, naming the column."""
    insts = DataSet(seed=5, tiny=20).tiny_all()
    SC.self_check(insts)   # in step with the write path: passes
    built = SC.RowFill.build

    def stale_build(self, chunk, now):
        out = built(self, chunk, now)
        for row in out["new"]["studies"]:
            row["patient_name_alpha"] = "STALE"
        return out
    monkeypatch.setattr(SC.RowFill, "build", stale_build)
    with pytest.raises(RuntimeError, match=r"studies\.patient_name_alpha"):
        SC.self_check(insts)
