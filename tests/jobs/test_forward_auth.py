"""The forwarding monitoring API and page go through the one auth middleware (SEC-5,
SEC-21; R-B2): reading needs ``read``, resubmitting ``admin``; refusals are 401 / 403 and
audited."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
from sechelpers import FakeClock, make_settings, start_api  # noqa: E402

from pacsd.web.keys import JOBS  # noqa: E402


async def test_monitoring_needs_read_and_resubmit_needs_admin(aiohttp_client, tmp_path):
    api = await start_api(aiohttp_client, make_settings(tmp_path), FakeClock())
    c = api.client
    for path in ("/api/v1/forwarding/status", "/api/v1/forwarding/jobs",
                 "/api/v1/forwarding/overdue", "/api/v1/forwarding/log",
                 "/api/v1/forwarding/studies", "/admin/forwarding"):
        assert (await c.get(path)).status == 401, path
    clinician = await api.session("doc", "clinician")
    auditor = await api.session("aud", "auditor")
    sysadmin = await api.session("ops", "sysadmin")
    secadmin = await api.session("sec", "secadmin")
    r = await c.get("/api/v1/forwarding/status", headers=clinician)
    assert r.status == 200 and (await r.json())["queue"]["dead"] == 0
    assert (await c.get("/admin/forwarding", headers=clinician)).status == 200
    assert (await c.get("/api/v1/forwarding/status", headers=auditor)).status == 403
    # A dead forwarding job to resubmit.
    q = api.app[JOBS].queue
    pk = q.enqueue("forward.study", {"destination": "gone", "study": "1.2.3"},
                   max_attempts=1)
    (job,) = q.claim("test", ["forward.study"])
    q.fail(job, "refused")
    url = f"/api/v1/forwarding/jobs/{pk}/resubmit"
    assert (await c.post(url, headers=clinician)).status == 403
    assert (await c.post(url, headers=sysadmin)).status == 403
    assert q.get(pk).state == "dead"
    r = await c.post(url, headers=secadmin)
    assert r.status == 200 and q.get(pk).state in ("queued", "running", "dead")
    denied = await api.events(event_type="permission-denied")
    assert len([e for e in denied if "resubmit" in e["detail"]]) == 2
    assert len(await api.events(event_type="job-resubmitted", outcome="success")) == 1
    # Bad query values are 400, not 500.
    r = await c.get("/api/v1/forwarding/jobs?state=bogus", headers=clinician)
    assert r.status == 400
    r = await c.get("/api/v1/forwarding/log?limit=0", headers=clinician)
    assert r.status == 400
