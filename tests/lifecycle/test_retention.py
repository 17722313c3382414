"""Retention (R-A7; reliability-matrix §5 item 23, §7 item 3, FT-11, FT-13): outpatient 15
years from the visit, inpatient 30 years from discharge, unknown = the longest; legal
hold; DELETE vetoed inside retention with 409 + reason; purge after expiry as a
two-phase, resumable, audited tombstone that removes the blobs from every copy. All with
a controllable clock (never sleep)."""
from __future__ import annotations

import datetime as _dt

import orjson
import pytest
from dicomgen import make_instance

from pacsd import cli
from pacsd.errors import OutOfResources
from pacsd.services.security import LOCAL
from pacsd.services import IngestService
from pacsd.services.audit import AuditTrail
from pacsd.services.retention import (Purger, RetentionService, RetentionVeto, add_years,
                                      policy_of)
from pacsd.store.verification import CopyState, check_copy

from .conftest import Clock, ingest

pytestmark = pytest.mark.asyncio

OUT, INP, UNK = "1.2.826.0.1.3680043.9.9.1", "1.2.826.0.1.3680043.9.9.2", \
    "1.2.826.0.1.3680043.9.9.3"


def ts(y: int, m: int = 1, d: int = 1) -> float:
    return _dt.datetime(y, m, d, 12, tzinfo=_dt.timezone.utc).timestamp()


async def store_study(archive, study: str, n: int = 2, **attrs) -> list[str]:
    shas = []
    for i in range(n):
        shas.append(await ingest(archive, make_instance(
            seed=hash(study) % 1000 + i, study=study, series=study + ".1",
            sop=f"{study}.9.{i}", **attrs)))
    return shas


@pytest.fixture
def clock(archive):
    c = Clock(ts(2010, 6, 1))  # the studies are archived "in 2010"
    archive.clock = c
    return c


async def three_studies(archive, clock):
    """Outpatient (HIS data), inpatient (AdmissionID + DischargeDate), unknown."""
    out = await store_study(archive, OUT, StudyDate="20100105")
    inp = await store_study(archive, INP, StudyDate="20100110", AdmissionID="ADM-1",
                            DischargeDate="20100301")
    unk = await store_study(archive, UNK, StudyDate="20100120")
    RetentionService(archive).set_visit(OUT, "outpatient", "20100105")
    return out, inp, unk


async def test_R_A7_periods_by_class_and_source(archive, clock):
    await three_studies(archive, clock)
    policy = policy_of(archive)
    o, i, u = policy.decide(OUT), policy.decide(INP), policy.decide(UNK)
    assert (o.visit_class, o.class_source, o.start, o.retain_until) == \
        ("outpatient", "his", "20100105", "20250105")
    assert (i.visit_class, i.class_source, i.start, i.retain_until) == \
        ("inpatient", "dicom", "20100301", "20400301")            # 30 y from discharge
    assert (u.visit_class, u.class_source, u.retain_until) == \
        ("inpatient", "default", "20400120")                      # unknown: the longest
    # HIS discharge data wins over DICOM; an outpatient without HIS visit date: StudyDate.
    d = RetentionService(archive).set_visit(INP, "inpatient", "20100110", "20100415")
    assert (d.start, d.retain_until, d.class_source) == ("20100415", "20400415", "his")


async def test_R_A7_untrusted_dicom_dates_and_leap_day(archive, clock):
    # A StudyDate after the archive date (a wrong modality clock) is not trusted.
    await store_study(archive, UNK, n=1, StudyDate="20990101")
    policy = policy_of(archive)
    d = policy.decide(UNK)
    archived = _dt.datetime.fromtimestamp(policy.lifecycle.study_facts(UNK)["archived_at"],
                                          _dt.timezone.utc).date()
    assert (d.start, d.start_basis) == (archived.strftime("%Y%m%d"),
                                        "the archive date (no discharge date known)")
    assert add_years(_dt.date(2012, 2, 29), 15) == _dt.date(2027, 3, 1)
    archive.settings.retention.default_class = "outpatient"
    assert policy_of(archive).decide(UNK).retain_until == \
        add_years(archived, 15).strftime("%Y%m%d")


