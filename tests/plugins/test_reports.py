"""pacsd-reports (R-C2): a PDF report becomes an Encapsulated PDF in the exam's study;
preliminary then final (the final replaces the preliminary after review); a final is
announced to other plugins as ``reports.final``."""
from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw

from dicomgen import make_dataset, multipart, to_part10
from pacsd import hookimpl
from pacsd.config import Settings
from pacsd.plugins import Plugins
from pacsd.web import create_app


def pdf(text: str) -> bytes:
    img = Image.new("RGB", (400, 200), "white")
    ImageDraw.Draw(img).text((20, 20), text, fill="black")
    out = io.BytesIO()
    img.save(out, format="PDF")
    return out.getvalue()


class Listener:
    def __init__(self) -> None:
        self.events: list = []

    @hookimpl
    def plugin_event(self, api, event, payload):
        self.events.append((event, payload))


@pytest.fixture
async def ctx(aiohttp_client, tmp_path, with_plugin_site):
    settings = Settings()
    settings.server.data_dir = str(tmp_path)
    plugins = Plugins()
    plugins.load({})
    assert "reports" in plugins.names()
    listener = Listener()
    plugins.register(listener, "listener")
    client = await aiohttp_client(create_app(settings, plugins))
    ds = make_dataset(Modality="CT", PatientID="P7")
    body, ctype = multipart([to_part10(ds)])
    r = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert r.status == 200
    return client, ds.StudyInstanceUID, listener


async def upload(client, study, body, **query):
    return await client.post(f"/api/v1/plugins/reports/studies/{study}", data=body,
                             params=query, headers={"Content-Type": "application/pdf"})


