"""The viewer on a phone (R-D1 "Chrome, Firefox, phones", issue 8 item 4): a small touch
screen, real touch input through the DevTools protocol: swipe through images, pinch to
zoom."""
from __future__ import annotations

import pytest

from test_viewer import canvas_pixels, wait_rendered
from viewerdata import shot


@pytest.fixture
def phone(chromium, server):
    ctx = chromium.new_context(viewport={"width": 390, "height": 844}, has_touch=True,
                               is_mobile=True, device_scale_factor=1)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    pg.cdp = ctx.new_cdp_session(pg)
    yield pg
    ctx.close()


def touch(page, kind, points):
    page.cdp.send("Input.dispatchTouchEvent", {
        "type": kind, "touchPoints": [{"x": x, "y": y, "id": n} for n, (x, y) in enumerate(points)]})


def gesture(page, starts, ends, steps=12):
    touch(page, "touchStart", starts)
    for k in range(1, steps + 1):
        t = k / steps
        touch(page, "touchMove", [(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)
                                  for (x0, y0), (x1, y1) in zip(starts, ends)])
    touch(page, "touchEnd", [])


def centre(page):
    box = page.locator('#grid .pane[data-index="0"]').bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, box


def test_r_d1_phone_swipe_and_pinch(phone, server, studies):
    page = phone
    page.goto(f"{server.url}/viewer/#/study/{studies['current']}")
    page.wait_for_function(f"document.body.dataset.loaded === '{studies['current']}'")
    wait_rendered(page, 0)
    cx, cy, box = centre(page)
    assert box["width"] >= 300 and box["height"] >= 250, box  # the image gets the room
    assert canvas_pixels(page).std() > 10
    # The square image is fitted to the pane's width (the narrower side).
    (x0, _), (x1, _) = page.evaluate(
        "[window.pacsdViewer.imageToPage(0, 0, 0), window.pacsdViewer.imageToPage(0, 127, 0)]")
    assert (x1 - x0) * 128 / 127 > 0.95 * box["width"]
    shot(page, "phone-viewer")
    # One-finger swipe with the Scroll tool pages through the series.
    page.tap('[data-tool="StackScroll"]')
    gesture(page, [(cx, cy - 60)], [(cx, cy + 90)])
    page.wait_for_function("window.pacsdViewer.imageIndex(0) > 0")
    # Two-finger pinch outwards zooms in.
    zoom = page.evaluate("window.pacsdViewer.presentation(0).zoom")
    gesture(page, [(cx - 20, cy), (cx + 20, cy)], [(cx - 120, cy), (cx + 120, cy)])
    page.wait_for_function("z => window.pacsdViewer.presentation(0).zoom > z * 1.5", arg=zoom)
    shot(page, "phone-zoomed")
    assert page.errors == []
