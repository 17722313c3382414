"""Store-and-forward to a DIMSE destination (R-B2, R-B3, R-A9) with a real pynetdicom
Storage SCP and a controllable clock: delivery bit-exact, a destination that is down is
retried and gets everything exactly once when it comes back, a permanent refusal goes
to the dead letter state and is delivered after resubmit, a study over the SLA raises
one alert (audit event + log line without patient data) and shows in the monitoring
API and page."""
from __future__ import annotations

import logging

import pytest
from dicomgen import make_dataset, multipart, to_part10
from fwd_helpers import StorageSCP, dataset_bytes, wait_for

from pacsd.config import Settings
from pacsd.index.jobs import JobQueue
from pacsd.web import create_app
from pacsd.web.forwarding import FORWARDING
from pacsd.web.keys import AUDIT, CLOCK, JOBS


def settings_for(tmp_path, scp: StorageSCP, **forward) -> Settings:
    s = Settings()
    s.server.data_dir = str(tmp_path / "src")
    s.jobs.poll_interval_s = 0.02
    s.jobs.backoff_base_s = 60.0
    s.jobs.backoff_jitter = 0.0
    s.forward.batch_delay_s = 0.0
    s.forward.sla_check_interval_s = 3600.0
    s.forward.destinations = {"city": {"type": "dimse", "ae_title": scp.ae_title,
                                       "host": "127.0.0.1", "port": scp.port,
                                       "timeout_s": 5.0}}
    s.forward.rules = [{"name": "CT to the city platform", "destinations": ["city"],
                        "match": {"Modality": ["CT", "MR"], "InstitutionName": "Central*"}}]
    for k, v in forward.items():
        setattr(s.forward, k, v)
    return s


@pytest.fixture
def scp():
    peer = StorageSCP()
    yield peer
    peer.stop()


async def start(aiohttp_client, settings, clock):
    app = create_app(settings)
    app[CLOCK] = clock
    client = await aiohttp_client(app)
    return client, app


async def stow(client, datasets):
    body, ctype = multipart([to_part10(d) for d in datasets])
    r = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert r.status == 200, await r.text()


def study_of(n: int, **attrs):
    first = make_dataset(InstitutionName="Central Hospital", seed=0, **attrs)
    rest = [make_dataset(study=first.StudyInstanceUID, series=first.SeriesInstanceUID,
                         InstitutionName="Central Hospital", seed=i, **attrs)
            for i in range(1, n)]
    return [first, *rest]


async def forward_jobs(app) -> list:
    q: JobQueue = app[JOBS].queue
    return q.list(kind="forward.study")


async def test_rule_routes_and_delivers_bit_exact_R_B2_R_B3(aiohttp_client, tmp_path, clock,
                                                             scp):
    scp.start()
    client, app = await start(aiohttp_client, settings_for(tmp_path, scp), clock)
    study = study_of(3)
    other = make_dataset(Modality="US", InstitutionName="Central Hospital")
    elsewhere = make_dataset(InstitutionName="Other Clinic")
    await stow(client, study + [other, elsewhere])
    await wait_for(lambda: len(scp.received) == 3)
    for ds in study:
        assert scp.received[ds.SOPInstanceUID] == dataset_bytes(to_part10(ds))  # R-A5
    fwd = app[FORWARDING]
    await wait_for(lambda: fwd.log.studies(study_uid=study[0].StudyInstanceUID)[0][
        "delivered_at"] is not None)
    # Only the matching study was routed; the others are not in the log at all.
    log_items = fwd.log.items()
    assert {i["sop_uid"] for i in log_items} == {d.SOPInstanceUID for d in study}
    assert all(i["state"] == "sent" and i["calling_aet"] == "" for i in log_items)
    q = app[JOBS].queue
    await wait_for(lambda: all(j.state == "done" for j in q.list(kind="forward.study")))
    assert {c[0] for c in scp.calls} == {"PACSD"}  # our AE title as calling AE
    # The disclosure is in the audit trail (R-E3/C6): who got which study.
    audit = app[AUDIT]
    await audit.flush()
    events = audit.query(event_type="study-forwarded")
    assert [(e["study_uid"], e["object_count"], e["device"]) for e in events] == [
        (study[0].StudyInstanceUID, 3, "city")]
    assert events[0]["location"] == f"dicom://CITY@127.0.0.1:{scp.port}"


async def test_instances_of_a_study_are_batched_into_one_job(aiohttp_client, tmp_path,
                                                             clock, scp):
    scp.start()
    client, app = await start(aiohttp_client,
                              settings_for(tmp_path, scp, batch_delay_s=30.0), clock)
    study = study_of(4)
    await stow(client, study[:2])
    await stow(client, study[2:])
    jobs = await forward_jobs(app)
    assert len(jobs) == 1 and jobs[0].state == "queued"  # deduplicated, waiting
    assert scp.calls == []
    clock.advance(30)
    app[JOBS].wake()
    await wait_for(lambda: len(scp.received) == 4)
    q = app[JOBS].queue
    await wait_for(lambda: [j.state for j in q.list(kind="forward.study")] == ["done"])
    assert len(scp.calls) == 4


