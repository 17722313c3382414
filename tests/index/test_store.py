"""Catalogue writes and reads on SQLite and PostgreSQL: BI-25/26/27, SEC-3, delete, etags."""
from __future__ import annotations

import zlib

import orjson
import pytest
import sqlalchemy as sa

from pacsd.errors import DuplicateInstance, HierarchyConflict, NotFound
from pacsd.index import catalogue as catalogue_module
from pacsd.index.schema import instances, patients, series, studies
from tests.index.conftest import MR_IMAGE, bulk_store, make_instance, sha_of, store


def counters(cat) -> dict:
    """Counters as stored, and as recounted from the rows (they must agree, LD-6)."""
    with cat.engine.connect() as conn:
        st = conn.execute(sa.select(studies.c.study_instance_uid, studies.c.num_series,
                                    studies.c.num_instances, studies.c.modalities_in_study,
                                    studies.c.sop_classes_in_study)).all()
        out = {}
        for s in st:
            pk = conn.scalar(sa.select(studies.c.pk).where(
                studies.c.study_instance_uid == s.study_instance_uid))
            real_series = conn.scalar(sa.select(sa.func.count()).select_from(series)
                                      .where(series.c.study_fk == pk))
            real_inst = conn.scalar(sa.select(sa.func.count()).select_from(instances)
                                    .where(instances.c.study_fk == pk))
            assert (s.num_series, s.num_instances) == (real_series, real_inst)
            out[s.study_instance_uid] = (s.num_series, s.num_instances,
                                         s.modalities_in_study, s.sop_classes_in_study)
        for se in conn.execute(sa.select(series.c.pk, series.c.num_instances)):
            assert se.num_instances == conn.scalar(
                sa.select(sa.func.count()).select_from(instances)
                .where(instances.c.series_fk == se.pk))
        for pa in conn.execute(sa.select(patients.c.pk, patients.c.num_studies)):
            assert pa.num_studies == conn.scalar(
                sa.select(sa.func.count()).select_from(studies)
                .where(studies.c.patient_fk == pa.pk))
    return out


def test_store_and_read_back(catalogue):
    p = make_instance("1.2.3", "1.2.3.4", "1.2.3.4.5", frames=3)
    out = store(catalogue, p)
    assert out.created and out.sop_class_uid == p.sop_class_uid
    row = catalogue.get_instance("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert row.sha256 == sha_of(p) and row.size == 1234
    assert row.frames == p.frames and row.bulk == {"7FE00010": (1000, 524288)}
    assert row.instance_number == 1 and row.transfer_syntax_uid == p.transfer_syntax_uid
    assert list(catalogue.iter_metadata("1.2.3")) == [p.metadata]
    assert catalogue.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
    assert counters(catalogue) == {"1.2.3": (1, 1, "CT", p.sop_class_uid)}


def test_BI25_identical_resend_is_idempotent(catalogue):
    p = make_instance()
    assert store(catalogue, p).created
    again = store(catalogue, p)
    assert not again.created and again.sop_instance_uid == p.sop_instance_uid
    assert catalogue.counts()["instances"] == 1
    assert counters(catalogue)[p.study_instance_uid][:2] == (1, 1)


def test_BI26_different_content_refused_original_kept(catalogue):
    p = make_instance()
    store(catalogue, p)
    with pytest.raises(DuplicateInstance) as ei:
        store(catalogue, p, salt="other bytes")
    assert ei.value.failure_reason == 0x0111
    row = catalogue.get_instance(p.study_instance_uid, None, p.sop_instance_uid)
    assert row.sha256 == sha_of(p)
    assert catalogue.counts()["instances"] == 1


def test_BI27_sop_uid_under_another_series_or_study(catalogue):
    store(catalogue, make_instance("1.1", "1.1.1", "9.9"))
    for study, ser in (("1.1", "1.1.2"), ("2.2", "2.2.1")):
        with pytest.raises(HierarchyConflict):
            store(catalogue, make_instance(study, ser, "9.9"))
    assert catalogue.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}


