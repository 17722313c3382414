"""The lifecycle flows on the real PostgreSQL (scale-out catalogue): export, retention
purge (two-phase tombstone), corrections with a PatientID change (patient relinking under
row locks), compression report and the scheduled scrub lease (R-A11, R-A7, R-A8, R-A5,
R-A6). Each test gets a database of its own."""
from __future__ import annotations

import datetime as _dt
import uuid

import pytest
import sqlalchemy as sa

from pacsd.dicom.testing import make_instance as make_ramp

from pacsd.services import Archive
from pacsd.services.audit import AuditTrail
from pacsd.services.export import Exporter, Target, verify_export
from pacsd.services.retention import Purger, RetentionService
from pacsd.services.scheduled_scrub import ScrubScheduler
from pacsd.services.versions import VersionService

from .conftest import Clock, ingest, lifecycle_settings

pytestmark = pytest.mark.asyncio
STUDY = "1.2.826.0.1.3680043.9.14.1"


@pytest.fixture
def pg_archive(tmp_path, request):
    import psycopg

    from tests.conftest import PG_ADMIN_URL
    request.getfixturevalue("pg_server_url")  # skips when PostgreSQL is unreachable
    admin_url = sa.engine.make_url(PG_ADMIN_URL).set(drivername="postgresql")
    admin = psycopg.connect(admin_url.render_as_string(hide_password=False), autocommit=True)
    name = f"pacsd_test_lc_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    s = lifecycle_settings(tmp_path)
    s.index.url = admin_url.set(drivername="postgresql+psycopg", database=name
                                ).render_as_string(hide_password=False)
    a = Archive.open(s)
    try:
        yield a
    finally:
        a.close()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def ts(y, m=1, d=1):
    return _dt.datetime(y, m, d, 12, tzinfo=_dt.timezone.utc).timestamp()


async def test_lifecycle_flows_on_postgresql(pg_archive, tmp_path):
    a = pg_archive
    a.clock = Clock(ts(2010, 6, 1))
    a.settings.storage.compress = "jpeg-ls-lossless"
    # Smooth 64x64 ramps: JPEG-LS makes them smaller, so they are stored compressed.
    originals = [make_ramp(rows=64, columns=64, StudyInstanceUID=STUDY,
                           SeriesInstanceUID=STUDY + ".1", SOPInstanceUID=f"{STUDY}.{i}",
                           StudyDate="20100105", PatientID="OLD", InstanceNumber=i + 1)
                 for i in range(3)]
    for data in originals:
        await ingest(a, data)
    # R-A8: a correction that moves the study to another patient record.
    VersionService(a).correct(STUDY, {"PatientID": "NEW"}, "wrong patient")
    counts = a.catalogue.counts()
    assert counts["patients"] == 1 and counts["instances"] == 3
    h = VersionService(a).history(STUDY)
    assert len(h["versions"]) == 3
    v1 = VersionService(a).version_bytes(STUDY, STUDY + ".1", f"{STUDY}.0", 1)
    # Version 1 is the object as first stored: compressed (R-A5), the old PatientID.
    import io

    import numpy as np
    import pydicom
    ds1, ds0 = pydicom.dcmread(io.BytesIO(v1)), pydicom.dcmread(io.BytesIO(originals[0]))
    assert ds1.PatientID == "OLD" and ds1.file_meta.TransferSyntaxUID == \
        "1.2.840.10008.1.2.4.80"
    assert np.array_equal(ds1.pixel_array, ds0.pixel_array)
    current = VersionService(a).version_bytes(STUDY, STUDY + ".1", f"{STUDY}.0", 2)
    assert pydicom.dcmread(io.BytesIO(current)).PatientID == "NEW"
    # R-A11: export with versions, verified.
    out = tmp_path / "x"
    report = Exporter(a, Target(str(out))).run()
    assert report.complete and report.written == 6
    assert verify_export(Target(str(out))).ok
    # R-A6: the scheduled scrub on PostgreSQL, leases and all.
    a.settings.storage.scrub_every_days = 1
    r = ScrubScheduler(a, clock=Clock(1e6)).tick()
    assert r is not None and r.complete and r.ok and r.objects == 6
    # R-A7: outpatient, expired in 2026: the two-phase purge removes everything.
    RetentionService(a).set_visit(STUDY, "outpatient", "20100105")
    a.clock.t = ts(2026)
    purge = Purger(a, AuditTrail(a.catalogue)).run()
    assert purge.ok and purge.finalized == 1 and purge.blobs_deleted == 6
    assert a.catalogue.counts() == {"patients": 0, "studies": 0, "series": 0,
                                    "instances": 0}
