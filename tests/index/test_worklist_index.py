"""Worklist visit columns in the catalogue (R-D2, issue 8 item 1) on SQLite and real
PostgreSQL: filled at ingest from real parsed DICOM, matched, sorted (NULLs last on both
databases), scoped (R-A12); migration 6 upgrades a version-5 archive keeping its data,
and ``reindex`` fills the visit columns of studies stored before it."""
from __future__ import annotations


import pytest
import sqlalchemy as sa

from pacsd.config import Settings
from pacsd.dicom import parse_instance
from pacsd.index import Catalogue, parse_qido
from pacsd.index.access import OneOf
from pacsd.index.worklist import reindex
from pacsd.services.query import worklist_aliases
from pacsd.services.visit import columns_from_metadata, visit_getter
from tests.dicomgen import make_dataset, to_part10, worklist_studies

SORTED_BY_BODY_PART = ["zhao", "li", "wang", "zhang", "qian"]


def _store_all(cat: Catalogue, data: dict, institution_of=None) -> dict[str, str]:
    for i, (name, ds) in enumerate(data.items()):
        p = parse_instance(to_part10(ds))
        if institution_of:
            import dataclasses
            p = dataclasses.replace(p, institution=institution_of(name))
        cat.store_instance(p, sha256=f"{i:064x}", size=1)
    return {ds.StudyInstanceUID: name for name, ds in data.items()}


def _search(cat, names, params, scope=None):
    q = parse_qido("study", params, aliases=worklist_aliases(Settings()))
    result = cat.search(q, scope=scope)
    return [names[i["0020000D"]["Value"][0]] for i in result.items], result.total


@pytest.fixture
def filled(catalogue):
    catalogue.visit_of = visit_getter(Settings())
    names = _store_all(catalogue, worklist_studies(),
                       institution_of=lambda n: "EAST" if n in ("li", "zhang") else "WEST")
    return catalogue, names


def test_RD2_columns_filled_at_ingest(filled):
    cat, _ = filled
    with cat.engine.connect() as conn:
        rows = {r.patient_name: r for r in conn.execute(sa.text(
            "SELECT patient_name, visit_number, card_number, ordering_department, "
            "visit_type, body_parts_in_study FROM studies"))}
    li = rows["Li^Lei"]
    assert (li.visit_number, li.card_number, li.ordering_department, li.visit_type,
            li.body_parts_in_study) == ("ZY2025001", "CARD-001", "Cardiology",
                                        "inpatient", "CHEST")
    assert rows["Wang^Wu"].visit_type == "emergency"
    assert rows["Zhao^Liu"].visit_type == "inpatient"        # AdmissionID only
    assert rows["Qian^Qi"].visit_type is None and rows["Qian^Qi"].card_number is None


def test_RD2_match_sort_and_scope_on_both_databases(filled):
    cat, names = filled
    assert _search(cat, names, [("orderby", "BodyPartExamined")]) == (SORTED_BY_BODY_PART, 5)
    assert _search(cat, names, [("visittype", "inpatient"), ("orderby", "-StudyDate")]) \
        == (["zhao", "li"], 2)
    assert _search(cat, names, [("AdmissionID", "ZY*"), ("orderby", "PatientName")]) \
        == (["li", "zhao"], 2)
    assert _search(cat, names, [("department", "Ortho*")]) == (["zhang"], 1)
    # PatientID is the patient row's column (a correlated subquery, both databases)
    assert _search(cat, names, [("orderby", "-PatientID"), ("limit", "3")]) \
        == (["qian", "zhao", "wang"], 5)
    assert _search(cat, names, [("BodyPartExamined", "HEAD\\KNEE"), ("orderby", "StudyDate")]) \
        == (["zhang", "wang"], 2)
    # R-A12: the actor's scope is AND-ed in, whatever the worklist keys.
    east = (OneOf("institution", ["EAST"]),)
    assert _search(cat, names, [("visittype", "inpatient")], scope=east) == (["li"], 1)
    assert _search(cat, names, [("orderby", "-BodyPartExamined"), ("limit", "1")],
                   scope=east) == (["zhang"], 2)


def test_RD2_delete_keeps_body_parts_exact(filled):
    cat, names = filled
    uid = next(u for u, n in names.items() if n == "li")
    ds = make_dataset(study=uid, PatientName="Li^Lei", PatientID="P1", StudyDate="20250101",
                      BodyPartExamined="ABDOMEN", SeriesNumber=2)
    p = parse_instance(to_part10(ds))
    cat.store_instance(p, sha256="f" * 64, size=1)
    q = parse_qido("study", [("StudyInstanceUID", uid), ("includefield", "BodyPartExamined")])
    assert cat.search(q).items[0]["00180015"]["Value"] == ["ABDOMEN", "CHEST"]
    cat.delete(uid, p.series_instance_uid)
    assert cat.search(q).items[0]["00180015"]["Value"] == ["CHEST"]


