"""Store-and-forward to a DICOMweb destination (R-B2, R-B3): a second, real ``pacsd
serve`` process receives the study through STOW-RS, bit-exact and in one request per
batch; a destination that refuses the credentials (401) is a permanent failure (dead
letter at once); a destination that cannot be reached is retried."""
from __future__ import annotations

import pytest
from dicomgen import make_dataset, multipart, to_part10
from fwd_helpers import wait_for
from pacsd_server import Server, free_port

from pacsd.config import Settings
from pacsd.web import create_app
from pacsd.web.forwarding import FORWARDING
from pacsd.web.keys import CLOCK, JOBS


@pytest.fixture(scope="module")
def second_archive(tmp_path_factory):
    srv = Server(str(tmp_path_factory.mktemp("second-archive")))
    yield srv
    srv.stop()


def source_settings(tmp_path, url: str, **dest) -> Settings:
    s = Settings()
    s.server.data_dir = str(tmp_path / "src")
    s.jobs.poll_interval_s = 0.02
    s.jobs.backoff_jitter = 0.0
    s.forward.batch_delay_s = 5.0
    s.forward.sla_check_interval_s = 3600.0
    s.forward.destinations = {"platform": {"type": "dicomweb", "url": url,
                                           "instances_per_request": 2, **dest}}
    s.forward.rules = [{"destinations": ["platform"], "match": {"Modality": "C?"}}]
    return s


async def start(aiohttp_client, settings, clock):
    app = create_app(settings)
    app[CLOCK] = clock
    return await aiohttp_client(app), app


async def stow(client, datasets):
    body, ctype = multipart([to_part10(d) for d in datasets])
    r = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert r.status == 200, await r.text()


async def test_study_reaches_a_second_pacsd_bit_exact_R_B3(aiohttp_client, tmp_path, clock,
                                                           second_archive):
    import aiohttp

    settings = source_settings(tmp_path, f"{second_archive.url}/dicom-web/studies")
    client, app = await start(aiohttp_client, settings, clock)
    first = make_dataset(seed=1)
    study = [first] + [make_dataset(study=first.StudyInstanceUID,
                                    series=first.SeriesInstanceUID, seed=n)
                       for n in range(2, 6)]
    await stow(client, study)
    clock.advance(5)
    app[JOBS].wake()
    fwd = app[FORWARDING]
    await wait_for(lambda: (fwd.log.studies() or [{}])[0].get("delivered_at") is not None)
    q = app[JOBS].queue
    await wait_for(lambda: [j.state for j in q.list(kind="forward.study")] == ["done"])
    assert [i["state"] for i in fwd.log.items()] == ["sent"] * 5
    async with aiohttp.ClientSession() as http:
        for ds in study:
            url = (f"{second_archive.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
                   f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")
            async with http.get(url, headers={
                    "Accept": 'multipart/related; type="application/dicom"; '
                              "transfer-syntax=*"}) as r:
                assert r.status == 200
                body = await r.read()
            assert to_part10(ds) in body  # the object exactly as it was received (R-A5)


async def test_refused_credentials_are_a_permanent_failure(aiohttp_client, tmp_path, clock):
    secured_dir = tmp_path / "secured"
    secured_dir.mkdir()
    (secured_dir / "pacsd.toml").write_text("[security]\nenabled = true\n")
    secured = Server(str(secured_dir), "--config", str(secured_dir / "pacsd.toml"))
    try:
        settings = source_settings(tmp_path, f"{secured.url}/dicom-web/studies",
                                   token="not-a-valid-token")
        client, app = await start(aiohttp_client, settings, clock)
        await stow(client, [make_dataset()])
        clock.advance(5)
        app[JOBS].wake()
        q = app[JOBS].queue
        await wait_for(lambda: any(j.state == "dead" for j in q.list(kind="forward.study")))
        (job,) = q.list(kind="forward.study")
        assert job.attempts == 1 and "HTTP 401" in job.last_error
        assert "not-a-valid-token" not in job.last_error
        assert [i["state"] for i in app[FORWARDING].log.items()] == ["pending"]
    finally:
        secured.stop()


async def test_unreachable_destination_is_retried_with_backoff(aiohttp_client, tmp_path,
                                                               clock):
    url = f"http://127.0.0.1:{free_port()}/dicom-web/studies"  # nobody listens there
    client, app = await start(aiohttp_client, source_settings(tmp_path, url), clock)
    await stow(client, [make_dataset()])
    clock.advance(5)
    app[JOBS].wake()
    q = app[JOBS].queue
    await wait_for(lambda: any(j.attempts == 1 and j.state == "queued"
                               for j in q.list(kind="forward.study")))
    (job,) = q.list(kind="forward.study")
    assert job.run_at == clock.now + settings_backoff(app)
    assert "ClientConnectorError" in job.last_error or "Connect" in job.last_error


def settings_backoff(app) -> float:
    return app[JOBS].conf.backoff_base_s
