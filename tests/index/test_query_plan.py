"""R-H1 sanity check: with 5,000 instances stored, SQLite's plans for common QIDO queries use
indexes (EXPLAIN QUERY PLAN; no timing asserts). Seeded with multi-row inserts for speed;
the plans depend on the schema and the query shape, not on how rows arrived."""
from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from pacsd.index import Catalogue, names, parse_qido, qido_sql
from pacsd.index.schema import instances, patients, series, studies


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    cat = Catalogue(f"sqlite:///{tmp_path_factory.mktemp('plan') / 'index.db'}")
    cat.migrate()
    now = dt.datetime.now(dt.timezone.utc)
    pts, sts, srs, ins = [], [], [], []
    for s in range(1000):
        pk = s + 1
        if s % 2 == 0:
            pts.append({"pk": s // 2 + 1, "patient_id": f"P{s // 2}", "issuer_of_patient_id": "",
                        "num_studies": 2, "created_at": now, "updated_at": now})
        name = names.search_columns(f"Name{s}^Given{s}=名{s}=")
        sts.append({"pk": pk, "study_instance_uid": f"1.2.{s}", "patient_fk": s // 2 + 1,
                    "study_date": f"2020{1 + s % 12:02d}{1 + s % 28:02d}",
                    "study_time": f"{s % 24:02d}0000", "accession_number": f"A{s}",
                    "patient_name": f"Name{s}^Given{s}",
                    **{f"patient_name_{k}": v for k, v in name.items()},
                    "num_series": 1, "num_instances": 5, "modalities_in_study": "CT",
                    "study_json": b"{}", "revision": 1, "created_at": now,
                    "updated_at": now})
        srs.append({"pk": pk, "series_instance_uid": f"1.2.{s}.1", "study_fk": pk,
                    "modality": "CT", "series_number": 1, "num_instances": 5,
                    "series_json": b"{}", "revision": 1, "created_at": now,
                    "updated_at": now})
        for i in range(5):
            ins.append({"sop_instance_uid": f"1.2.{s}.1.{i}", "series_fk": pk,
                        "study_fk": pk, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                        "transfer_syntax_uid": "1.2.840.10008.1.2.1", "instance_number": i,
                        "instance_json": b"{}", "sha256": f"{s:032x}{i:032x}", "size": 1,
                        "metadata": b"", "bulk": b"{}", "created_at": now})
    with cat.engine.connect() as conn, conn.begin():
        for table, rows in ((patients, pts), (studies, sts), (series, srs), (instances, ins)):
            conn.execute(sa.insert(table), rows)
    assert cat.counts()["instances"] == 5000
    yield cat
    cat.close()


def plan(cat, level, params, **kw) -> str:
    page, _count = qido_sql.build(parse_qido(level, params, **kw))
    with cat.engine.connect() as conn:
        compiled = page.compile(dialect=conn.dialect)
        args = tuple(compiled.params[k] for k in compiled.positiontup)
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), args).all()
    return "\n".join(r[-1] for r in rows)


def test_R_H1_study_by_patient_id_uses_indexes(big):
    p = plan(big, "study", [("PatientID", "P42")])
    # the UNIQUE (patient_id, issuer) constraint's index (SQLite names it autoindex)
    assert "SEARCH patients USING COVERING INDEX" in p and "(patient_id=?)" in p, p
    assert "ix_studies_patient_fk" in p, p
    assert big.search(parse_qido("study", [("PatientID", "P42")])).total == 2


def test_R_H1_study_by_date_range_uses_index(big):
    p = plan(big, "study", [("StudyDate", "20200301-20200331")])
    assert "SEARCH studies USING INDEX ix_studies_order_sqlite (study_date>? AND study_date<?)" \
        in p, p
    assert "TEMP B-TREE" not in p, p  # the index also delivers the order


def test_R_H1_default_order_walks_index(big):
    p = plan(big, "study", [])
    assert "ix_studies_order_sqlite" in p and "TEMP B-TREE" not in p, p


def test_R_H1_wildcard_name_uses_name_indexes(big):
    p = plan(big, "study", [("PatientName", "name12*")])
    assert "ix_studies_patient_name_alpha" in p, p
    assert big.search(parse_qido("study", [("PatientName", "name12*")])).total == 11


def test_R_H1_accession_prefix_uses_index(big):
    p = plan(big, "study", [("AccessionNumber", "A12*")])
    assert "ix_studies_accession_number" in p, p


