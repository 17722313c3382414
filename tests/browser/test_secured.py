"""The viewer against a pacsd with [security] enabled (R-D1, R-E1, SEC-5..7): its files
load without a login, the first DICOMweb 401 asks the doctor to sign in, and from then on
every request — study list, thumbnails, metadata, image frames — carries the session's
Bearer token, so pixels render only for an authorised user."""
from __future__ import annotations

import subprocess
import sys

import pytest
import requests
from pacsd_server import Server
from pydicom.uid import generate_uid

from dicomgen import multipart
from test_viewer import canvas_pixels, wait_rendered
from viewerdata import ROOT_DIR, ct_series, shot

PASSWORD = "Correct-Horse-9"


def pacsd(*args: str) -> None:
    p = subprocess.run([sys.executable, "-m", "pacsd.cli", *args], capture_output=True,
                       text=True, timeout=60, cwd=ROOT_DIR)
    assert p.returncode == 0, p.stderr


@pytest.fixture(scope="module")
def secured(tmp_path_factory, viewer_dist):
    data = tmp_path_factory.mktemp("pacsd-secured")
    conf = data / "pacsd.toml"
    conf.write_text(f'[server]\nviewer_dir = "{viewer_dist}"\n[security]\nenabled = true\n')
    pw = data / "pw"
    pw.write_text(PASSWORD + "\n")
    common = ["--data-dir", str(data), "--config", str(conf), "--password-file", str(pw)]
    # Uploads as an integration account (administrators need a TOTP code, MLPS 4).
    pacsd("user", "add", "uploader", "--role", "integration", *common)
    pacsd("user", "add", "dr-lin", "--role", "radiologist", *common)
    srv = Server(str(data), "--config", str(conf))
    try:
        login = requests.post(srv.url + "/api/v1/auth/login", timeout=10,
                              json={"username": "uploader", "password": PASSWORD})
        token = login.json()["token"]
        study = generate_uid()
        body, ctype = multipart(ct_series(study, name="Lin^Alice", pid="VW-001",
                                          date="20250310", desc="CT chest", slices=3))
        r = requests.post(srv.url + "/dicom-web/studies", data=body, timeout=60,
                          headers={"Content-Type": ctype, "Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        srv.study = study
        yield srv
    finally:
        srv.stop()


def test_r_d1_secured_viewer_signs_in_then_renders(chromium, secured):
    ctx = chromium.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    try:
        assert requests.get(secured.url + "/dicom-web/studies", timeout=5).status_code == 401
        page.goto(secured.url + "/viewer/")
        page.wait_for_selector("#login[open]")
        shot(page, "secured-login")
        page.fill('#login [name="username"]', "dr-lin")
        page.fill('#login [name="password"]', "wrong-password-1")
        page.click('#login button[type="submit"]')
        page.wait_for_function("document.querySelector('#login .error').textContent !== ''")
        assert page.is_visible("#login")
        page.fill('#login [name="password"]', PASSWORD)
        page.click('#login button[type="submit"]')
        page.wait_for_selector("#studies tbody tr")
        assert page.get_attribute("#status", "data-total") == "1"
        page.wait_for_function(
            "() => { const i = document.querySelector('img.thumb');"
            " return i && i.complete && i.naturalWidth > 0; }")
        page.click("#studies tbody tr")
        page.wait_for_function(f"document.body.dataset.loaded === '{secured.study}'")
        wait_rendered(page, 0)
        assert canvas_pixels(page).std() > 10
        shot(page, "secured-viewer")
        # The session ends while reading: the next frame answers 401, the viewer asks to
        # sign in again and then shows the image the doctor scrolled to.
        token = page.evaluate("sessionStorage.getItem('pacsd.token')")
        r = requests.post(secured.url + "/api/v1/auth/logout", timeout=5,
                          headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 204
        x, y = page.evaluate("window.pacsdViewer.imageToPage(0, 64, 64)")
        page.mouse.move(x, y)
        page.mouse.wheel(0, 120)
        page.wait_for_selector("#login[open]")
        page.fill('#login [name="username"]', "dr-lin")
        page.fill('#login [name="password"]', PASSWORD)
        page.click('#login button[type="submit"]')
        page.wait_for_function("t => sessionStorage.getItem('pacsd.token') !== t", arg=token)
        # The overlay's image number follows what was actually rendered.
        page.wait_for_function(
            "() => { const o = document.querySelector('#grid .pane .overlay');"
            " return Number(o.dataset.image) > 1"
            " && Number(o.dataset.image) === window.pacsdViewer.imageIndex(0) + 1; }")
    finally:
        ctx.close()