async def test_destination_down_is_retried_and_delivered_once_when_back_R_B2(
        aiohttp_client, tmp_path, clock, scp):
    client, app = await start(aiohttp_client,
                              settings_for(tmp_path, scp, batch_delay_s=1.0), clock)
    study = study_of(2)
    await stow(client, study)  # the SCP is not running yet
    clock.advance(1)  # the batching delay: both instances in one job
    app[JOBS].wake()
    q = app[JOBS].queue
    await wait_for(lambda: any(j.attempts == 1 and j.state == "queued"
                               for j in q.list(kind="forward.study")))
    (job,) = q.list(kind="forward.study")
    assert "association failed" in job.last_error
    assert job.run_at == clock.now + 60  # backoff 60 s, no jitter in this test
    assert job.payload == {"destination": "city", "study": study[0].StudyInstanceUID}
    fwd = app[FORWARDING]
    assert [i["state"] for i in fwd.log.items()] == ["pending", "pending"]
    assert fwd.log.items()[0]["attempts"] == 1
    scp.start()
    clock.advance(30)  # not yet due: nothing is sent
    app[JOBS].wake()
    await app[JOBS].run_due()
    assert scp.calls == []
    clock.advance(31)
    app[JOBS].wake()
    await wait_for(lambda: len(scp.received) == 2)
    await wait_for(lambda: q.get(job.pk).state == "done")
    assert sorted(c[1] for c in scp.calls) == sorted(d.SOPInstanceUID for d in study)
    # A later arrival of the same study goes out on its own, the first ones not again.
    late = make_dataset(study=study[0].StudyInstanceUID, series=study[0].SeriesInstanceUID,
                        InstitutionName="Central Hospital", seed=9)
    await stow(client, [late])
    clock.advance(1)
    app[JOBS].wake()
    await wait_for(lambda: len(scp.received) == 3)
    assert len(scp.calls) == 3


async def test_permanent_refusal_dead_letter_then_resubmit_R_B2(aiohttp_client, tmp_path,
                                                                 clock, scp):
    scp.status = 0xA900  # "data set does not match SOP class": no retry helps
    scp.start()
    client, app = await start(aiohttp_client, settings_for(tmp_path, scp), clock)
    study = study_of(1)
    await stow(client, study)
    q = app[JOBS].queue
    await wait_for(lambda: any(j.state == "dead" for j in q.list(kind="forward.study")))
    (job,) = q.list(kind="forward.study")
    assert job.attempts == 1 and "0xA900" in job.last_error
    r = await client.get("/api/v1/forwarding/jobs?state=dead")
    assert [j["id"] for j in (await r.json())["jobs"]] == [job.pk]
    r = await client.get("/api/v1/forwarding/status")
    assert (await r.json())["queue"]["dead"] == 1
    r = await client.get("/admin/forwarding")
    page = await r.text()
    assert r.status == 200 and '<b id="dead" class="bad">1</b>' in page
    assert "0xA900" in page
    scp.status = 0x0000  # the destination was fixed
    r = await client.post(f"/api/v1/forwarding/jobs/{job.pk}/resubmit")
    assert r.status == 200 and (await r.json())["job"]["state"] == "queued"
    await wait_for(lambda: study[0].SOPInstanceUID in scp.received)
    await wait_for(lambda: q.get(job.pk).state == "done")
    r = await client.post(f"/api/v1/forwarding/jobs/{job.pk}/resubmit")
    assert r.status == 409  # only dead jobs
    r = await client.post("/api/v1/forwarding/jobs/999999/resubmit")
    assert r.status == 404
    audit = app[AUDIT]
    await audit.flush()
    assert [e["outcome"] for e in audit.query(event_type="job-resubmitted")] == [
        "success", "failure", "failure"]


