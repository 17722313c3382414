"""Corrections keep history (R-A8): a correction makes a new version of every instance
(new bytes, new blob, same SOP Instance UID); WADO-RS / QIDO-RS serve the current one;
the original stays stored, byte-identical and retrievable; pixel data never changes
(R-A5); history is listed; audited. Also: the scrubber knows kept versions (no false
orphans, FT-9), purge and DELETE take them along (R-A7)."""
from __future__ import annotations

import io

import orjson
import pydicom
import pytest
from dicomgen import make_instance, multipart

from pacsd.config import Settings
from pacsd.services.scrub import Scrubber
from pacsd.web import create_app
from pacsd.web.keys import ARCHIVE, AUDIT

pytestmark = pytest.mark.asyncio
STUDY = "1.2.826.0.1.3680043.9.11.1"
SERIES = STUDY + ".1"
SOPS = [f"{STUDY}.5.{i}" for i in range(3)]


@pytest.fixture
async def api(aiohttp_client, tmp_path):
    s = Settings()
    s.server.data_dir = str(tmp_path / "data")
    s.server.worker_threads = 2
    s.storage.copies = [{"url": str(tmp_path / "a")}, {"url": str(tmp_path / "b")}]
    s.retention.enabled = False  # the DELETE test below deletes
    app = create_app(s)
    client = await aiohttp_client(app)
    originals = {sop: make_instance(study=STUDY, series=SERIES, sop=sop, seed=i, frames=2,
                                    PatientName="Wrong^Name", PatientID="PID-OLD",
                                    StudyDescription="CT HEAD")
                 for i, sop in enumerate(SOPS)}
    body, ctype = multipart(list(originals.values()))
    r = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert r.status == 200
    return client, app, originals


async def correct(client, changes, reason="registration error"):
    return await client.post(f"/api/v1/studies/{STUDY}/corrections",
                             json={"changes": changes, "reason": reason})


async def wado(client, sop) -> bytes:
    r = await client.get(f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{sop}",
                         headers={"Accept": 'multipart/related; type="application/dicom"; '
                                            'transfer-syntax=*'})
    assert r.status == 200
    body = await r.read()
    boundary = r.headers["Content-Type"].split("boundary=")[1].split(";")[0].strip('"')
    part = body.split(b"--" + boundary.encode())[1]
    return part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]


