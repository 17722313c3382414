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
    """Every image on the page decoded (lazy ones scrolled into view first)."""
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    # Polled with evaluate (wait_for_function would eval() a string, which the pages'
    # Content-Security-Policy forbids); bounded.
    for _ in range(300):
        if page.evaluate("Array.from(document.images).every(i => i.complete && "
                         "i.naturalWidth > 0)"):
            break
        page.wait_for_timeout(100)
    else:
        return False
    page.evaluate("window.scrollTo(0, 0)")
    return True


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

    # The tile opens the phone image view (test_share_phone_viewer.py); its picture
    # view (server-rendered, the fallback without WebGL) is one tap away there.
    A, SA, _ = site.studies["A"]
    assert page.locator(".tile").get_attribute("href") == \
        f"/viewer/phone.html#/study/{A}/series/{SA}"
    page.goto(site.url + f"/plugins/share/exams/{A}/series/{SA}")
    assert _images_loaded(page)
    assert "第 1 / 3 张" in page.inner_text(".nav")
    page.click("text=下一张 ›")
    page.wait_for_load_state("load")
    assert "第 2 / 3 张" in page.inner_text(".nav") and _images_loaded(page)
    page.screenshot(path=str(SHOTS / "share-05-image.png"))
    # R-C4: a swipe to the left shows the next image.
    page.evaluate("""() => {
        const t = (x) => new Touch({identifier: 1, target: document.body, clientX: x,
                                    clientY: 400});
        document.dispatchEvent(new TouchEvent('touchstart', {touches: [t(300)],
                                                             changedTouches: [t(300)]}));
        document.dispatchEvent(new TouchEvent('touchend', {touches: [],
                                                           changedTouches: [t(120)]}));
    }""")
    page.wait_for_url("**?i=2")
    assert "第 3 / 3 张" in page.inner_text(".nav")

    r = site.staff.delete(site.url + f"/api/v1/plugins/share/links/{link['id']}")
    assert r.status_code == 204
    resp = page.goto(link["url"])
    assert resp.status == 401 and "撤销" in page.inner_text("main")
    page.screenshot(path=str(SHOTS / "share-06-revoked.png"))


def test_R_C1_R_C2_R_C4_R_B5_report_sms_link_opens_efilm_and_report_on_the_phone(
        site, phone):
    """The issue's end-to-end path: a stored study gets an e-film, a final report with the
    patient's phone; the test SMS channel prints the link (server log); the phone opens
    it, answers with the phone's last digits and sees report, e-film and images."""
    import io
    import re
    import time

    from PIL import Image

    A = site.studies["A"][0]
    r = site.staff.post(site.url + f"/api/v1/plugins/efilm/studies/{A}?layout=2x2")
    assert r.status_code == 201, r.text
    out = io.BytesIO()
    Image.new("RGB", (600, 800), "white").save(out, format="PDF")
    r = site.staff.post(site.url + f"/api/v1/plugins/reports/studies/{A}",
                        params={"status": "final", "phone": "13800134321"},
                        data=out.getvalue(), headers={"Content-Type": "application/pdf"})
    assert r.status_code == 201, r.text
    log = site.data / "server.log"
    found = None
    for _ in range(300):                                     # bounded: the send is async
        found = re.search(r"TEST SMS to 138\*\*\*\*4321: .*?(http\S+)", log.read_text())
        if found:
            break
        time.sleep(0.05)
    assert found, "the test SMS channel printed no link"
    url = found.group(1)
    page = phone.new_page()
    page.goto(url)
    assert "手机号" in page.inner_text("main")               # phone digits asked
    page.fill("input#answer", "4321")
    page.click("button[type=submit]")
    page.wait_for_url(site.url + "/plugins/share/exams")
    page.click("a.card")
    page.wait_for_load_state("load")
    main = page.inner_text("main")
    assert "报告" in main and "电子胶片" in main and "影像" in main
    assert page.locator("a.report").count() == 1
    assert _images_loaded(page)
    page.screenshot(path=str(SHOTS / "share-07-exam-with-report-and-efilm.png"),
                    full_page=True)
    href = page.locator("a.report").get_attribute("href")
    pdf = page.request.get(site.url + href)                  # the page's cookies
    assert pdf.status == 200 and pdf.body() == out.getvalue()
    page.locator("h2:has-text('电子胶片') + .grid a.tile").click()
    page.wait_for_load_state("load")
    assert _images_loaded(page)
    size = page.evaluate("[document.images[0].naturalWidth, document.images[0].naturalHeight]")
    assert size == [1600, 2000]                              # the stored film sheet
    page.screenshot(path=str(SHOTS / "share-08-efilm.png"))


def _sms(site, pattern: str, after: int = 0):
    """The text the test SMS channel printed to the server log (bounded wait)."""
    import re
    import time

    log = site.data / "server.log"
    for _ in range(300):
        found = re.search(pattern, log.read_text()[after:])
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"the test SMS channel printed nothing like {pattern}")


