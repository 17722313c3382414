"""The radiologist's flow in Firefox (issue 8 "Done when"; R-D1, R-D2, R-3.2.6, R-3.1.17,
R-C5; SEC-1): sign in, search finds the patient's CT, measure a nodule (length in mm),
read HU at a point, cardiothoracic ratio, compare with last year's CT side by side with
synchronized scrolling, share the image by QR code.

Python playwright drives only Chromium here (its Firefox build is not downloadable and
its experimental WebDriver BiDi Firefox sends commands Firefox ESR does not know), so
Debian's ``firefox-esr`` is driven over WebDriver BiDi by Puppeteer (npm
``puppeteer-core``, a viewer-web dev dependency): viewer-web/e2e/radiologist-flow.mjs acts
and reports what it read; this test starts the real pacsd (secured, with the pacsd-share
plugin), stores the studies and judges the report against the known pixel values
(viewerdata.py) exactly as the Chromium tests do. Screenshots: tests/browser/screenshots/
firefox-*.png."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from dicomgen import multipart
from pluginsite import plugin_site  # noqa: F401  (fixture)
from test_viewer_share import PHONE, _qr_pixels, site  # noqa: F401  (fixture)
from sharehelpers import PASSWORD
from viewerdata import CT, ROOT_DIR, SHOTS, ct_series, hu

FIREFOX = os.environ.get("PACSD_TEST_FIREFOX", "/usr/bin/firefox-esr")
WEB = ROOT_DIR / "viewer-web"
FLOW = WEB / "e2e" / "radiologist-flow.mjs"


@pytest.fixture(scope="module")
def puppeteer() -> str:
    if not os.access(FIREFOX, os.X_OK):
        pytest.skip(f"firefox not installed at {FIREFOX} (apt-get install firefox-esr)")
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node/npm not installed: cannot run Puppeteer (docs/viewer.md)")
    if not (WEB / "node_modules" / "puppeteer-core").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)
    return node


@pytest.fixture(scope="module")
def prior(site):  # noqa: F811
    """Last year's CT of the same patient, beside ``site.study`` (this year's)."""
    uid = generate_uid()
    body, ctype = multipart(ct_series(uid, name="Lin^Alice", pid="VS-001", date="20240305",
                                      desc="CT chest prior"))
    r = site.staff.post(site.url + "/dicom-web/studies", data=body,
                        headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text
    return uid


def _pixels(name: str) -> np.ndarray:
    return np.asarray(Image.open(SHOTS / f"{name}.png").convert("L"), dtype=np.int16)


def test_R_D1_R_D2_R_C5_radiologist_flow_in_firefox(puppeteer, site, prior):  # noqa: F811
    import segno

    SHOTS.mkdir(exist_ok=True)
    cfg = {"url": site.url, "browser": "firefox", "executablePath": FIREFOX,
           "current": site.study, "prior": prior, "user": "dr-lin", "password": PASSWORD,
           "patientName": "lin", "phone": PHONE, "shots": str(SHOTS)}
    run = subprocess.run([puppeteer, str(FLOW), json.dumps(cfg)], cwd=WEB,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert "error" not in out, out["error"] + "\nsteps: " + ", ".join(out["steps"])
    assert "Firefox" in out["userAgent"], out["userAgent"]

    # Search: both of the patient's CTs, nothing else.
    assert out["total"] == "2" and set(out["found"]) == {site.study, prior}
    # The image really rendered (software WebGL2 through EGL): not a blank pane.
    assert _pixels("firefox-2-pane").std() > 10, "the viewport is blank in Firefox"
    # Length: 80 pixels at 0.5 mm PixelSpacing.
    length = out["length"]
    assert length["unit"] == "mm" and abs(length["length"] - 80 * CT["spacing"]) < 0.6
    assert out["lengthText"] == f"Length: {length['length']:.2f} mm"
    # HU = stored x RescaleSlope + RescaleIntercept at the point read.
    probe = out["probe"]
    col, row = probe["index"][0], probe["index"][1]
    assert abs(col - 100) <= 1 and abs(row - 20) <= 1
    assert probe["unit"] == "HU" and probe["value"] == hu(row, col, 0)
    assert out["probeText"] == f"Point: {hu(row, col, 0):.1f} HU"
    # Cardiothoracic ratio 50 / 100 px.
    assert abs(out["ctr"] - 0.5) < 0.02 and out["ctrText"] == "Cardiothoracic ratio: 0.50"
    # Compare side by side, synchronized scrolling.
    assert set(out["history"]) == {site.study, prior}
    assert out["panes"] == [site.study, prior]
    assert out["syncChecked"] is True
    assert out["indices"][0] > 0 and out["indices"][0] == out["indices"][1]
    assert _pixels("firefox-5-prior-pane").std() > 10, "the prior is blank in Firefox"
    # Share by QR: the QR shown is the link's, focused on the image shown.
    assert out["shareUrl"].startswith(site.url + "/plugins/share/s/")
    src = out["qrSrc"]
    assert src.startswith("data:image/png;base64,")
    ref = io.BytesIO()
    segno.make(out["shareUrl"], error="m", micro=False).save(ref, kind="png", scale=8,
                                                             border=4)
    assert np.array_equal(_qr_pixels(base64.b64decode(src.split(",", 1)[1])),
                          _qr_pixels(ref.getvalue()))
    links = site.staff.get(site.url + "/api/v1/plugins/share/links",
                           params={"study": out["image"]["studyUid"]}).json()["links"]
    link = next(x for x in links if str(x["id"]) == out["shareLink"])
    assert link["focus"] == {"series": out["image"]["seriesUid"],
                             "sop": out["image"]["sopUid"]}
    assert out["pageErrors"] == []