async def test_R_A8_correction_new_version_original_kept_identical(api):
    client, app, originals = api
    r = await correct(client, {"PatientName": "Right^Name", "PatientID": "PID-NEW",
                               "StudyDescription": None})
    assert r.status == 201, await r.text()
    result = await r.json()
    assert result["instances"] == 3 and result["keywords"] == [
        "PatientID", "PatientName", "StudyDescription"]
    # QIDO serves the corrected attributes; the old PatientID matches nothing any more.
    r = await client.get("/dicom-web/studies", params={"PatientID": "PID-NEW"})
    found = await r.json()
    assert len(found) == 1 and found[0]["00100010"]["Value"][0]["Alphabetic"] == "Right^Name"
    r = await client.get("/dicom-web/studies", params={"PatientID": "PID-OLD"})
    assert r.status == 204 or await r.json() == []
    for sop, original in originals.items():
        current = await wado(client, sop)
        new_ds, old_ds = pydicom.dcmread(io.BytesIO(current)), pydicom.dcmread(
            io.BytesIO(original))
        assert str(new_ds.PatientName) == "Right^Name" and new_ds.PatientID == "PID-NEW"
        assert "StudyDescription" not in new_ds
        assert new_ds.SOPInstanceUID == sop
        assert new_ds.PixelData == old_ds.PixelData                     # R-A5
        assert new_ds.file_meta.TransferSyntaxUID == old_ds.file_meta.TransferSyntaxUID
        item = new_ds.OriginalAttributesSequence[0]
        assert item.ReasonForTheAttributeModification == "CORRECT"
        assert str(item.ModifiedAttributesSequence[0].PatientName) == "Wrong^Name"
        # Version 1 is the original, byte for byte; version 2 the current one.
        base = f"/api/v1/studies/{STUDY}/series/{SERIES}/instances/{sop}/versions"
        r = await client.get(f"{base}/1")
        assert r.status == 200 and await r.read() == original
        r = await client.get(f"{base}/2")
        assert await r.read() == current
        assert (await client.get(f"{base}/3")).status == 404
    # Frames of the current version (served from the new blob) equal the original's.
    r = await client.get(f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOPS[0]}"
                         "/frames/2", headers={"Accept": "multipart/related; "
                                               "type=application/octet-stream"})
    assert r.status == 200
    old_ds = pydicom.dcmread(io.BytesIO(originals[SOPS[0]]))
    assert old_ds.PixelData[len(old_ds.PixelData) // 2:] in await r.read()


async def test_R_A8_history_listed_and_audited(api):
    client, app, originals = api
    assert (await correct(client, {"PatientName": "Second^Try"})).status == 201
    assert (await correct(client, {"StudyDescription": "CT HEAD W/O"}, "typo")).status == 201
    r = await client.get(f"/api/v1/studies/{STUDY}/versions")
    h = await r.json()
    assert [c["reason"] for c in h["corrections"]] == ["registration error", "typo"]
    assert h["corrections"][1]["changes"] == {"StudyDescription": "CT HEAD W/O"}
    assert sorted((v["sop_instance_uid"], v["version"]) for v in h["versions"]) == sorted(
        (s, n) for s in SOPS for n in (1, 2))
    assert h["current_versions"] == {s: 3 for s in SOPS}
    base = f"/api/v1/studies/{STUDY}/series/{SERIES}/instances/{SOPS[1]}/versions"
    assert await (await client.get(f"{base}/1")).read() == originals[SOPS[1]]
    v2 = pydicom.dcmread(io.BytesIO(await (await client.get(f"{base}/2")).read()))
    assert str(v2.PatientName) == "Second^Try" and v2.StudyDescription == "CT HEAD"
    audit = app[AUDIT]
    await audit.flush()
    events = [e for e in audit.query(event_type="correction", limit=10)]
    assert [e["outcome"] for e in events] == ["success", "success"]
    assert events[0]["study_uid"] == STUDY and events[0]["object_count"] == 3
    assert orjson.loads(events[1]["detail"])["reason"] == "typo"


async def test_R_A8_bad_corrections_change_nothing(api):
    client, app, originals = api
    for changes in ({"SOPInstanceUID": "1.2.3"}, {"Modality": "MR"}, {},
                    {"StudyDate": "2024-01-01"}, {"PatientName": "x" * 500},
                    {"PatientName": "王^小"}):  # not in the default character set
        assert (await correct(client, changes)).status == 400, changes
    assert (await correct(client, {"PatientName": "A^B"}, reason="")).status == 400
    r = await client.post("/api/v1/studies/1.2.3.4.5/corrections",
                          json={"changes": {"PatientName": "A^B"}, "reason": "r"})
    assert r.status == 404
    assert await wado(client, SOPS[0]) == originals[SOPS[0]]
    h = await (await client.get(f"/api/v1/studies/{STUDY}/versions")).json()
    assert h["corrections"] == [] and h["versions"] == []


async def test_R_A8_scrub_knows_versions_and_delete_takes_them(api):
    client, app, originals = api
    assert (await correct(client, {"PatientName": "Right^Name"})).status == 201
    archive = app[ARCHIVE]
    report = Scrubber(archive.store, archive.catalogue, orphan_grace_s=0).run()
    assert report.ok and report.orphans == 0          # kept versions are not orphans
    old = [(await (await client.get(
        f"/api/v1/studies/{STUDY}/series/{SERIES}/instances/{s}/versions/1")).read())
        for s in SOPS]
    assert old == [originals[s] for s in SOPS]
    assert (await client.delete(f"/dicom-web/studies/{STUDY}")).status == 204
    report = Scrubber(archive.store, archive.catalogue, orphan_grace_s=0).run()
    assert report.orphans == 0 and report.objects == 0  # every version's blob went too


async def test_R_A8_R_A6_scrub_verifies_and_repairs_kept_versions(api, tmp_path):
    client, app, originals = api
    assert (await correct(client, {"PatientName": "Right^Name"})).status == 201
    archive = app[ARCHIVE]
    import hashlib
    sha = hashlib.sha256(originals[SOPS[0]]).hexdigest()
    damaged = archive.store.copies[1].local_path(sha)
    with open(damaged, "r+b") as fh:
        fh.seek(300)
        fh.write(b"\xff\xfe")
    report = Scrubber(archive.store, archive.catalogue, orphan_grace_s=0).run()
    assert report.objects == 6 and not report.ok           # 3 current + 3 originals
    assert [(f.sha256, f.state) for f in report.findings] == [(sha, "DIFFERING_CHECKSUM")]
    report = Scrubber(archive.store, archive.catalogue, repair=True).run()
    assert report.repairs == 1 and report.ok
    with open(damaged, "rb") as fh:
        assert fh.read() == originals[SOPS[0]]


async def test_R_A8_patient_merge_corrects_every_study_and_keeps_history(api):
    client, app, originals = api
    other = "1.2.826.0.1.3680043.9.11.2"
    body, ctype = multipart([make_instance(study=other, series=other + ".1",
                                           sop=other + ".1", seed=9, PatientID="PID-TRUE",
                                           PatientName="True^Patient",
                                           PatientBirthDate="19800202")])
    assert (await client.post("/dicom-web/studies", data=body,
                              headers={"Content-Type": ctype})).status == 200
    r = await client.post("/api/v1/patients/merge", json={
        "from": {"PatientID": "PID-OLD"}, "to": {"PatientID": "PID-TRUE"},
        "reason": "duplicate registration"})
    assert r.status == 201, await r.text()
    assert (await r.json())["studies"] == {STUDY: 3}
    found = await (await client.get("/dicom-web/studies",
                                    params={"PatientID": "PID-TRUE"})).json()
    assert sorted(f["0020000D"]["Value"][0] for f in found) == sorted([STUDY, other])
    cur = pydicom.dcmread(io.BytesIO(await wado(client, SOPS[0])))
    assert (str(cur.PatientName), cur.PatientBirthDate) == ("True^Patient", "19800202")
    base = f"/api/v1/studies/{STUDY}/series/{SERIES}/instances/{SOPS[0]}/versions"
    assert await (await client.get(f"{base}/1")).read() == originals[SOPS[0]]
    assert app[ARCHIVE].catalogue.counts()["patients"] == 1
    r = await client.post("/api/v1/patients/merge", json={
        "from": {"PatientID": "PID-OLD"}, "to": {"PatientID": "PID-TRUE"}, "reason": "x"})
    assert r.status == 404                       # nothing left under the old record


async def test_R_A8_BI26_resent_original_never_deletes_the_kept_version(api):
    client, app, originals = api
    assert (await correct(client, {"PatientName": "Right^Name"})).status == 201
    archive = app[ARCHIVE]
    import hashlib
    sha = hashlib.sha256(originals[SOPS[0]]).hexdigest()
    os_path = archive.store.copies[0].local_path(sha)
    import os
    os.unlink(os_path)  # version 1 lost one copy
    body, ctype = multipart([originals[SOPS[0]]])
    r = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert r.status == 409                     # BI-26: same UID, other content
    assert all(c.exists(sha) for c in archive.store.copies)   # kept, even restored
    base = f"/api/v1/studies/{STUDY}/series/{SERIES}/instances/{SOPS[0]}/versions"
    assert await (await client.get(f"{base}/1")).read() == originals[SOPS[0]]