def test_R_C3_self_enrolment_card_phone_and_sms_code_in_a_phone_browser(site, phone):
    """R-C3: card number + phone + SMS code (printed by the test SMS channel) open the
    patient's space on the phone; a wrong code is refused; every attempt audited."""
    r = site.staff.put(site.url + "/api/v1/plugins/share/patients/P1",
                       json={"phone": "13912345678", "cards": ["JZK-000123"]})
    assert r.status_code == 204, r.text
    start = len((site.data / "server.log").read_text())
    page = phone.new_page()
    page.goto(site.url + "/plugins/share/enrol")
    assert "就诊卡号" in page.inner_text("main") and "card number" in page.inner_text("main")
    page.fill("input#card", "JZK-000123")
    page.fill("input#phone", "139 1234 5678")
    page.screenshot(path=str(SHOTS / "enrol-01-card-phone.png"))
    page.click("button[type=submit]")
    page.wait_for_url(site.url + "/plugins/share/enrol/code")
    code = _sms(site, r"TEST SMS to 139\*\*\*\*5678: .*?(\d{6})", start).group(1)
    page.fill("input#code", "000000" if code != "000000" else "111111")
    page.click("button[type=submit]")
    assert page.locator(".err").is_visible()
    page.screenshot(path=str(SHOTS / "enrol-02-wrong-code.png"))
    page.fill("input#code", code)
    page.click("button[type=submit]")
    page.wait_for_url(site.url + "/plugins/share/exams")
    main = page.inner_text("main")
    assert "Chest CT" in main and "Knee MR" in main and "Other CT" not in main
    page.screenshot(path=str(SHOTS / "enrol-03-my-exams.png"), full_page=True)
    events = site.auditor.get(site.url + "/api/v1/audit", params={
        "type": "share.enrol-verified"}).json()["events"]
    assert len(events) == 1 and "13912345678" not in str(events)


def test_R_C2_R_C4_R_C7_R_C8_sr_report_explained_swipe_between_exams_and_feedback(
        site, phone):
    """A final SR report (STOW) shows as text with tappable explained words; a swipe
    goes to the next exam of the patient space; feedback is stored and read by an
    administrator."""
    from dicomgen import make_dataset, multipart
    from srgen import make_sr

    A, B = site.studies["A"][0], site.studies["B"][0]
    study_ds = make_dataset(study=A, PatientID="P1", PatientName="Zhang^San",
                            PatientBirthDate="19800131", StudyDescription="Chest CT")
    sr = make_sr(study_ds, final=True, findings="右肺上叶见一小结节，直径约5mm，伴钙化。",
                 impression="考虑良性结节，建议12个月后复查。")
    body, ctype = multipart([sr])
    r = site.staff.post(site.url + "/dicom-web/studies", data=body,
                        headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text
    link = create_link(site, [A], kind="patient")
    page = phone.new_page()
    page.goto(link["url"])
    page.fill("input#answer", "19800131")
    page.click("button[type=submit]")
    page.wait_for_url(site.url + "/plugins/share/exams")
    page.goto(site.url + f"/plugins/share/exams/{A}")
    assert "1 / 2" in page.inner_text(".exnav")
    page.locator("a.report", has_text="正式报告").first.click()
    page.wait_for_load_state("load")
    assert "结节" in page.inner_text(".report-text")
    terms = page.locator("a.term")
    assert terms.count() >= 4                       # 结节 ×2, 钙化, 良性, 复查
    page.locator("a.term", has_text="钙化").first.click()
    assert page.url.endswith("#kw-calcification")
    assert page.locator("#kw-calcification").is_visible()
    assert "钙质" in page.inner_text("#kw-calcification")
    page.screenshot(path=str(SHOTS / "care-01-report-explained.png"), full_page=True)
    page.goto(site.url + f"/plugins/share/exams/{A}")
    page.evaluate("""() => {
        const t = (x) => new Touch({identifier: 1, target: document.body, clientX: x,
                                    clientY: 400});
        document.dispatchEvent(new TouchEvent('touchstart', {touches: [t(320)],
                                                             changedTouches: [t(320)]}));
        document.dispatchEvent(new TouchEvent('touchend', {touches: [],
                                                           changedTouches: [t(100)]}));
    }""")
    page.wait_for_url(site.url + f"/plugins/share/exams/{B}")
    assert "Knee MR" in page.inner_text("header") and "2 / 2" in page.inner_text(".exnav")
    page.screenshot(path=str(SHOTS / "care-02-next-exam-by-swipe.png"), full_page=True)
    page.select_option("select#rating", "5")
    page.fill("textarea#fb-text", "很方便，谢谢！Very handy.")
    page.click("#feedback button[type=submit]")
    page.wait_for_url("**?thanks=1")
    assert page.locator(".ok").is_visible()
    page.screenshot(path=str(SHOTS / "care-03-feedback-sent.png"))
    fb = site.auditor.get(site.url + "/api/v1/plugins/share/feedback")
    assert fb.status_code == 200
    [item] = fb.json()["feedback"]
    assert item["rating"] == 5 and item["study"] == B and "方便" in item["text"]
    assert site.staff.get(site.url + "/api/v1/plugins/share/feedback").status_code == 403


def test_R_C9_service_switched_off_shows_a_clear_page_and_nothing_else(site, phone):
    C = site.studies["C"][0]
    link = create_link(site, [C])
    r = site.staff.put(site.url + "/api/v1/plugins/share/service",
                       json={"patient": "P2", "enabled": False})
    assert r.status_code == 204, r.text
    page = phone.new_page()
    resp = page.goto(link["url"])
    assert resp.status == 403
    main = page.inner_text("main")
    assert "服务未开通" in main and "not enabled" in main and "Other CT" not in page.content()
    page.screenshot(path=str(SHOTS / "care-04-service-off.png"))
    site.staff.put(site.url + "/api/v1/plugins/share/service",
                   json={"patient": "P2", "enabled": True})
