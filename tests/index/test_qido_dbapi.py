"""R-H1 (issue 6): unscoped QIDO queries run their cached statements on the DBAPI cursor
(``qido_dbapi``), on SQLite and PostgreSQL. Guard tests for the SQLAlchemy internals that
path relies on (compiled SQL, bind order, result columns without processors): every query
form gives the same items and totals as the SQLAlchemy path, the common forms never fall
back, and database errors still become pacsd errors."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from pacsd import errors
from pacsd.index import parse_qido, qido_dbapi, qido_sql
from tests.index.conftest import bulk_store, make_instance

FORMS = [
    ("study", [("PatientID", "P1")], {}),
    ("study", [("AccessionNumber", "A2")], {}),
    ("study", [("PatientName", "Smi*"), ("limit", "2")], {}),
    ("study", [("PatientName", "smi"), ("fuzzymatching", "true")], {}),
    ("study", [("StudyDate", "20240101-20240301"), ("limit", "2"), ("offset", "1")], {}),
    ("study", [("ModalitiesInStudy", "CT")], {}),
    ("study", [("orderby", "PatientName"), ("limit", "3")], {}),
    ("study", [("includefield", "all")], {}),
    ("series", [("Modality", "CT"), ("limit", "2")], {}),
    ("series", [], {"study_uid": "5.1"}),
    ("series", [("includefield", "StudyDescription")], {"study_uid": "5.1"}),
    ("instance", [], {"study_uid": "5.1", "series_uid": "5.1.1"}),
    ("instance", [("SOPInstanceUID", "5.1.1.1,5.2.1.1")], {}),  # an IN list: falls back
    ("study", [("limit", "0")], {}),
]


@pytest.fixture
def six(catalogue):
    rows = [make_instance(f"5.{s}", PatientID=f"P{s % 3}", AccessionNumber=f"A{s}",
                          PatientName=f"Smith^N{s}", StudyDate=f"20240{1 + s % 4}01",
                          Modality="CT" if s % 2 else "MR") for s in range(6)]
    bulk_store(catalogue, rows)
    return catalogue


def _sa(cat, q, raw):
    with cat.engine.connect() as conn:
        return qido_sql.run(conn, q, raw=raw)


@pytest.mark.parametrize("level,params,kw", FORMS)
def test_R_H1_dbapi_path_answers_as_sqlalchemy(six, level, params, kw):
    q = parse_qido(level, params, **kw)
    for raw in (False, True):
        assert six.search(q, raw=raw) == _sa(six, q, raw)


def test_R_H1_common_forms_never_fall_back(six, monkeypatch):
    calls = []
    real = qido_sql.fetch
    monkeypatch.setattr(qido_sql, "fetch", lambda conn, *a, **k: calls.append(
        type(conn).__name__) or real(conn, *a, **k))
    for level, params, kw in FORMS[:-2]:
        six.search(parse_qido(level, params, **kw), raw=True)
    assert set(calls) == {"_Cursor"}, calls
    calls.clear()
    six.search(parse_qido(*FORMS[-2][:2], **FORMS[-2][2]))  # expanding IN: SQLAlchemy
    assert calls == ["_Cursor", "Connection"]


def test_R_H1_dbapi_errors_become_pacsd_errors(six):
    """As through SQLAlchemy: no such table -> OperationalError -> OutOfResources (503)."""
    with six.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE studies RENAME TO studies_gone"))
    try:
        with pytest.raises(errors.PacsdError, match="while searching"):
            six.search(parse_qido("study", [("PatientID", "P1")]))
    finally:
        with six.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE studies_gone RENAME TO studies"))
    assert len(six.search(parse_qido("study", [("PatientID", "P1")])).items) == 2


def test_R_H1_compiled_once_per_statement_and_dialect(six):
    q = parse_qido("study", [("PatientID", "P1")])
    six.search(q)
    page, _count = qido_sql._statements(qido_sql.shape(q)[0])
    entry = qido_dbapi._COMPILED[page][six.engine.dialect.name]
    six.search(q)
    assert qido_dbapi._COMPILED[page][six.engine.dialect.name] is entry
