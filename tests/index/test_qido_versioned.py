"""R-H1 (issue 6): ``qido_dbapi.search_versioned`` reads the version of a series / study
and, unless the caller holds the answer for it, runs the query, in one read transaction,
on SQLite and PostgreSQL: the version changes with every ingest and delete below, the
query answers as ``Catalogue.search``, a missing series has no version."""
from __future__ import annotations

from pacsd.index import parse_qido, qido_dbapi, qido_sql
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


def _stamped(cat, q, held=None):
    return qido_dbapi.search_stamped(cat.engine, q, held, raw=True)


def test_R_H1_stamped_search(catalogue, monkeypatch):
    """A page of studies is versioned by the generation of the studies and series rows
    (SQLite: bumped by triggers; None on PostgreSQL) and its stamp (pks, revisions, last
    changes, visit columns, total): a held answer whose generation or stamp is current is
    still the answer (the query does not run; with the generation the stamp is not read
    either); every change to a matching study gives a fresh answer, as
    ``Catalogue.search`` gives it; a change elsewhere moves the generation only."""
    sqlite = catalogue.engine.dialect.name == "sqlite"
    fetches = []
    real = qido_sql.fetch
    monkeypatch.setattr(qido_sql, "fetch", lambda *a, **kw: fetches.append(
        "stamp" if kw.get("stamp") else "page") or real(*a, **kw))
    bulk_store(catalogue, [make_instance(f"8.{i}", PatientName=f"Wang^{i}",
                                         StudyDate=f"202401{i + 1:02d}") for i in range(10)])
    bulk_store(catalogue, [make_instance("8.99", PatientName="Li^Na")])
    q = parse_qido("study", [("PatientName", "Wang*")])

    def run(held):
        del fetches[:]
        version, result = _stamped(catalogue, q, held)
        return version, result, list(fetches)
    v1, result, ran = run(None)
    assert v1 is not None and result == catalogue.search(q, raw=True) and ran == ["page"]
    generation, stamp = v1
    assert (generation is not None) == sqlite
    assert len(result.items) == 10 and stamp[1:] == (10, True)
    assert run(v1) == (v1, None, [] if sqlite else ["stamp"])  # held: no JSON read
    if sqlite:  # another generation, the same stamp: still the answer, filed anew
        assert run((generation - 1, stamp)) == (v1, None, ["stamp"])
    versions = [v1]

    def changed():
        version, result, ran = run(versions[-1])
        assert ran == ["stamp", "page"] and version[1] not in [v[1] for v in versions]
        assert result == catalogue.search(q, raw=True)
        versions.append(version)
        return result
    bulk_store(catalogue, [make_instance("8.3", "8.3.2", "8.3.2.1", PatientName="Wang^3")])
    changed()  # an instance more in a matching study
    counts = {i["0020000D"]["Value"][0]: i["00201208"]["Value"][0]
              for i in catalogue.search(q).items}
    assert counts["8.3"] == 2
    bulk_store(catalogue, [make_instance("8.50", PatientName="Wang^50")])
    assert len(changed().items) == 11  # a new match
    catalogue.delete("8.5")
    assert len(changed().items) == 10  # a match gone
    with catalogue.engine.begin() as conn:  # as lifecycle.set_visit does (no revision)
        conn.exec_driver_sql("UPDATE studies SET visit_type = 'emergency' "
                             "WHERE study_instance_uid = '8.2'")
    changed()
    bulk_store(catalogue, [make_instance("8.98", PatientName="Li^Lei")])
    version, result, ran = run(versions[-1])  # no match changed: the stamp says so
    assert (version[1], result, ran) == (versions[-1][1], None, ["stamp"])
    assert (version[0] != versions[-1][0]) == sqlite  # the generation moved


def test_R_H1_deep_pages_tile_the_answer(catalogue):
    """A page past the first (its pks picked from the conditions' smallest source, then
    its rows read) is that slice of the whole ordered answer, at every level."""
    insts = []
    for s in range(12):
        for r in range(2):
            for i in range(2):
                insts.append(make_instance(f"9.{s}", f"9.{s}.{r}", f"9.{s}.{r}.{i}",
                                           Modality="MR" if r else "CT", SeriesNumber=r + 1,
                                           InstanceNumber=i + 1,
                                           StudyDate=f"2024{1 + s % 3:02d}01"))
    bulk_store(catalogue, insts)
    cases = [("study", [("StudyDate", "20240101-20241231")], {}, "0020000D"),
             ("series", [("Modality", "MR")], {}, "0020000E"),
             ("series", [("Modality", "MR"), ("StudyDate", "20240201")], {}, "0020000E"),
             ("instance", [], {"study_uid": "9.4"}, "00080018")]
    for level, params, kw, tag in cases:
        whole = [i[tag]["Value"][0] for i in
                 catalogue.search(parse_qido(level, params, **kw)).items]
        assert len(whole) >= 4, (level, params)
        for off in (1, 3, len(whole) - 2, len(whole)):
            page = catalogue.search(parse_qido(
                level, params + [("limit", "3"), ("offset", str(off))], **kw))
            assert [i[tag]["Value"][0] for i in page.items] == whole[off:off + 3], \
                (level, params, off)
            assert page.total == len(whole)
