"""The patient's phone image view and e-film zoom in headless Chromium at a phone viewport
with touch (R-C4, issue 7 item 6; R-D1 touch, issue 8 item 4): the exam page's "Images"
entry opens viewer-web's phone.html (the doctors' Cornerstone3D core) reading through the
share link's scoped DICOMweb root; window presets, drag to window, swipe to scroll, cine,
pinch zoom; the e-film zooms without steps and a double tap zooms to a tile and back.
Touch input is real: CDP Input.dispatchTouchEvent. Screenshots in tests/browser/screenshots/.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pluginsite import plugin_site  # noqa: F401  (fixture)
from sharehelpers import create_link
from test_share_phone import SHOTS, _images_loaded, phone, site  # noqa: F401  (fixtures)


def touch(page, cdp, kind, points):
    cdp.send("Input.dispatchTouchEvent", {
        "type": kind,
        "touchPoints": [{"x": x, "y": y, "id": n} for n, (x, y) in enumerate(points)]})


def gesture(page, cdp, starts, ends, steps=12):
    touch(page, cdp, "touchStart", starts)
    for k in range(1, steps + 1):
        t = k / steps
        touch(page, cdp, "touchMove", [(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)
                                       for (x0, y0), (x1, y1) in zip(starts, ends)])
    touch(page, cdp, "touchEnd", [])


def double_tap(page, cdp, x, y):
    for _ in range(2):
        touch(page, cdp, "touchStart", [(x, y)])
        touch(page, cdp, "touchEnd", [])
        page.wait_for_timeout(80)


def until(page, js, arg=None, tries=200):
    """Poll a JS predicate (bounded); True once it holds."""
    for _ in range(tries):
        if page.evaluate(js, arg):
            return True
        page.wait_for_timeout(100)
    return False


def tap_mode(page, mode: str) -> None:
    """Tap a mode button as a person does, not within Chromium's double-tap window of the
    last touch on the image (a tap right after a touchEnd can be taken as the second tap
    of a double tap and give no click: seen with Chromium 156); the mode must take."""
    page.wait_for_timeout(350)
    page.tap(f'[data-mode="{mode}"]')
    assert until(page, "m => window.pacsdPhone.mode() === m", mode), mode


def pixels(page, selector) -> np.ndarray:
    png = page.locator(selector).screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)


def verified_page(site, phone, studies):  # noqa: F811
    link = create_link(site, studies)
    page = phone.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(link["url"])
    page.fill("input#answer", "19800131")
    page.click("button[type=submit]")
    page.wait_for_url(site.url + "/plugins/share/exams")
    return page, errors


def test_R_C4_R_D1_phone_image_view_window_scroll_cine_zoom(site, phone):  # noqa: F811
    A, SA, _ = site.studies["A"]
    page, errors = verified_page(site, phone, [A])
    cdp = phone.new_cdp_session(page)
    page.click("a.card")
    page.wait_for_load_state("load")
    tile = page.locator("h2:has-text('影像') + .grid a.tile")
    assert tile.get_attribute("href") == f"/viewer/phone.html#/study/{A}/series/{SA}"
    tile.click()
    assert until(page, "() => window.pacsdPhone && window.pacsdPhone.ready "
                       "&& window.pacsdPhone.rendered()"), errors
    assert page.evaluate("window.pacsdPhone.count()") == 3
    page.wait_for_timeout(300)
    box = page.locator("#vp").bounding_box()
    assert box["width"] >= 380 and box["height"] >= 500, box   # the image gets the screen
    before = pixels(page, "#vp")
    assert before.std() > 10, "the phone view is blank"
    assert "第 1 / 3 张" in page.inner_text("#info")
    page.screenshot(path=str(SHOTS / "phone-view-1-ct.png"))

    # A window preset (CT lung) changes the voi range and the picture.
    voi = page.evaluate("window.pacsdPhone.properties().voiRange")
    page.select_option("#preset", "1")
    assert until(page, "v => window.pacsdPhone.properties().voiRange.lower !== v.lower", voi)
    page.wait_for_timeout(300)
    lung = pixels(page, "#vp")
    assert np.abs(lung - before).mean() > 3, "the lung window did not change the canvas"
    assert "窗宽 W 1500" in page.inner_text("#info")
    page.screenshot(path=str(SHOTS / "phone-view-2-lung-window.png"))

    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    # Drag to window (Window mode): one finger changes width / level continuously.
    tap_mode(page, "window")
    voi = page.evaluate("window.pacsdPhone.properties().voiRange")
    gesture(page, cdp, [(cx, cy)], [(cx + 80, cy + 60)])
    assert until(page, "v => { const r = window.pacsdPhone.properties().voiRange; "
                       "return r.lower !== v.lower || r.upper !== v.upper; }", voi)

    # Swipe (Scroll mode, the default) pages through the series.
    tap_mode(page, "scroll")
    assert page.evaluate("window.pacsdPhone.imageIndex()") == 0
    gesture(page, cdp, [(cx, cy - 120)], [(cx, cy + 160)])
    assert until(page, "() => window.pacsdPhone.imageIndex() > 0")
    assert "第 1 / 3 张" not in page.inner_text("#info")
    page.screenshot(path=str(SHOTS / "phone-view-3-scrolled.png"))

    # Pinch outwards zooms in, without steps.
    zoom = page.evaluate("window.pacsdPhone.zoom()")
    gesture(page, cdp, [(cx - 30, cy), (cx + 30, cy)], [(cx - 140, cy), (cx + 140, cy)])
    assert until(page, "z => window.pacsdPhone.zoom() > z * 1.5", zoom)
    page.screenshot(path=str(SHOTS / "phone-view-4-pinched.png"))

    # Cine: play advances the frames, pause stops.
    page.tap("#cine")
    assert page.evaluate("window.pacsdPhone.cinePlaying()")
    seen = set()
    for _ in range(40):
        seen.add(page.evaluate("window.pacsdPhone.imageIndex()"))
        if len(seen) >= 3:
            break
        page.wait_for_timeout(60)
    assert len(seen) >= 2, seen
    page.screenshot(path=str(SHOTS / "phone-view-5-cine.png"))
    page.tap("#cine")
    assert not page.evaluate("window.pacsdPhone.cinePlaying()")
    stopped = page.evaluate("window.pacsdPhone.imageIndex()")
    page.wait_for_timeout(500)
    assert page.evaluate("window.pacsdPhone.imageIndex()") == stopped
    assert errors == []


def test_R_C4_SEC_1_phone_view_of_a_study_outside_the_share_is_refused(site, phone):  # noqa: F811
    """The viewer page itself cannot reach another study: its requests answer 404 and it
    says it cannot show the images; the frame request with the page's cookie is 404."""
    A = site.studies["A"][0]
    C, SC, IC = site.studies["C"]
    page, _ = verified_page(site, phone, [A])
    page.goto(site.url + f"/viewer/phone.html#/study/{C}/series/{SC}")
    assert until(page, "() => document.body.dataset.error === '404'")
    assert page.locator("#msg").is_visible()
    r = page.request.get(site.url + f"/plugins/share/dicom-web/studies/{C}/series/{SC}"
                         f"/instances/{IC}/frames/1")
    assert r.status == 404
    page.screenshot(path=str(SHOTS / "phone-view-6-out-of-scope.png"))