def test_BI27_series_uid_under_another_study(catalogue):
    store(catalogue, make_instance("1.1", "1.1.1", "1.1.1.1"))
    with pytest.raises(HierarchyConflict):
        store(catalogue, make_instance("2.2", "1.1.1", "2.2.1.1"))
    # nothing half-written: no study 2.2, no patient row left behind
    assert catalogue.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}


@pytest.mark.parametrize("change", [{"PatientID": "OTHER"}, {"IssuerOfPatientID": "HOSP2"},
                                    {"PatientID": None}])
def test_BI27_study_with_another_patient(catalogue, change):
    store(catalogue, make_instance("1.1", "1.1.1", "1.1.1.1"))
    with pytest.raises(HierarchyConflict):
        store(catalogue, make_instance("1.1", "1.1.1", "1.1.1.2", **change))
    assert catalogue.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}


def test_absent_patient_id_is_empty_key(catalogue):
    store(catalogue, make_instance("1.1", PatientID=None))
    store(catalogue, make_instance("1.2", PatientID=None))
    with catalogue.engine.connect() as conn:
        assert conn.execute(sa.select(patients.c.patient_id, patients.c.num_studies)
                            ).all() == [("", 2)]


def test_SEC3_child_must_belong_to_parent(catalogue):
    store(catalogue, make_instance("1.1", "1.1.1", "1.1.1.1"))
    store(catalogue, make_instance("2.2", "2.2.1", "2.2.1.1", PatientID="P2"))
    assert catalogue.get_instance("1.1", "1.1.1", "1.1.1.1") is not None
    assert catalogue.get_instance("1.1", None, "1.1.1.1") is not None
    assert catalogue.get_instance("1.1", "2.2.1", "2.2.1.1") is None
    assert catalogue.get_instance("1.1", None, "2.2.1.1") is None
    assert catalogue.get_instance("2.2", "1.1.1", "1.1.1.1") is None
    assert list(catalogue.iter_instances("1.1", "2.2.1")) == []
    assert catalogue.metadata_etag("1.1", "2.2.1") is None
    assert catalogue.metadata_etag("1.1", None, "2.2.1.1") is None


def test_iter_order_by_series_then_instance_number(catalogue):
    # stored out of order; series 2 has SeriesNumber 1, series 1 has none (sorted last)
    specs = [("1.1.1", None, 2), ("1.1.2", 1, 3), ("1.1.1", None, 1), ("1.1.2", 1, 1),
             ("1.1.2", 1, None)]
    for i, (ser, sn, inum) in enumerate(specs):
        store(catalogue, make_instance("1.1", ser, f"{ser}.{i}", SeriesNumber=sn,
                                       InstanceNumber=inum))
    got = [(r.series_instance_uid, r.instance_number)
           for r in catalogue.iter_instances("1.1")]
    assert got == [("1.1.2", 1), ("1.1.2", 3), ("1.1.2", None), ("1.1.1", 1), ("1.1.1", 2)]
    metas = [orjson.loads(m)["00200013"].get("Value", [None])[0]
             for m in catalogue.iter_metadata("1.1", "1.1.1")]
    assert metas == [1, 2]
    assert [r.sop_instance_uid for r in catalogue.iter_instances("1.1", None, "1.1.1.0")] \
        == ["1.1.1.0"]


def test_iter_instances_streams_across_batches(catalogue, monkeypatch):
    monkeypatch.setattr(catalogue_module, "STREAM_BATCH", 7)  # small batches, few rows
    bulk_store(catalogue, [make_instance("1.1", "1.1.1", f"1.1.1.{i}", InstanceNumber=i)
                           for i in range(40)])
    it = catalogue.iter_instances("1.1")
    assert next(it).instance_number == 0
    it.close()  # releases the connection early
    assert [r.instance_number for r in catalogue.iter_instances("1.1")] == list(range(40))
    assert len(list(catalogue.iter_metadata("1.1"))) == 40


def test_metadata_stored_compressed(catalogue):
    p = make_instance()
    store(catalogue, p)
    with catalogue.engine.connect() as conn:
        raw = conn.scalar(sa.select(instances.c.metadata))
    assert zlib.decompress(raw) == p.metadata