def test_R_H1_scoped_instance_query_uses_indexes(big):
    p = plan(big, "instance", [], study_uid="1.2.7", series_uid="1.2.7.1")
    assert "SCAN instances" not in p and "SCAN series" not in p, p
    assert len(big.search(parse_qido("instance", [], study_uid="1.2.7")).items) == 5


@pytest.mark.parametrize("key,value,index", [
    ("visitnumber", "ZY12*", "ix_studies_visit_number"),
    ("cardnumber", "C42", "ix_studies_card_number"),
    ("department", "Cardiology", "ix_studies_ordering_department"),
    ("visittype", "emergency", "ix_studies_visit_type"),
])
def test_R_H1_RD2_worklist_keys_use_their_index(big, key, value, index):
    """R-D2 worklist keys (migration 6): each is one indexed study column."""
    p = plan(big, "study", [(key, value)])
    assert index in p and "SCAN studies" not in p, p


def test_R_H1_series_by_modality_page_walks_index(big):
    """Issue 6: the Modality page walks ix_series_modality_number (no sort of every series
    of that modality) and its total counts series alone (no studies join). A deep page
    steps over the skipped series in that index alone (covering: no series row, no
    study row read for them), then reads its own 10 rows and sorts only those."""
    first = plan(big, "series", [("Modality", "CT"), ("limit", "10")])
    assert "ix_series_modality_number" in first and "TEMP B-TREE" not in first, first
    params = [("Modality", "CT"), ("limit", "10"), ("offset", "20")]
    q = parse_qido("series", params)
    p = plan(big, "series", params)
    assert "SEARCH series USING COVERING INDEX ix_series_modality_number" in p, p
    assert "TEMP B-TREE" not in p.split("SCAN picked")[0], p  # the walk sorts nothing
    _page, count = qido_sql.build(q)
    assert "studies" not in str(count), str(count)
    result = big.search(q)
    assert result.total == 1000 and len(result.items) == 10
    # The study-level filter still joins (and counts right).
    scoped = big.search(parse_qido("series", [("Modality", "CT"), ("PatientID", "P42")]))
    assert scoped.total == 2


def test_R_H1_common_name_prefix_walks_the_study_order(big):
    """Issue 6 (PatientName ``Smi*`` grew 3.2-3.6x from 10k to 1M instances): a name
    wildcard that matches a large share of the studies walks ix_studies_order_sqlite
    (no sort of every match); a rare one keeps the name indexes; both answer the same.
    Migration 13: the walk reads the index alone (it carries the name search columns) and
    the table only for the page's rows, sorted among themselves."""
    common = parse_qido("study", [("PatientName", "name*"), ("limit", "10")])
    rare = parse_qido("study", [("PatientName", "name12*"), ("limit", "10")])
    walk, _count = qido_sql.build(common, walk=True)
    with big.engine.connect() as conn:
        compiled = walk.compile(dialect=conn.dialect)
        args = tuple(compiled.params[k] for k in compiled.positiontup)
        p = "\n".join(r[-1] for r in conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + str(compiled), args))
        assert "SCAN studies USING COVERING INDEX ix_studies_order_sqlite" in p, p
        walked, _, rows = p.partition("SCAN picked")
        assert "TEMP B-TREE" not in walked, p  # only the page's own rows are sorted
        assert "SEARCH studies USING INTEGER PRIMARY KEY" in rows, p
        assert "patient_name" not in p, p
        assert qido_sql._walk_order(conn, common, 1000)
        assert not qido_sql._walk_order(conn, rare, 11)
    result = big.search(common)
    assert result.total == 1000 and len(result.items) == 10
    # the newest ten, as the fixture dated them (date, time, pk descending)
    newest = sorted(range(1000), reverse=True,
                    key=lambda s: (1 + s % 12, 1 + s % 28, s % 24, s))[:10]
    assert [i["0020000D"]["Value"][0] for i in result.items] == [f"1.2.{s}" for s in newest]
    assert big.search(rare).total == 11


def test_R_H1_modalities_in_study_uses_a_series_index(big):
    """ModalitiesInStudy matches through the study's series (an EXISTS on series): it
    reads an index, never scans every series row, with ix_series_modality gone
    (migration 15; ix_series_modality_number leads with the same column)."""
    p = plan(big, "study", [("ModalitiesInStudy", "CT"), ("limit", "10")])
    assert "SCAN ms" not in p, p
    assert "ix_series_study_number" in p or "ix_series_modality_number" in p, p
    assert "ix_series_modality " not in p + " ", p
    found = big.search(parse_qido("study", [("ModalitiesInStudy", "CT"), ("limit", "10")]))
    assert found.total == 1000 and len(found.items) == 10
