"""The STOW write path after issue 6, session 7 (R-H1): migration 12 drops the index on
``studies.updated_at`` (no query reads it); ``writes.store_instance`` finds study, series
and an existing instance in one statement and creates new rows with their counters
already counting the instance. Counters, lists and refusals are as before (BI-25/26/27),
on SQLite and PostgreSQL."""
from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy as sa

from pacsd.errors import DuplicateInstance, HierarchyConflict
from pacsd.index import Catalogue, migrations
from pacsd.index.schema import patients, schema_version, series, studies
from tests.index.conftest import make_instance
from tests.index.test_migrations import fresh_url, versions  # noqa: F401 - fixture


def test_RH1_migration_12_drops_unused_index(fresh_url):  # noqa: F811
    cat = Catalogue(fresh_url)
    cat.migrate()
    names = {i["name"] for i in sa.inspect(cat.engine).get_indexes("studies")}
    assert "ix_studies_updated_at" not in names  # fresh databases never get it
    with cat.engine.begin() as conn:  # a version-11 catalogue had it
        conn.execute(sa.text("CREATE INDEX ix_studies_updated_at ON studies (updated_at)"))
        conn.execute(sa.delete(schema_version).where(schema_version.c.version >= 12))
    assert cat.migrate() == migrations.LATEST
    assert cat.migrate() == migrations.LATEST
    assert 12 in versions(cat)
    names = {i["name"] for i in sa.inspect(cat.engine).get_indexes("studies")}
    assert "ix_studies_updated_at" not in names
    assert "ix_studies_patient_fk" in names  # the others stay
    cat.close()


def _row(cat: Catalogue, table, col, uid):
    with cat.engine.connect() as conn:
        return conn.execute(sa.select(table).where(col == uid)).mappings().first()


def test_RH1_counters_lists_and_revisions_after_many_instances(catalogue):
    """New study, new series, known series, a second study of the same patient,
    an identical re-send: every counter, list and revision as the one-by-one rules
    give (the rows are created already counting their first instance)."""
    cat = catalogue
    a = [make_instance("1.9.1", "1.9.1.1", f"1.9.1.1.{k}", Modality="CT")
         for k in range(3)]
    b = [make_instance("1.9.1", "1.9.1.2", f"1.9.1.2.{k}", Modality="SR",
                       sop_class_uid="1.2.840.10008.5.1.4.1.1.88.11") for k in range(2)]
    for k, p in enumerate(a + b):
        assert cat.store_instance(p, sha256=f"{k:064x}", size=10).created
    again = cat.store_instance(a[0], sha256=f"{0:064x}", size=10)  # BI-25
    assert not again.created
    st = _row(cat, studies, studies.c.study_instance_uid, "1.9.1")
    assert (st["num_series"], st["num_instances"], st["revision"]) == (2, 5, 5)
    assert st["modalities_in_study"] == "CT\\SR"
    assert st["sop_classes_in_study"] == "\\".join(sorted(
        {a[0].sop_class_uid, "1.2.840.10008.5.1.4.1.1.88.11"}))
    s1 = _row(cat, series, series.c.series_instance_uid, "1.9.1.1")
    s2 = _row(cat, series, series.c.series_instance_uid, "1.9.1.2")
    assert (s1["num_instances"], s1["revision"]) == (3, 3)
    assert (s2["num_instances"], s2["revision"]) == (2, 2)
    pat = _row(cat, patients, patients.c.patient_id, a[0].patient["PatientID"])
    assert pat["num_studies"] == 1
    other = make_instance("1.9.2", "1.9.2.1", "1.9.2.1.1")
    assert other.patient["PatientID"] == a[0].patient["PatientID"]
    assert cat.store_instance(other, sha256=f"{9:064x}", size=10).created
    pat = _row(cat, patients, patients.c.patient_id, a[0].patient["PatientID"])
    assert pat["num_studies"] == 2
    assert cat.counts() == {"patients": 1, "studies": 2, "series": 3, "instances": 6}


def test_RH1_refusals_leave_counters_alone(catalogue):
    """BI-26 (same UID, other bytes) and BI-27 (same UID under another series or study;
    a series under another study) are refused before or without any counter change."""
    cat = catalogue
    p = make_instance("1.8.1", "1.8.1.1", "1.8.1.1.1")
    cat.store_instance(p, sha256="a" * 64, size=10)
    with pytest.raises(DuplicateInstance):
        cat.store_instance(p, sha256="b" * 64, size=10)
    moved = make_instance("1.8.1", "1.8.1.2", "1.8.1.1.1")
    with pytest.raises(HierarchyConflict):
        cat.store_instance(moved, sha256="a" * 64, size=10)
    other_study = make_instance("1.8.2", "1.8.2.1", "1.8.1.1.1")
    with pytest.raises(HierarchyConflict):
        cat.store_instance(other_study, sha256="a" * 64, size=10)
    stolen = make_instance("1.8.3", "1.8.1.1", "1.8.3.1.1")
    with pytest.raises(HierarchyConflict):
        cat.store_instance(stolen, sha256="c" * 64, size=10)
    st = _row(cat, studies, studies.c.study_instance_uid, "1.8.1")
    assert (st["num_series"], st["num_instances"], st["revision"]) == (1, 1, 1)
    assert cat.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
    other_pid = dataclasses.replace(
        make_instance("1.8.1", "1.8.1.1", "1.8.1.1.9"),
        patient={**p.patient, "PatientID": "SOMEONE-ELSE"})
    with pytest.raises(HierarchyConflict):
        cat.store_instance(other_pid, sha256="d" * 64, size=10)
    assert cat.counts()["patients"] == 1  # no patient record left behind


def test_RH1_group_without_refusal_needs_no_savepoints(tmp_path, monkeypatch):
    """A group commit whose writes are all accepted runs them in one transaction without
    savepoints; one refusal rolls that back and runs the group again with a savepoint
    each: the refused write alone is missing, the others are stored once (LD-6)."""
    from pacsd.index import writes
    from tests.index.conftest import store
    from tests.index.test_group_commit import _queued_behind_lock
    from tests.index.test_store import counters

    cat = Catalogue(f"sqlite:///{tmp_path / 'index.db'}", busy_timeout_s=20)
    cat.migrate()
    seen: list[str] = []
    execute = writes.Sql.execute

    def spy(self, sql, params=None):
        seen.append(sql)
        return execute(self, sql, params)

    monkeypatch.setattr(writes.Sql, "execute", spy)
    try:
        good = [make_instance("1.7", "1.7.1", f"1.7.1.{i}") for i in range(4)]
        results = _queued_behind_lock(cat, [lambda p=p: store(cat, p) for p in good])
        assert all(r.created for r in results.values()), results
        assert not any(s.startswith("SAVEPOINT") for s in seen)
        seen.clear()
        more = [make_instance("1.7", "1.7.1", f"1.7.1.{i}") for i in range(4, 7)]
        different = make_instance("1.7", "1.7.1", "1.7.1.0")  # BI-26: other content
        jobs = [lambda: store(cat, more[0]), lambda: store(cat, different, salt="x"),
                lambda: store(cat, more[1]), lambda: store(cat, more[2])]
        results = _queued_behind_lock(cat, jobs)
        assert isinstance(results[1], DuplicateInstance)
        assert all(results[k].created for k in (0, 2, 3))
        assert any(s.startswith("SAVEPOINT") for s in seen)
        assert counters(cat)["1.7"][:2] == (1, 7)  # also checked against a recount
    finally:
        cat.close()
