"""pacsd-efilm (R-C1): a film sheet from a study, key images from a Key Object Selection
or picked evenly, per-modality layout and window presets, stored back through the one
ingest path as Secondary Capture + Encapsulated PDF in a new series of the same study;
the stored pixels equal the PNG."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from dicomgen import make_dataset, multipart, to_part10
from pacsd.config import Settings
from pacsd.plugins import Plugins
from pacsd.web import create_app
from sharehelpers import phantom

SHOTS = Path(__file__).resolve().parents[1] / "browser" / "screenshots"


@pytest.fixture
async def client(aiohttp_client, tmp_path, with_plugin_site):
    settings = Settings()
    settings.server.data_dir = str(tmp_path)
    settings.plugins = {"efilm": {"hospital": "市第一人民医院 City Hospital"}}
    plugins = Plugins()
    plugins.load(settings.plugins)                       # entry points: pip-installed
    assert "efilm" in plugins.names()
    return await aiohttp_client(create_app(settings, plugins))


async def stow(client, datasets):
    body, ctype = multipart([to_part10(d) for d in datasets])
    r = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert r.status == 200, await r.text()


def ct_study(n: int = 8) -> list[Dataset]:
    study, series = generate_uid(), generate_uid()
    out = []
    for i in range(n):
        ds = make_dataset(study=study, series=series, rows=128, columns=128, seed=i,
                          Modality="CT", PatientName="Wang^Wu", PatientID="P9",
                          StudyDescription="Chest CT", AccessionNumber="ACC42",
                          StudyDate="20260301", InstitutionName="Scanner Hospital")
        ds.InstanceNumber = i + 1
        ds.PixelData = phantom(128, i % 4)
        ds.PixelSpacing = [2.5, 2.5]
        out.append(ds)
    return out


def kos_for(images: list[Dataset]) -> Dataset:
    ds = make_dataset(study=images[0].StudyInstanceUID, series=generate_uid(),
                      sop=generate_uid(), Modality="KO", PatientID="P9")
    for kw in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
               "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
               "RescaleIntercept", "RescaleSlope"):
        if kw in ds:
            delattr(ds, kw)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.59"
    ds.SeriesNumber = 99
    refs = Sequence()
    for im in images:
        r = Dataset()
        r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID = im.SOPClassUID, im.SOPInstanceUID
        refs.append(r)
    ser = Dataset()
    ser.SeriesInstanceUID, ser.ReferencedSOPSequence = images[0].SeriesInstanceUID, refs
    st = Dataset()
    st.StudyInstanceUID, st.ReferencedSeriesSequence = images[0].StudyInstanceUID, Sequence([ser])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([st])
    return ds


async def test_R_C1_efilm_stored_as_sc_and_pdf_in_the_study_pixels_equal_png(client):
    images = ct_study(8)
    await stow(client, images)
    study = images[0].StudyInstanceUID
    r = await client.post(f"/api/v1/plugins/efilm/studies/{study}?layout=2x2")
    assert r.status == 201, await r.text()
    made = await r.json()
    assert made["layout"] == "2x2" and made["window"] == "soft-tissue"
    assert made["key_source"] == "even"                       # no KOS: picked evenly
    assert made["key_images"] == [images[i].SOPInstanceUID for i in (0, 2, 5, 7)]
    # QIDO: the new series is under the same study, with an SC and a PDF.
    r = await client.get(f"/dicom-web/studies/{study}/series")
    series = {s["0020000E"]["Value"][0]: s for s in await r.json()}
    assert made["series"] in series and len(series) == 2
    r = await client.get(f"/dicom-web/studies/{study}/series/{made['series']}/instances")
    sops = {i["00080018"]["Value"][0]: i["00080016"]["Value"][0] for i in await r.json()}
    assert sops == {made["secondary_capture"]: "1.2.840.10008.5.1.4.1.1.7",
                    made["encapsulated_pdf"]: "1.2.840.10008.5.1.4.1.1.104.1"}
    # The SC's pixels are the PNG's.
    r = await client.get(f"/api/v1/plugins/efilm/studies/{study}/preview.png?layout=2x2")
    assert r.status == 200 and r.headers["Content-Type"] == "image/png"
    png = await r.read()
    r = await client.get(f"/dicom-web/studies/{study}/series/{made['series']}/instances/"
                         f"{made['secondary_capture']}", headers={"Accept":
                         'multipart/related; type="application/dicom"'})
    body = await r.read()
    start = body.index(b"DICM") - 128
    sc = dcmread(io.BytesIO(body[start:]))
    assert sc.StudyInstanceUID == study and sc.PatientID == "P9"
    assert sc.PhotometricInterpretation == "MONOCHROME2" and sc.BurnedInAnnotation == "YES"
    assert sc.ImageDisplayFormat == "STANDARD\\2,2"   # the layout, for tile zoom (R-C4)
    film = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert sc.pixel_array.shape == film.shape == (2000, 1600)
    assert np.array_equal(sc.pixel_array, film)
    assert film.std() > 10                                    # not a blank sheet
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "efilm-ct-2x2.png").write_bytes(png)
    # The PDF is a real PDF, encapsulated.
    r = await client.get(f"/dicom-web/studies/{study}/series/{made['series']}/instances/"
                         f"{made['encapsulated_pdf']}/metadata")
    meta = (await r.json())[0]
    assert meta["00420012"]["Value"] == ["application/pdf"]
    r = await client.get(f"/api/v1/plugins/efilm/studies/{study}/preview.pdf?layout=2x2")
    assert (await r.read()).startswith(b"%PDF")


async def test_R_C1_key_images_from_kos_default_layout_and_presets(client):
    images = ct_study(8)
    await stow(client, images + [kos_for([images[6], images[1]])])
    study = images[0].StudyInstanceUID
    r = await client.post(f"/api/v1/plugins/efilm/studies/{study}?window=lung&layout=1x2")
    made = await r.json()
    assert made["key_source"] == "key-object-selection" and made["window"] == "lung"
    assert made["key_images"] == [images[6].SOPInstanceUID, images[1].SOPInstanceUID]
    # A second film does not film the first one; default CT layout 4x5 holds all 8.
    r = await client.post(f"/api/v1/plugins/efilm/studies/{study}")
    made = await r.json()
    assert made["layout"] == "4x5" and len(made["key_images"]) == 2
    for bad in ("layout=6x6", "layout=0x1", "layout=four", "window=nope", "mask=some"):
        r = await client.post(f"/api/v1/plugins/efilm/studies/{study}?{bad}")
        assert r.status == 400, bad
    r = await client.post(f"/api/v1/plugins/efilm/studies/1.2.3.4.999")
    assert r.status == 404


async def test_R_C1_patient_name_is_masked_per_policy(client):
    images = ct_study(2)
    await stow(client, images)
    from pacsd_efilm import sheet
    assert sheet.mask_name("Wang^Wu", "partial") == "W***"
    assert sheet.mask_name("王小明", "partial") == "王**"
    assert sheet.mask_name("Wang^Wu", "full") == "***"
    assert sheet.mask_name("Wang^Wu", "none") == "Wang Wu"


async def test_R_C1_efilm_by_rule_when_the_study_becomes_stable(aiohttp_client, tmp_path,
                                                                with_plugin_site):
    import asyncio

    settings = Settings()
    settings.server.data_dir = str(tmp_path)
    settings.server.stable_age_s = 0.1
    settings.plugins = {"efilm": {"auto": True}}
    plugins = Plugins()
    plugins.load(settings.plugins)
    client = await aiohttp_client(create_app(settings, plugins))
    images = ct_study(3)
    await stow(client, images)
    study = images[0].StudyInstanceUID
    events = []
    for _ in range(600):               # bounded wait: audited once SC and PDF are stored
        r = await client.get("/api/v1/audit", params={"type": "efilm.created"})
        events = (await r.json())["events"]
        if events:
            break
        await asyncio.sleep(0.05)
    assert [e["detail"]["rule"] for e in events] == ["study-stable"]
    r = await client.get(f"/dicom-web/studies/{study}/series", params={"Modality": "OT"})
    films = await r.json()
    assert len(films) == 1 and films[0]["0008103E"]["Value"] == ["E-film 电子胶片"]
    assert films[0]["0020000E"]["Value"] == [events[0]["detail"]["series"]]
    assert events[0]["study_uid"] == study
