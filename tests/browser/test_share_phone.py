"""The patient's phone flow in headless Chromium at a phone viewport (390x844): open the
share link, answer the second factor, see the exam list, thumbnails and an image, then
lose access when the link is revoked (R-C3, R-C4 first slice, R-C5; SEC-6, SEC-10).
Screenshots go to tests/browser/screenshots/ (git-ignored) for a person to look at."""
from __future__ import annotations

from pathlib import Path

import pytest

from pluginsite import plugin_site  # noqa: F401  (fixture)
from sharehelpers import create_link, setup_site

SHOTS = Path(__file__).parent / "screenshots"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def site(plugin_site, tmp_path_factory):  # noqa: F811
    srv, site = setup_site(tmp_path_factory.mktemp("phone"), plugin_site)
    try:
        yield site
    finally:
        srv.stop()


@pytest.fixture
def phone():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = browser.new_context(viewport={"width": 390, "height": 844},
                                      device_scale_factor=2, is_mobile=True,
                                      has_touch=True, locale="zh-CN")
        try:
            yield context
        finally:
            context.close()
            browser.close()


def _images_loaded(page) -> bool:
    return page.evaluate("Array.from(document.images).every(i => i.complete && "
                         "i.naturalWidth > 0)")


def test_R_C3_R_C4_SEC_10_phone_opens_link_verifies_and_views_images(site, phone):
    link = create_link(site, [site.studies["A"][0]])
    page = phone.new_page()
    page.goto(link["url"])
    assert page.url == site.url + "/plugins/share/"          # token-free (SEC-10)
    assert page.locator("input#answer").is_visible()
    assert "Chest CT" not in page.content()
    page.screenshot(path=str(SHOTS / "share-01-verify.png"))
    cookie = [c for c in phone.cookies() if c["name"] == "pacsd_share"][0]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

    page.fill("input#answer", "19990101")
    page.click("button[type=submit]")
    assert page.locator(".err").is_visible()
    page.screenshot(path=str(SHOTS / "share-02-wrong-answer.png"))

    page.fill("input#answer", "19800131")
    page.click("button[type=submit]")
    page.wait_for_url(site.url + "/plugins/share/exams")
    assert page.locator("a.card").count() == 1
    assert "Chest CT" in page.inner_text("main") and "Knee MR" not in page.content()
    page.screenshot(path=str(SHOTS / "share-03-exams.png"))

    page.click("a.card")
    page.wait_for_load_state("load")
    assert page.locator(".tile img").count() == 1
    assert _images_loaded(page)
    page.screenshot(path=str(SHOTS / "share-04-series.png"))

    page.click(".tile")
    page.wait_for_load_state("load")
    assert _images_loaded(page)
    assert "第 1 / 3 张" in page.inner_text(".nav")
    page.click("text=下一张 ›")
    page.wait_for_load_state("load")
    assert "第 2 / 3 张" in page.inner_text(".nav") and _images_loaded(page)
    page.screenshot(path=str(SHOTS / "share-05-image.png"))

    r = site.staff.delete(site.url + f"/api/v1/plugins/share/links/{link['id']}")
    assert r.status_code == 204
    resp = page.goto(link["url"])
    assert resp.status == 401 and "撤销" in page.inner_text("main")
    page.screenshot(path=str(SHOTS / "share-06-revoked.png"))