async def test_R_C2_preliminary_then_final_replaces_it_and_is_announced(ctx):
    client, study, listener = ctx
    prelim, final = pdf("preliminary: no acute finding"), pdf("final: no acute finding")
    r = await upload(client, study, prelim, status="preliminary", kind="radiology")
    assert r.status == 201, await r.text()
    p = await r.json()
    assert p["status"] == "preliminary" and p["replaced"] == []
    assert listener.events == []                              # not final yet
    r = await upload(client, study, final, status="final", phone="13800134321")
    f = await r.json()
    assert r.status == 201 and f["replaced"] == [p["id"]]
    assert listener.events[0] == ("reports.final", {"study_uid": study,
                                                    "report_id": f["id"],
                                                    "kind": "radiology",
                                                    "phone": "13800134321"})
    # pacsd-share (installed too) answered with a link for the notification plugins.
    assert [e for e, _ in listener.events] == ["reports.final", "share.link-created"]
    assert listener.events[1][1]["study_uid"] == study
    r = await client.get(f"/api/v1/plugins/reports/studies/{study}")
    rows = (await r.json())["reports"]
    assert [(x["id"], x["status"]) for x in rows] == [(f["id"], "final"),
                                                      (p["id"], "replaced")]
    assert rows[1]["replaced_by"] == f["id"]
    r = await client.get(f"/api/v1/plugins/reports/studies/{study}/{f['id']}.pdf")
    assert r.status == 200 and await r.read() == final
    assert r.headers["X-Report-Status"] == "final"
    # Both objects are in the exam's study as Encapsulated PDF (history kept).
    r = await client.get(f"/dicom-web/studies/{study}/instances",
                         params={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.104.1"})
    assert {i["00080018"]["Value"][0] for i in await r.json()} == {p["sop"], f["sop"]}
    r = await upload(client, study, prelim, status="preliminary")
    assert r.status == 409                                    # no preliminary after final


async def test_R_C2_bad_uploads_are_refused_precisely(ctx):
    client, study, _ = ctx
    assert (await upload(client, study, b"not a pdf")).status == 400
    assert (await upload(client, study, pdf("x"), status="draft")).status == 400
    assert (await upload(client, study, pdf("x"), kind="xray")).status == 400
    assert (await upload(client, "1.2.3.4.5", pdf("x"))).status == 404
    r = await client.post(f"/api/v1/plugins/reports/studies/{study}", data=pdf("x"),
                          headers={"Content-Type": "text/plain"})
    assert r.status == 415
    r = await client.get(f"/api/v1/plugins/reports/studies/{study}")
    assert (await r.json())["reports"] == []                  # nothing half-stored


async def _stable_reports(client, study: str, n: int) -> list[dict]:
    import asyncio

    for _ in range(300):                   # bounded: study_stable fires after 0.2 s
        rows = (await (await client.get(f"/api/v1/plugins/reports/studies/{study}")
                       ).json())["reports"]
        if len(rows) >= n:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError("the SR was not recognised as a report")


@pytest.mark.parametrize("sop_class", ["1.2.840.10008.5.1.4.1.1.88.33",
                                       "1.2.840.10008.5.1.4.1.1.88.11"])
async def test_R_C2_dicom_sr_by_stow_is_a_report_of_its_study(
        aiohttp_client, tmp_path, with_plugin_site, sop_class):
    """A Comprehensive / Basic Text SR stored by STOW-RS (the one ingest path, the same
    as C-STORE) becomes the study's report once the study is stable: text extracted,
    PARTIAL/UNVERIFIED = preliminary, COMPLETE+VERIFIED = final (replacing it), the final
    announced with the phone of PatientTelephoneNumbers."""
    from srgen import make_sr

    settings = Settings()
    settings.server.data_dir = str(tmp_path)
    settings.server.stable_age_s = 0.2
    plugins = Plugins()
    plugins.load({})
    listener = Listener()
    plugins.register(listener, "listener")
    client = await aiohttp_client(create_app(settings, plugins))
    ds = make_dataset(Modality="CT", PatientID="P8", StudyDescription="Chest CT")
    sr1 = make_sr(ds, final=False, findings="右肺结节 6 mm", impression="Pulmonary nodule",
                  sop_class=sop_class)
    body, ctype = multipart([to_part10(ds), sr1])
    assert (await client.post("/dicom-web/studies", data=body,
                              headers={"Content-Type": ctype})).status == 200
    [r] = await _stable_reports(client, ds.StudyInstanceUID, 1)
    assert r["status"] == "preliminary" and r["source"] == "sr"
    assert "Finding: 右肺结节 6 mm" in r["text"] and "Impression: Pulmonary nodule" in r["text"]
    assert not [e for e, _ in listener.events if e == "reports.final"]
    sr2 = make_sr(ds, final=True, findings="右肺结节 6 mm，边界清楚",
                  impression="Benign-looking pulmonary nodule", sop_class=sop_class,
                  phone="13800134321")
    body, ctype = multipart([sr2])
    assert (await client.post("/dicom-web/studies", data=body,
                              headers={"Content-Type": ctype})).status == 200
    rows = await _stable_reports(client, ds.StudyInstanceUID, 2)
    assert [x["status"] for x in rows] == ["final", "replaced"]
    [(_, payload)] = [(e, p) for e, p in listener.events if e == "reports.final"]
    assert payload["phone"] == "13800134321" and payload["study_uid"] == ds.StudyInstanceUID
    r = await client.get(f"/api/v1/plugins/reports/studies/{ds.StudyInstanceUID}/"
                         f"{rows[0]['id']}.pdf")
    assert r.status == 404                                     # an SR has no PDF


def test_R_C2_dicom_sr_by_c_store_is_a_report_of_its_study(tmp_path, with_plugin_site):
    """The same through DIMSE: DCMTK storescu sends a CT image and a final Enhanced SR
    to a real ``pacsd serve``; the SR becomes the study's final report."""
    import shutil
    import subprocess
    import time

    import requests

    from pacsd_server import Server
    from srgen import make_sr

    if not shutil.which("storescu"):
        pytest.skip("DCMTK storescu is not installed")
    data = tmp_path / "data"
    data.mkdir()
    conf = tmp_path / "pacsd.toml"
    conf.write_text("[server]\nstable_age_s = 0.3\n")
    ds = make_dataset(Modality="CT", PatientID="P9", StudyDescription="Head CT")
    (tmp_path / "ct.dcm").write_bytes(to_part10(ds))
    (tmp_path / "sr.dcm").write_bytes(make_sr(
        ds, final=True, findings="No abnormality.", impression="Unremarkable head CT.",
        sop_class="1.2.840.10008.5.1.4.1.1.88.22"))
    srv = Server(str(data), "--config", str(conf), dicom_port=None)
    try:
        done = subprocess.run(["storescu", "-aec", "PACSD", "127.0.0.1",
                               str(srv.dicom_port), str(tmp_path / "ct.dcm"),
                               str(tmp_path / "sr.dcm")], capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        rows = []
        for _ in range(200):                                  # bounded wait (stable)
            rows = requests.get(f"{srv.url}/api/v1/plugins/reports/studies/"
                                f"{ds.StudyInstanceUID}").json()["reports"]
            if rows:
                break
            time.sleep(0.05)
        [r] = rows
        assert r["status"] == "final" and r["source"] == "sr"
        assert "Impression: Unremarkable head CT." in r["text"]
    finally:
        srv.stop()
