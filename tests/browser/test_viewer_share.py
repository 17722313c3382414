"""The doctor shares the image being viewed (R-D1, R-C5; issue 8 item 3; SEC-1): a real
``pacsd serve`` with the pacsd-share plugin installed and [security] enabled, a
radiologist signed in to the web viewer; the Share button makes a link for the active
viewport's study / series / SOP with the phone's last digits as second factor, shows the
QR code, the link and its expiry; a fresh phone-sized browser opens the link, answers the
digits and lands on that very image. Screenshots go to tests/browser/screenshots/."""
from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
import requests
from PIL import Image
from pacsd_server import Server
from pydicom.uid import generate_uid

from dicomgen import multipart
from pluginsite import plugin_site  # noqa: F401  (fixture)
from sharehelpers import PASSWORD, login, pacsd
from test_viewer import wait_rendered
from viewerdata import ROOT_DIR, SHOTS, ct_series, shot

PHONE = "138-0013-4321"
SHOWN = 3            # the doctor scrolls to image 4 of 10 and shares that one


@pytest.fixture(scope="module")
def site(tmp_path_factory, viewer_dist, plugin_site):  # noqa: F811
    tmp = tmp_path_factory.mktemp("viewer-share")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(ROOT_DIR)])}
    data = tmp / "data"
    data.mkdir()
    conf = tmp / "pacsd.toml"
    conf.write_text(f'[server]\nviewer_dir = "{viewer_dist}"\n[security]\nenabled = true\n')
    pw = tmp / "pw"
    pw.write_text(PASSWORD + "\n")
    # A radiologist (no TOTP needed; administrators would need one, MLPS 4).
    made = pacsd(env, "user", "add", "dr-lin", "--role", "radiologist", "--password-file",
                 str(pw), "--data-dir", str(data), "--config", str(conf))
    assert made.returncode == 0, made.stderr
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = env["PYTHONPATH"]   # the server finds the plugin first
    try:
        srv = Server(str(data), "--config", str(conf))
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old
    try:
        srv.staff = login(srv.url, "dr-lin")
        srv.study = generate_uid()
        body, ctype = multipart(ct_series(srv.study, name="Lin^Alice", pid="VS-001",
                                          date="20250310", desc="CT chest"))
        r = srv.staff.post(srv.url + "/dicom-web/studies", data=body,
                           headers={"Content-Type": ctype})
        assert r.status_code == 200, r.text
        yield srv
    finally:
        srv.stop()


def _sign_in_and_open(page, site) -> None:
    page.goto(site.url + "/viewer/")
    page.wait_for_selector("#login[open]")
    page.fill('#login [name="username"]', "dr-lin")
    page.fill('#login [name="password"]', PASSWORD)
    page.click('#login button[type="submit"]')
    page.wait_for_selector("#studies tbody tr")
    page.click("#studies tbody tr")
    page.wait_for_function(f"document.body.dataset.loaded === '{site.study}'")
    wait_rendered(page, 0)


def _qr_pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L")) > 127


