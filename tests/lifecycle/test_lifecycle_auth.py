"""Who may do what on the lifecycle API with security on (MLPS 6, SEC-5; R-A7, R-A8): a
clinician reads retention and versions but cannot set a legal hold, visit data or a
correction (403, audited as permission-denied); the system administrator can."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from dicomgen import make_instance, multipart

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
from sechelpers import FakeClock, make_settings, start_api  # noqa: E402

pytestmark = pytest.mark.asyncio
STUDY = "1.2.826.0.1.3680043.9.12.1"


async def test_SEC5_lifecycle_routes_need_their_actions(aiohttp_client, tmp_path):
    api = await start_api(aiohttp_client, make_settings(tmp_path), FakeClock())
    admin = await api.session("root", "sysadmin")
    clin = await api.session("doc", "clinician")
    body, ctype = multipart([make_instance(study=STUDY, sop=STUDY + ".1", seed=3)])
    r = await api.client.post("/dicom-web/studies", data=body,
                              headers={"Content-Type": ctype, **admin})
    assert r.status == 200
    base = f"/api/v1/studies/{STUDY}"
    fix = {"changes": {"PatientName": "A^B"}, "reason": "r"}
    for method, path, body in (("PUT", "legal-hold", {"reason": "r"}),
                               ("PUT", "retention", {"visit_class": "outpatient"}),
                               ("POST", "corrections", fix)):
        r = await api.client.request(method, f"{base}/{path}", json=body, headers=clin)
        assert r.status == 403, path
    assert (await api.client.get(f"{base}/retention", headers=clin)).status == 200
    assert (await api.client.get(f"{base}/versions", headers=clin)).status == 200
    assert len(await api.events(event_type="permission-denied", study_uid=STUDY)) == 3
    r = await api.client.put(f"{base}/legal-hold", json={"reason": "r"}, headers=admin)
    assert r.status == 200
    r = await api.client.post(f"{base}/corrections", json=fix, headers=admin)
    assert r.status == 201
