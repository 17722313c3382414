"""Retention over HTTP (R-A7): DICOMweb DELETE inside retention answers 409 with the
reason, HIS visit data and legal hold through /api/v1, each audited; with security on,
only the delete action may set a hold."""
from __future__ import annotations

import datetime as _dt

import orjson
import pytest
from dicomgen import make_instance, multipart

from pacsd.config import Settings
from pacsd.web import create_app
from pacsd.web.keys import AUDIT, CLOCK

from .conftest import Clock

pytestmark = pytest.mark.asyncio
STUDY = "1.2.826.0.1.3680043.9.10.1"


def ts(y, m=1, d=1):
    return _dt.datetime(y, m, d, 12, tzinfo=_dt.timezone.utc).timestamp()


@pytest.fixture
async def api(aiohttp_client, tmp_path):
    s = Settings()
    s.server.data_dir = str(tmp_path / "data")
    s.server.worker_threads = 2
    app = create_app(s)
    clock = Clock(ts(2012))
    app[CLOCK] = clock
    client = await aiohttp_client(app)
    body, ctype = multipart([make_instance(study=STUDY, sop=STUDY + ".1", seed=1,
                                           StudyDate="20120101")])
    r = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert r.status == 200
    return client, clock, app


async def test_R_A7_dicomweb_delete_409_with_reason_then_allowed(api):
    client, clock, _ = api
    r = await client.delete(f"/dicom-web/studies/{STUDY}")
    assert r.status == 409
    assert "retention period until 2042-01-01" in await r.text()
    r = await client.put(f"/api/v1/studies/{STUDY}/retention",
                         json={"visit_class": "outpatient", "visit_date": "20120101"})
    assert r.status == 200 and (await r.json())["retain_until"] == "20270101"
    clock.t = ts(2027, 1, 2)
    r = await client.get(f"/api/v1/studies/{STUDY}/retention")
    assert (await r.json())["deletable"] is True
    r = await client.put(f"/api/v1/studies/{STUDY}/legal-hold", json={"reason": "claim 4"})
    assert r.status == 200 and (await r.json())["legal_hold"] is True
    r = await client.delete(f"/dicom-web/studies/{STUDY}")
    assert r.status == 409 and "legal hold" in await r.text()
    r = await client.delete(f"/api/v1/studies/{STUDY}/legal-hold", json={"reason": "done"})
    assert r.status == 200 and (await r.json())["legal_hold"] is False
    assert (await client.delete(f"/dicom-web/studies/{STUDY}")).status == 204


async def test_R_A7_api_validation_and_audit(api):
    client, _, app = api
    base = f"/api/v1/studies/{STUDY}"
    for body in ({"visit_class": "vip"}, {"visit_class": "inpatient", "visit_date": "2012"},
                 {"visit_class": "inpatient", "visit_date": "20120105",
                  "discharge_date": "20120101"}):
        assert (await client.put(f"{base}/retention", json=body)).status == 400
    assert (await client.put(f"{base}/legal-hold", json={})).status == 400
    assert (await client.get("/api/v1/studies/1.2.3.999/retention")).status == 404
    assert (await client.put("/api/v1/studies/x..y/legal-hold",
                             json={"reason": "r"})).status == 400
    assert (await client.put(f"{base}/legal-hold", json={"reason": "r1"})).status == 200
    assert (await client.put(f"{base}/retention", json={"visit_class": "inpatient",
                                                       "discharge_date": "20120301"})
            ).status == 200
    audit = app[AUDIT]
    await audit.flush()
    kinds = [(e["event_type"], e["outcome"], e["study_uid"]) for e in audit.query(limit=100)]
    assert ("legal-hold", "success", STUDY) in kinds
    assert ("visit-data", "success", STUDY) in kinds
    hold = [e for e in audit.query(event_type="legal-hold", limit=10)
            if e["outcome"] == "success"][0]
    assert orjson.loads(hold["detail"])["reason"] == "r1"