def test_R_D1_R_C5_SEC_1_doctor_shares_the_viewed_image_by_qr_and_phone_opens_it(
        chromium, site):
    import segno

    ctx = chromium.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        _sign_in_and_open(page, site)
        # The button appears once the viewer knows the share API answers.
        page.wait_for_selector("#share:not([hidden])")
        assert page.get_attribute("#share", "data-state") == "available"
        page.evaluate("n => window.pacsdViewer.setImageIndex(0, n)", SHOWN)
        page.wait_for_function(
            "n => document.querySelector('#grid .pane .overlay').dataset.image === String(n)",
            arg=SHOWN + 1)
        image = page.evaluate("window.pacsdViewer.currentImage()")
        assert image["studyUid"] == site.study

        page.click("#share")
        page.wait_for_selector("#share-dialog[open]")
        assert page.is_disabled('#share-dialog [name="phone"]')   # birth date by default
        page.check('#share-dialog input[value="phone"]')
        page.fill('#share-dialog [name="phone"]', "12")
        page.click("#share-dialog .create")
        assert "phone" in page.inner_text("#share-dialog .error")  # too few digits: refused
        page.fill('#share-dialog [name="phone"]', PHONE)
        page.fill('#share-dialog [name="days"]', "7")
        shot(page, "viewer-share-1-ask")
        page.click("#share-dialog .create")
        page.wait_for_selector('#share-dialog[data-state="shared"]')
        page.wait_for_function(
            "() => { const i = document.querySelector('#share-dialog img.qr');"
            " return i.complete && i.naturalWidth > 0; }")
        assert page.is_visible("#share-dialog img.qr")
        url = page.input_value("#share-dialog input.url")
        assert url.startswith(site.url + "/plugins/share/s/")
        assert "Expires" in page.inner_text("#share-dialog .expires")
        shot(page, "viewer-share-2-qr")

        # The QR code shown is the one of the link shown (no QR decoder here: the same
        # link encoded by segno with the plugin's default parameters gives the same image).
        src = page.get_attribute("#share-dialog img.qr", "src")
        assert src.startswith("data:image/png;base64,")
        shown = _qr_pixels(base64.b64decode(src.split(",", 1)[1]))
        ref = io.BytesIO()
        segno.make(url, error="m", micro=False).save(ref, kind="png", scale=8, border=4)
        assert np.array_equal(shown, _qr_pixels(ref.getvalue()))

        # The server lists that link for the study, focused on the image shown.
        listed = site.staff.get(site.url + "/api/v1/plugins/share/links",
                                params={"study": site.study}).json()["links"]
        assert len(listed) == 1
        link = listed[0]
        assert str(link["id"]) == page.get_attribute("#share-dialog", "data-link")
        assert link["focus"] == {"series": image["seriesUid"], "sop": image["sopUid"]}
        assert link["studies"] == [site.study]
        assert str(link["expires_at"]) == page.get_attribute("#share-dialog", "data-expires")

        page.click("#share-dialog .copy")
        page.wait_for_function(
            "document.querySelector('#share-dialog .copy').textContent === 'Copied'")
        page.click("#share-dialog .close")
        assert not page.is_visible("#share-dialog")
        assert errors == []
    finally:
        ctx.close()

    # A fresh phone-sized browser opens the link: the digits are asked, then that image.
    phone = chromium.new_context(viewport={"width": 390, "height": 844},
                                 device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        pg = phone.new_page()
        pg.goto(url)
        assert pg.url == site.url + "/plugins/share/"        # token-free (SEC-10)
        assert "CT chest" not in pg.content()                # nothing before the factor
        pg.fill("input#answer", "4321")
        pg.click("button[type=submit]")
        pg.wait_for_url("**/series/**")
        assert image["seriesUid"] in pg.url
        img = pg.locator("img#image")
        assert f"/{image['sopUid']}/rendered" in img.get_attribute("src")
        assert f"第 {SHOWN + 1} / 10 张" in pg.inner_text(".nav")
        for _ in range(300):     # bounded; the page's CSP forbids wait_for_function
            if pg.evaluate("(() => { const i = document.getElementById('image');"
                           " return i.complete && i.naturalWidth > 0; })()"):
                break
            pg.wait_for_timeout(100)
        else:
            pytest.fail("the shared image did not load on the phone")
        pg.screenshot(path=str(SHOTS / "viewer-share-3-phone.png"))
        # SEC-1: the link reaches only its study; DICOMweb stays closed to the phone.
        assert requests.get(site.url + "/dicom-web/studies", timeout=5).status_code == 401
    finally:
        phone.close()


@pytest.mark.parametrize("status,shown", [(404, False), (403, True)])
def test_R_D1_R_C5_SEC_1_share_absent_without_plugin_and_refusal_explained(
        chromium, site, status, shown):
    """Without the plugin (its route answers 404, as pacsd does for an unknown route) the
    button stays hidden; a refusal (403) is shown as a message, not a broken dialog."""
    ctx = chromium.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    ctx.route("**/api/v1/plugins/share/**",
              lambda route: route.fulfill(status=status, body='{"reason": "refused"}',
                                          content_type="application/json"))
    try:
        _sign_in_and_open(page, site)
        page.wait_for_function("document.getElementById('share').dataset.state")
        assert page.is_visible("#share") is shown
        if shown:
            page.click("#share")
            page.click("#share-dialog .create")   # birth date, 30 days: the defaults
            page.wait_for_selector('#share-dialog[data-state="error"]')
            assert "not allowed" in page.inner_text("#share-dialog .error")
            assert not page.is_visible("#share-dialog img.qr")
            shot(page, "viewer-share-4-refused")
        else:
            shot(page, "viewer-share-5-no-plugin")
    finally:
        ctx.close()