async def test_R_A7_delete_vetoed_inside_retention_with_reason(archive, clock):
    out, *_ = await three_studies(archive, clock)
    ingest_svc = IngestService(archive)
    clock.t = ts(2025, 1, 5)  # the last day inside retention
    with pytest.raises(RetentionVeto) as exc:
        await ingest_svc.delete(OUT, actor=LOCAL)
    assert exc.value.http_status == 409
    assert "until 2025-01-05" in exc.value.reason and "outpatient" in exc.value.reason
    with pytest.raises(RetentionVeto):  # series and instance level too
        await ingest_svc.delete(OUT, OUT + ".1", OUT + ".9.0", actor=LOCAL)
    assert archive.catalogue.counts()["instances"] == 6
    clock.t = ts(2025, 1, 6)  # expired: DELETE is allowed
    assert await ingest_svc.delete(OUT, actor=LOCAL) == 2
    assert not archive.store.exists(out[0])


async def test_R_A7_legal_hold_vetoes_even_after_expiry(archive, clock):
    await three_studies(archive, clock)
    svc = RetentionService(archive)
    clock.t = ts(2100)
    svc.set_hold(INP, True, "court order 17")
    with pytest.raises(RetentionVeto) as exc:
        await IngestService(archive).delete(INP, actor=LOCAL)
    assert "legal hold" in exc.value.reason
    archive.settings.retention.enabled = False  # a hold holds without retention rules too
    with pytest.raises(RetentionVeto):
        await IngestService(archive).delete(INP, actor=LOCAL)
    archive.settings.retention.enabled = True
    svc.set_hold(INP, False, "order lifted")
    assert await IngestService(archive).delete(INP, actor=LOCAL) == 2


async def test_R_A7_purge_two_phase_all_copies_audited(archive, clock):
    out, inp, unk = await three_studies(archive, clock)
    RetentionService(archive).set_hold(UNK, True, "litigation")
    audit = AuditTrail(archive.catalogue)
    clock.t = ts(2026)  # outpatient expired; inpatient and unknown not
    dry = Purger(archive, audit).run(dry_run=True)
    assert [c["study_uid"] for c in dry.candidates] == [OUT]
    assert archive.catalogue.counts()["studies"] == 3 and archive.store.exists(out[0])
    report = Purger(archive, audit).run()
    assert report.ok and report.marked == 1 and report.finalized == 1
    assert report.blobs_deleted == 2
    for sha in out:  # gone from every copy
        assert [check_copy(c, sha, 1) for c in archive.store.copies] == \
            [CopyState.MISSING] * 3
    assert all(archive.store.exists(s) for s in inp + unk)
    assert archive.catalogue.counts()["studies"] == 2
    clock.t = ts(2100)  # everything expired; the held study stays
    report = Purger(archive, audit).run()
    assert report.finalized == 1 and report.held == 1
    assert archive.catalogue.counts()["studies"] == 1 and all(map(archive.store.exists, unk))
    events = [(e["study_uid"], orjson.loads(e["detail"])["phase"])
              for e in audit.query(event_type="purge", limit=50)]
    assert events == [(OUT, "marked"), (OUT, "finalized"), (INP, "marked"),
                      (INP, "finalized")]
    assert audit.verify().ok