def test_RD2_migration_6_upgrades_a_version_5_archive(db_url):
    """Data stored at version 5 is kept; body parts are backfilled by the migration, the
    visit columns by reindex (they depend on [worklist] settings)."""
    cat = Catalogue(db_url)
    cat.migrate()
    names = _store_all(cat, worklist_studies())   # no visit_of: as stored by version 5
    with cat.engine.begin() as conn:  # take the database back to version 5
        for ix in sa.inspect(conn).get_indexes("studies"):
            if ix["column_names"] and ix["column_names"][0] in (
                    "visit_number", "card_number", "ordering_department", "visit_type",
                    "body_parts_in_study"):
                conn.exec_driver_sql(f"DROP INDEX {ix['name']}")
        for col in ("visit_number", "card_number", "ordering_department", "visit_type",
                    "body_parts_in_study"):
            conn.exec_driver_sql(f"ALTER TABLE studies DROP COLUMN {col}")
        conn.exec_driver_sql("DELETE FROM schema_version WHERE version > 5")
    cat.close()
    cat = Catalogue(db_url)
    try:
        assert cat.migrate() >= 6
        insp = sa.inspect(cat.engine)
        indexed = {ix["column_names"][0] for ix in insp.get_indexes("studies")
                   if ix["column_names"]}
        assert {"visit_number", "card_number", "ordering_department", "visit_type",
                "body_parts_in_study"} <= indexed
        assert _search(cat, names, [("orderby", "BodyPartExamined")]) \
            == (SORTED_BY_BODY_PART, 5)
        assert _search(cat, names, [("visittype", "inpatient")]) == ([], 0)
        assert reindex(cat.engine, columns_from_metadata(Settings()), batch=2) == 5
        assert _search(cat, names, [("visittype", "inpatient"), ("orderby", "StudyDate")]) \
            == (["li", "zhao"], 2)
        assert _search(cat, names, [("cardnumber", "CARD-00?")])[1] == 2
        with cat.engine.connect() as conn:  # nothing else changed
            assert conn.scalar(sa.text("SELECT count(*) FROM instances")) == 5
            assert conn.scalar(sa.text(
                "SELECT count(*) FROM studies WHERE num_instances = 1")) == 5
    finally:
        cat.close()


def test_RD2_reindex_command(tmp_path, capsys):
    """``pacsd worklist reindex`` re-reads stored studies with changed settings."""
    data = tmp_path / "data"
    conf = tmp_path / "pacsd.toml"
    conf.write_text(f'[server]\ndata_dir = "{data}"\n')
    from pacsd.config import load_settings
    from pacsd.services.archive import Archive
    archive = Archive.open(load_settings(conf))
    _store_all(archive.catalogue, worklist_studies())
    archive.close()
    conf.write_text(f'[server]\ndata_dir = "{data}"\n[worklist]\n'
                    'department_attribute = "AdmissionID"\n')
    from pacsd import cli
    assert cli.main(["worklist", "reindex", "--config", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "5 studies" in out and "Li" not in out  # a count, no patient data
    cat = Catalogue(f"sqlite:///{data / 'index.db'}")
    try:
        with cat.engine.connect() as conn:
            depts = set(conn.scalars(sa.text("SELECT ordering_department FROM studies")))
        assert depts == {"ZY2025001", "ZY2025009", None}
    finally:
        cat.close()


def test_RD2_his_visit_class_wins_over_dicom(catalogue):
    """The visit class recorded from HIS for retention (R-A7) is the worklist's visit
    type too: recorded before the study arrives, after it, and through a reindex."""
    from pacsd.index.lifecycle import Lifecycle
    catalogue.visit_of = visit_getter(Settings())
    data = worklist_studies()
    life = Lifecycle(catalogue)
    # Wang (emergency in DICOM) is recorded as outpatient before the study arrives;
    # a legal hold alone (no class) on Zhang changes nothing.
    life.set_visit(data["wang"].StudyInstanceUID, visit_class="outpatient", visit_date=None,
                   discharge_date=None, source="api", now=1.0)
    life.set_hold(data["zhang"].StudyInstanceUID, True, "audit", 1.0)
    names = _store_all(catalogue, data)
    assert _search(catalogue, names, [("visittype", "outpatient"), ("orderby", "PatientName")]) \
        == (["wang", "zhang"], 2)
    life.set_visit(data["li"].StudyInstanceUID, visit_class="outpatient", visit_date=None,
                   discharge_date=None, source="cli", now=2.0)
    assert _search(catalogue, names, [("visittype", "inpatient")]) == (["zhao"], 1)
    reindex(catalogue.engine, columns_from_metadata(Settings()))
    assert _search(catalogue, names, [("visittype", "outpatient"), ("orderby", "PatientName")]) \
        == (["li", "wang", "zhang"], 3)
    assert _search(catalogue, names, [("visittype", "emergency")]) == ([], 0)
    with catalogue.engine.begin() as conn:  # the PostgreSQL database is the session's
        conn.exec_driver_sql("DELETE FROM study_retention")


@pytest.mark.parametrize("toml,reason", [
    ('[worklist]\nvisit_type_map = {X = "daycare"}\n', "visit_type_map values are"),
    ('[worklist]\ndepartment_attribute = "Dept"\n', "department_attribute is not a DICOM"),
])
def test_RD2_bad_worklist_settings_refused(tmp_path, toml, reason):
    from pacsd.config import ConfigError, load_settings
    conf = tmp_path / "pacsd.toml"
    conf.write_text(toml)
    with pytest.raises(ConfigError, match=reason):
        load_settings(conf)
