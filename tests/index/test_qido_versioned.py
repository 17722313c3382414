"""R-H1 (issue 6): ``qido_dbapi.search_versioned`` reads the version of a series / study
and, unless the caller holds the answer for it, runs the query, in one read transaction,
on SQLite and PostgreSQL: the version changes with every ingest and delete below, the
query answers as ``Catalogue.search``, a missing series has no version."""
from __future__ import annotations

from pacsd.index import parse_qido, qido_dbapi
from tests.index.conftest import bulk_store, make_instance


def _series_version(cat, study, series, known=lambda v: False, q=None):
    q = q or parse_qido("instance", [], study_uid=study, series_uid=series)
    return qido_dbapi.search_versioned(
        cat.engine, q, qido_dbapi.SERIES_VERSION, {"b_study": study, "b_series": series},
        known, raw=True)


def test_R_H1_versioned_search(catalogue):
    bulk_store(catalogue, [make_instance("7.1", "7.1.1", "7.1.1.1")])
    q = parse_qido("instance", [], study_uid="7.1", series_uid="7.1.1")
    v1, result = _series_version(catalogue, "7.1", "7.1.1")
    assert v1 is not None and result == catalogue.search(q, raw=True)
    seen = []
    v, result = _series_version(catalogue, "7.1", "7.1.1", lambda v: seen.append(v) or True)
    assert (v, result, seen) == (v1, None, [v1])  # held by the caller: no query
    bulk_store(catalogue, [make_instance("7.1", "7.1.1", "7.1.1.2")])
    v2, result = _series_version(catalogue, "7.1", "7.1.1", lambda v: v == v1)
    assert v2 != v1 and len(result.items) == 2
    catalogue.delete("7.1", "7.1.1", "7.1.1.2")
    v3, result = _series_version(catalogue, "7.1", "7.1.1", lambda v: v in (v1, v2))
    assert v3 not in (v1, v2) and len(result.items) == 1
    v, result = _series_version(catalogue, "7.1", "9.9")
    assert v is None and result.items == [] and result.total == 0
    sv, result = qido_dbapi.search_versioned(
        catalogue.engine, parse_qido("series", [], study_uid="7.1"),
        qido_dbapi.STUDY_VERSION, {"b_study": "7.1"}, lambda v: False, raw=True)
    assert sv is not None and len(result.items) == 1