async def test_sla_breach_alerts_once_and_is_visible_R_A9(aiohttp_client, tmp_path, clock,
                                                           scp, caplog):
    client, app = await start(aiohttp_client,
                              settings_for(tmp_path, scp, batch_delay_s=1.0), clock)
    study = study_of(1, PatientName="Zhang^San", PatientID="PID-SECRET-42")
    t0 = clock.now
    await stow(client, study)
    fwd = app[FORWARDING]
    q = app[JOBS].queue
    clock.advance(1)
    app[JOBS].wake()
    await wait_for(lambda: any(j.attempts == 1 and j.state == "queued"
                               for j in q.list(kind="forward.study")))
    clock.advance(19 * 60 - 1)
    assert await fwd.check_sla() == []  # within 20 minutes: no alert
    r = await client.get("/api/v1/forwarding/overdue")
    assert (await r.json())["studies"] == []
    clock.advance(2 * 60)
    with caplog.at_level(logging.WARNING, logger="pacsd"):
        late = await fwd.check_sla()
    assert [s["study_uid"] for s in late] == [study[0].StudyInstanceUID]
    assert await fwd.check_sla() == []  # one alert per upload
    alert = [r.getMessage() for r in caplog.records if "SLA exceeded" in r.getMessage()]
    assert len(alert) == 1 and "city" in alert[0]
    for secret in ("Zhang", "PID-SECRET-42", study[0].StudyInstanceUID):
        assert secret not in caplog.text  # no patient data in the log
    audit = app[AUDIT]
    await audit.flush()
    (ev,) = audit.query(event_type="forward-overdue")
    assert ev["study_uid"] == study[0].StudyInstanceUID and ev["outcome"] == "failure"
    r = await client.get("/api/v1/forwarding/overdue")
    assert [s["study_uid"] for s in (await r.json())["studies"]] == [
        study[0].StudyInstanceUID]
    r = await client.get("/api/v1/forwarding/status")
    body = await r.json()
    assert body["overdue"] == 1 and body["destinations"]["city"]["overdue_studies"] == 1
    page = await (await client.get("/admin/forwarding")).text()
    assert '<b id="overdue" class="bad">1</b>' in page
    # The destination comes back: delivered (late), the clock stops, no longer overdue.
    scp.start()
    clock.advance(60 * 60)
    app[JOBS].wake()
    await wait_for(lambda: fwd.log.studies()[0]["delivered_at"] is not None)
    r = await client.get("/api/v1/forwarding/status")
    body = await r.json()
    assert body["overdue"] == 0
    city = body["destinations"]["city"]
    assert city["delivered_24h"] == 1
    assert city["upload_p50_s"] == city["upload_p95_s"] == clock.now - t0
    page = await (await client.get("/admin/forwarding")).text()
    delivered = page.split('<table id="delivered">', 1)[1].split("</table>")[0]
    minutes = f"{(clock.now - t0) / 60:.1f} min"
    assert study[0].StudyInstanceUID in delivered
    assert f"<td class='bad'>{minutes}</td>" in delivered  # late: marked


async def test_resend_a_stored_study_R_B2(aiohttp_client, tmp_path, clock, scp):
    """Re-upload (R-A10): a study the destination lost is sent again on request."""
    scp.start()
    client, app = await start(aiohttp_client, settings_for(tmp_path, scp), clock)
    study = study_of(2)
    unrouted = make_dataset(Modality="US", InstitutionName="Central Hospital")
    await stow(client, study + [unrouted])
    q = app[JOBS].queue
    await wait_for(lambda: len(scp.received) == 2)
    await wait_for(lambda: all(j.state == "done" for j in q.list(kind="forward.study")))
    scp.received.clear()
    # Forwarding is at-least-once: under heavy load a batch job that overlapped the
    # study's second arrival may have sent one instance twice; count from here.
    calls_before = len(scp.calls)
    uid = study[0].StudyInstanceUID
    r = await client.post(f"/api/v1/forwarding/studies/{uid}/resend")
    assert r.status == 200 and (await r.json())["queued"] == {"city": 2}
    await wait_for(lambda: len(scp.received) == 2)
    assert len(scp.calls) - calls_before == 2
    # By the rules the US study goes nowhere; named explicitly it goes.
    r = await client.post(f"/api/v1/forwarding/studies/{unrouted.StudyInstanceUID}/resend")
    assert (await r.json())["queued"] == {}
    r = await client.post(f"/api/v1/forwarding/studies/{unrouted.StudyInstanceUID}/resend"
                          "?destination=city")
    assert (await r.json())["queued"] == {"city": 1}
    await wait_for(lambda: unrouted.SOPInstanceUID in scp.received)
    r = await client.post("/api/v1/forwarding/studies/1.2.3.4/resend")
    assert r.status == 404
    r = await client.post(f"/api/v1/forwarding/studies/{uid}/resend?destination=nowhere")
    assert r.status == 400
    audit = app[AUDIT]
    await audit.flush()
    events = audit.query(event_type="forward-resend")
    assert [e["outcome"] for e in events] == ["success"] * 3 + ["failure"] * 2
    assert events[0]["study_uid"] == uid and events[0]["object_count"] == 2


async def test_routing_that_cannot_be_written_is_retried_R_B2(aiohttp_client, tmp_path,
                                                              clock, scp, monkeypatch):
    """The index refuses the routing write once (busy): the stored instance is not
    lost for forwarding; the periodic check writes it and it is delivered."""
    from pacsd import errors
    scp.start()
    client, app = await start(aiohttp_client, settings_for(tmp_path, scp), clock)
    fwd = app[FORWARDING]
    real = fwd.log.record_arrivals
    calls = []

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise errors.OutOfResources("index busy")
        return real(*a, **kw)

    monkeypatch.setattr(fwd.log, "record_arrivals", flaky)
    study = study_of(1)
    await stow(client, study)  # stored fine; routing write failed
    assert fwd.log.items() == [] and scp.calls == []
    await fwd.check_sla()      # the periodic task retries it
    await wait_for(lambda: study[0].SOPInstanceUID in scp.received)
    assert len(calls) == 2
