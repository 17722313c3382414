"""The scale curve's fast fill (issue 6 item 3, R-H1): ``benchmarks.scale.StagedFill``
(pacsd's write path into a staging SQLite catalogue, then COPY / multi-row INSERT into
the target) leaves exactly the rows the write path itself leaves in the target — every
column of the four catalogue tables, keys followed to the row they name — on SQLite and
on the real PostgreSQL. Filled in two steps split inside a patient, so the copy of rows
the write path updated later (the patient's second study) is covered too."""
from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from benchmarks import scale as SC
from benchmarks.dataset import DataSet
from pacsd.index import Catalogue
from pacsd.index.schema import instances, patients, series, studies

#: Natural key of each table, and where each foreign key points.
NATURAL = {"patients": ("patient_id", "issuer_of_patient_id"),
           "studies": ("study_instance_uid",), "series": ("series_instance_uid",),
           "instances": ("sop_instance_uid",)}
#: Surrogate keys and the clock are not compared (the two fills ran at other moments).
SKIP = {"pk"}


def snapshot(url: str) -> dict[str, dict[tuple, dict]]:
    """Every row of the four tables by natural key; foreign keys replaced by the natural
    key of the row they point to; time stamps only checked to be there."""
    cat = Catalogue(url)
    try:
        with cat.engine.connect() as conn:
            natural: dict[str, dict[int, tuple]] = {}
            out: dict[str, dict[tuple, dict]] = {}
            for table in (patients, studies, series, instances):
                rows = conn.execute(sa.select(table)).mappings().all()
                natural[table.name] = {r["pk"]: tuple(r[c] for c in NATURAL[table.name])
                                       for r in rows}
                got = {}
                for r in rows:
                    row = {}
                    for col in table.columns:
                        v = r[col.name]
                        if col.name in SKIP:
                            continue
                        if col.foreign_keys:
                            target = next(iter(col.foreign_keys)).column.table.name
                            v = natural[target][v]
                        elif isinstance(col.type, sa.DateTime):
                            assert v is None or isinstance(v, dt.datetime), (col, v)
                            v = v is not None
                        row[col.name] = v
                    got[natural[table.name][r["pk"]]] = row
                out[table.name] = got
            return out
    finally:
        cat.close()


def _fill_both(write_url: str, staged_url: str, staging_url: str) -> None:
    insts = DataSet(seed=3, tiny=40).tiny_all()
    assert len({i.charset for i in insts}) >= 2   # GB18030 / UTF-8 names among them
    split = 15   # inside the second patient: its second study comes in the second step
    SC.fill(write_url, insts[:split], batch=7, log=lambda _: None)
    SC.fill(write_url, insts[split:], batch=7, log=lambda _: None)
    stager = SC.StagedFill(staging_url)
    try:
        stager.fill(staged_url, insts[:split], batch=7, log=lambda _: None)
        stager.fill(staged_url, insts[split:], batch=7, log=lambda _: None)
    finally:
        stager.close()


def _assert_same(write_url: str, staged_url: str) -> None:
    want, got = snapshot(write_url), snapshot(staged_url)
    assert {t: len(rows) for t, rows in want.items()} == {
        "patients": 4, "studies": 8, "series": 16, "instances": 40}
    for table in want:
        assert got[table].keys() == want[table].keys(), table
        for key, row in want[table].items():
            assert got[table][key] == row, (table, key)


def test_staged_fill_leaves_the_write_paths_rows_sqlite(tmp_path):
    write_url = f"sqlite:///{tmp_path / 'write.db'}"
    staged_url = f"sqlite:///{tmp_path / 'staged.db'}"
    _fill_both(write_url, staged_url, f"sqlite:///{tmp_path / 'staging.db'}")
    _assert_same(write_url, staged_url)


def _pg_database():
    """tests/conftest.py's fresh-database helper (this test needs two databases)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "_root_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.pg_database()


def test_staged_fill_leaves_the_write_paths_rows_postgresql(tmp_path, pg_fresh_url):
    with _pg_database() as write_url:
        _fill_both(write_url, pg_fresh_url, f"sqlite:///{tmp_path / 'staging.db'}")
        _assert_same(write_url, pg_fresh_url)
    # The keys were copied as they were; the sequences follow them, so pacsd's own write
    # path adds rows after the fill without a key collision.
    more = DataSet(seed=3, tiny=0).tiny_range(900, 2)
    SC.fill(pg_fresh_url, more, log=lambda _: None)
    after = snapshot(pg_fresh_url)
    assert len(after["instances"]) == 40 + len(more) and len(after["studies"]) == 10


def test_staged_fill_refuses_a_target_that_is_not_fresh(tmp_path):
    url = f"sqlite:///{tmp_path / 'index.db'}"
    insts = DataSet(seed=4, tiny=10).tiny_all()
    SC.fill(url, insts[:5], log=lambda _: None)
    stager = SC.StagedFill(f"sqlite:///{tmp_path / 'staging.db'}")
    try:
        with pytest.raises(RuntimeError, match="not empty"):
            stager.fill(url, insts[5:], log=lambda _: None)
    finally:
        stager.close()