def test_R_C4_no_webgl_falls_back_to_the_picture_view(site, phone):  # noqa: F811
    A, SA, _ = site.studies["A"]
    page, _ = verified_page(site, phone, [A])
    page.add_init_script("HTMLCanvasElement.prototype.getContext = () => null;")
    page.goto(site.url + f"/viewer/phone.html#/study/{A}/series/{SA}")
    page.wait_for_url(site.url + f"/plugins/share/exams/{A}/series/{SA}")
    assert _images_loaded(page)
    assert "第 1 / 3 张" in page.inner_text(".nav")


def test_R_C1_R_C4_efilm_pinch_zoom_and_double_tap_to_a_tile(site, phone):  # noqa: F811
    A, _, _ = site.studies["A"]
    r = site.staff.post(site.url + f"/api/v1/plugins/efilm/studies/{A}?layout=2x2")
    assert r.status_code in (200, 201), r.text
    page, errors = verified_page(site, phone, [A])
    cdp = phone.new_cdp_session(page)
    page.goto(site.url + f"/plugins/share/exams/{A}")
    page.locator("h2:has-text('电子胶片') + .grid a.tile").click()
    page.wait_for_load_state("load")
    assert _images_loaded(page)
    film = page.locator("#film")
    assert film.get_attribute("data-cols") == "2" and film.get_attribute("data-rows") == "2"
    assert film.get_attribute("data-scale") == "1.000"
    page.screenshot(path=str(SHOTS / "efilm-zoom-1-sheet.png"))
    box = film.bounding_box()
    # Double tap on the upper right tile (the second key image): zoom to it.
    x, y = box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.4
    double_tap(page, cdp, x, y)
    assert until(page, "() => Number(document.getElementById('film').dataset.scale) > 1.5")
    assert film.get_attribute("data-tile") == "0,1"
    scale = float(film.get_attribute("data-scale"))
    assert 1.7 < scale < 2.3, scale                      # a 2x2 tile fills the width
    page.wait_for_timeout(400)
    page.screenshot(path=str(SHOTS / "efilm-zoom-2-tile.png"))
    # Double tap again: back to the whole sheet.
    double_tap(page, cdp, x, y)
    assert until(page, "() => document.getElementById('film').dataset.scale === '1.000'")
    # Pinch: continuous zoom (no fixed steps), follows the fingers.
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    gesture(page, cdp, [(cx - 40, cy), (cx + 40, cy)], [(cx - 70, cy), (cx + 70, cy)])
    s1 = float(film.get_attribute("data-scale"))
    assert 1.5 < s1 < 2.0, s1                            # 140/80 = 1.75
    gesture(page, cdp, [(cx - 40, cy), (cx + 40, cy)], [(cx - 50, cy), (cx + 50, cy)])
    s2 = float(film.get_attribute("data-scale"))
    assert abs(s2 - s1 * 1.25) < 0.1, (s1, s2)
    page.screenshot(path=str(SHOTS / "efilm-zoom-3-pinched.png"))
    assert errors == []