async def test_R_A7_FT13_purge_resumes_after_crash_between_phases(archive, clock):
    out, *_ = await three_studies(archive, clock)
    audit = AuditTrail(archive.catalogue)
    clock.t = ts(2026)
    first = Purger(archive, audit).run(stop_after_mark=True)  # "crash" after the mark
    assert first.marked == 1 and first.finalized == 0
    assert archive.catalogue.counts()["studies"] == 2   # gone from the index already
    assert archive.store.exists(out[0])                 # blobs still there
    second = Purger(archive, audit).run()
    assert second.resumed == 1 and second.finalized == 1 and second.blobs_deleted == 2
    assert not any(map(archive.store.exists, out))
    third = Purger(archive, audit).run()                # nothing twice
    assert third.resumed == 0 and third.marked == 0 and third.blobs_deleted == 0


async def test_R_A7_FT13_copy_failure_leaves_tombstone_open_then_completes(archive, clock):
    out, *_ = await three_studies(archive, clock)
    audit = AuditTrail(archive.catalogue)
    clock.t = ts(2026)
    broken = archive.store.copies[2]
    real_delete = broken.delete

    def failing(sha):
        raise OutOfResources("copy unreachable")
    broken.delete = failing
    report = Purger(archive, audit).run()
    assert not report.ok and report.finalized == 0 and len(report.errors) == 2
    assert broken.exists(out[0])
    broken.delete = real_delete
    report = Purger(archive, audit).run()
    assert report.ok and report.resumed == 1 and report.finalized == 1
    assert not any(c.exists(out[0]) for c in archive.store.copies)


async def test_R_A7_purge_keeps_a_blob_another_instance_still_uses(archive, clock):
    # Two identical-bytes instances cannot exist (the SOP UID is in the bytes), but a kept
    # version (R-A8) may share a blob: simulate a reference from another study's row.
    out, inp, _ = await three_studies(archive, clock)
    from pacsd.index.lifecycle import Lifecycle
    life = Lifecycle(archive.catalogue)
    life.blob_still_referenced = lambda sha: sha == out[0]
    clock.t = ts(2026)
    purger = Purger(archive, AuditTrail(archive.catalogue))
    purger.lifecycle = life
    report = purger.run()
    assert report.blobs_shared == 1 and report.blobs_deleted == 1
    assert archive.store.exists(out[0]) and not archive.store.exists(out[1])


async def test_R_A7_cli_hold_show_purge(archive, settings, clock, capsys):
    await three_studies(archive, clock)
    archive.close()
    common = ["--data-dir", settings.server.data_dir]
    for c in settings.storage.copies:
        common += ["--store", c["url"]]
    assert cli.main(["retention", "hold", INP, "--reason", "audit", *common]) == 0
    assert cli.main(["retention", "show", INP, *common]) == 0
    out = capsys.readouterr().out
    assert "legal_hold: True" in out and "retain_until: 20400301" in out
    assert cli.main(["retention", "visit", UNK, "--class", "outpatient",
                     "--visit-date", "19900101", *common]) == 0
    assert "retained until 20050101" in capsys.readouterr().out
    # The command line runs on the real clock (2026 or later): the outpatient study
    # (until 2025) and the re-classified one (until 2005) have expired; INP is held.
    assert cli.main(["retention", "purge", "--dry-run", *common]) == 0
    out = capsys.readouterr().out
    assert "would purge: 2" in out and UNK in out and OUT in out and INP not in out
    assert cli.main(["retention", "purge", *common]) == 0
    assert "finalised: 2" in capsys.readouterr().out
    assert cli.main(["retention", "show", "../etc", *common]) == 2


async def test_R_A7_R_A8_purge_takes_kept_versions_along(archive, clock):
    from pacsd.services.versions import VersionService
    out, *_ = await three_studies(archive, clock)
    VersionService(archive).correct(OUT, {"StudyDescription": "fixed"}, "typo")
    current = [r.sha256 for r in archive.catalogue.iter_instances(OUT)]
    assert set(current).isdisjoint(out) and all(map(archive.store.exists, out))
    clock.t = ts(2026)
    report = Purger(archive, AuditTrail(archive.catalogue)).run()
    assert report.finalized == 1 and report.blobs_deleted == 4  # 2 current + 2 originals
    assert not any(map(archive.store.exists, out + current))