def test_etag_changes_with_content(catalogue):
    assert catalogue.metadata_etag("1.1") is None
    store(catalogue, make_instance("1.1", "1.1.1", "1.1.1.1"))
    e_study = catalogue.metadata_etag("1.1")
    e_series = catalogue.metadata_etag("1.1", "1.1.1")
    e_inst = catalogue.metadata_etag("1.1", "1.1.1", "1.1.1.1")
    assert len({e_study, e_series, e_inst}) == 3
    assert catalogue.metadata_etag("1.1") == e_study  # stable
    store(catalogue, make_instance("1.1", "1.1.1", "1.1.1.2"))
    assert catalogue.metadata_etag("1.1") != e_study
    assert catalogue.metadata_etag("1.1", "1.1.1") != e_series
    assert catalogue.metadata_etag("1.1", "1.1.1", "1.1.1.1") == e_inst
    e2 = catalogue.metadata_etag("1.1")
    catalogue.delete("1.1", "1.1.1", "1.1.1.2")
    assert catalogue.metadata_etag("1.1") not in (e2, e_study, None)


def test_delete_instance_series_study_cascade(catalogue):
    store(catalogue, make_instance("1.1", "1.1.1", "1.1.1.1", Modality="CT"))
    store(catalogue, make_instance("1.1", "1.1.1", "1.1.1.2", Modality="CT"))
    p_mr = make_instance("1.1", "1.1.2", "1.1.2.1", Modality="MR", sop_class_uid=MR_IMAGE)
    store(catalogue, p_mr)
    store(catalogue, make_instance("2.2", "2.2.1", "2.2.1.1"))  # same patient
    assert counters(catalogue)["1.1"][:3] == (2, 3, "CT\\MR")

    assert catalogue.delete("1.1", "1.1.1", "1.1.1.1") == [
        sha_of(make_instance("1.1", "1.1.1", "1.1.1.1"))]
    assert counters(catalogue)["1.1"][:3] == (2, 2, "CT\\MR")
    # deleting the only MR instance removes the series and MR from ModalitiesInStudy
    assert catalogue.delete("1.1", None, "1.1.2.1") == [sha_of(p_mr)]
    assert counters(catalogue)["1.1"] == (1, 1, "CT", make_instance().sop_class_uid)
    with pytest.raises(NotFound):
        catalogue.delete("1.1", "1.1.2")
    with pytest.raises(NotFound):
        catalogue.delete("1.1", "2.2.1")          # SEC-3: series of another study
    with pytest.raises(NotFound):
        catalogue.delete("1.1", None, "2.2.1.1")  # instance of another study
    assert len(catalogue.delete("1.1")) == 1
    assert catalogue.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
    assert catalogue.delete("2.2") == [sha_of(make_instance("2.2", "2.2.1", "2.2.1.1"))]
    assert catalogue.counts() == {"patients": 0, "studies": 0, "series": 0, "instances": 0}
    with pytest.raises(NotFound):
        catalogue.delete("2.2")


def test_store_after_delete_recreates(catalogue):
    p = make_instance()
    store(catalogue, p)
    catalogue.delete(p.study_instance_uid)
    assert store(catalogue, p, salt="new").created
    assert counters(catalogue)[p.study_instance_uid][:2] == (1, 1)


def test_patient_record_takes_newest_study_demographics(catalogue):
    store(catalogue, make_instance("1.1", PatientName="Old^Name"))
    store(catalogue, make_instance("2.2", PatientName="New^Name", PatientSex="F"))
    with catalogue.engine.connect() as conn:
        row = conn.execute(sa.select(patients)).one()
        own = dict(conn.execute(sa.select(studies.c.study_instance_uid,
                                          studies.c.patient_name)).all())
    assert (row.patient_name, row.patient_sex, row.num_studies) == ("New^Name", "F", 2)
    assert own == {"1.1": "Old^Name", "2.2": "New^Name"}  # each study keeps its copy


def test_integer_attributes_coerced(catalogue):
    p = make_instance(SeriesNumber="7", InstanceNumber="x", Rows=None)
    store(catalogue, p)
    with catalogue.engine.connect() as conn:
        assert conn.scalar(sa.select(series.c.series_number)) == 7
        assert conn.execute(sa.select(instances.c.instance_number, instances.c.rows)
                            ).one() == (None, None)
