"""A stock OHIF viewer with pacsd as its data source (issue 8 item 5; R-D1, R-3.1.11).

The unmodified OHIF build of npm ``@ohif/app`` (pinned in tests/ohif/ohif-app.pin,
fetched by scripts/fetch-ohif.sh) is served from its own origin, as a site would deploy
it, with only its ``app-config.js`` written for pacsd: one DICOMweb data source whose
QIDO / WADO roots are pacsd's ``/dicom-web``. pacsd allows that origin by configuration
(``[dicomweb] cors_allowed_origins``). Headless Debian chromium then checks what a
doctor using OHIF sees: the study list shows the stored studies, a study opens with its
series thumbnails and renders a non-blank image, and every request OHIF sends to pacsd
(QIDO studies / series, WADO-RS metadata, frames, thumbnails) succeeds, with no console
error and no failed request. Screenshots: tests/browser/screenshots/ohif-*.png."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from pacsd_server import Server
from PIL import Image
from pydicom.uid import generate_uid

from dicomgen import make_dataset, to_part10
from viewerdata import ROOT_DIR, SHOTS, ct_series, stow

OHIF = ROOT_DIR / "tests" / "ohif"
DIST = OHIF / "dist"


def ohif_config(dicomweb: str) -> str:
    """OHIF's documented DICOMweb data source, pointed at pacsd: QIDO-RS with includefield
    and fuzzy matching, WADO-RS metadata and frames, pacsd's rendered thumbnails."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "pacsd",
        "configuration": {
            "friendlyName": "pacsd",
            "name": "pacsd",
            "wadoUriRoot": dicomweb,
            "qidoRoot": dicomweb,
            "wadoRoot": dicomweb,
            "qidoSupportsIncludeField": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "thumbnail",
            "thumbnailRequestStrategy": "fetch",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": True,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {"routerBasename": "/", "extensions": [], "modes": [], "showStudyList": True,
              "maxNumberOfWebWorkers": 2, "showLoadingIndicator": True,
              "showWarningMessageForCrossOrigin": False,
              "defaultDataSourceName": "pacsd", "dataSources": [source]}
    return "window.config = " + json.dumps(config, indent=2) + ";\n"


class _OhifHandler(SimpleHTTPRequestHandler):
    """OHIF's dist as its deployment docs serve it: files as they are, every other path
    answered with index.html (a single-page app), app-config.js our own."""

    config = b""
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map,
                      ".wasm": "application/wasm", ".js": "text/javascript"}

    def log_message(self, *args) -> None:  # quiet
        pass

    def send_head(self):
        path = self.path.split("?", 1)[0]
        if path == "/app-config.js":
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(self.config)))
            self.end_headers()
            return io.BytesIO(self.config)
        if not Path(self.translate_path(path)).is_file():
            self.path = "/index.html"
        return super().send_head()


@pytest.fixture(scope="module")
def ohif_dist() -> Path:
    """The pinned OHIF build; scripts/fetch-ohif.sh is a no-op when it is already there."""
    stamp = DIST / ".pacsd-ohif-version"
    if not stamp.is_file() and not shutil.which("npm"):
        pytest.skip("npm not installed: cannot fetch the OHIF build (scripts/fetch-ohif.sh)")
    subprocess.run(["bash", str(ROOT_DIR / "scripts" / "fetch-ohif.sh")], check=True)
    if not stamp.is_file():
        pytest.skip("the OHIF build could not be fetched (scripts/fetch-ohif.sh)")
    return DIST


@pytest.fixture(scope="module")
def ohif_site(tmp_path_factory, ohif_dist):
    """pacsd with two studies, and OHIF on another origin pointed at it."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_OhifHandler,
                                                          directory=str(ohif_dist)))
    origin = f"http://127.0.0.1:{httpd.server_address[1]}"
    data = tmp_path_factory.mktemp("pacsd-ohif")
    conf = data / "pacsd.toml"
    conf.write_text(f'[dicomweb]\ncors_allowed_origins = ["{origin}"]\n')
    srv = Server(str(data), "--config", str(conf))
    _OhifHandler.config = ohif_config(srv.url + "/dicom-web").encode()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        srv.ct = generate_uid()
        stow(srv.url, ct_series(srv.ct, name="Lin^Alice", pid="OH-001", date="20250310",
                                desc="CT chest"))
        srv.mr = generate_uid()
        mr = make_dataset(study=srv.mr, rows=64, columns=64, seed=5, PatientName="Zhou^Bo",
                          PatientID="OH-002", StudyDate="20240101", Modality="MR",
                          StudyDescription="MR knee")
        stow(srv.url, [to_part10(mr)])
        srv.ohif = origin
        yield srv
    finally:
        httpd.shutdown()
        httpd.server_close()
        srv.stop()


class Traffic:
    """Console errors, page errors, failed requests and pacsd's answers, as OHIF saw them."""

    def __init__(self, page, pacsd_url: str) -> None:
        self.errors: list[str] = []
        self.failed: list[str] = []
        self.pacsd: list[tuple[str, int]] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("requestfailed",
                lambda r: self.failed.append(f"{r.method} {r.url}: {r.failure}"))

        def answered(resp) -> None:
            if resp.url.startswith(pacsd_url):
                self.pacsd.append((resp.request.method + " " + resp.url[len(pacsd_url):],
                                   resp.status))
        page.on("response", answered)

    def bad(self) -> list[tuple[str, int]]:
        return [(u, s) for u, s in self.pacsd if s >= 400]

    def hit(self, part: str) -> list[str]:
        return [u for u, s in self.pacsd if part in u.split("?")[0]]


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)


@pytest.fixture
def ohif_page(chromium, ohif_site):
    ctx = chromium.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    page.traffic = Traffic(page, ohif_site.url)
    yield page
    ctx.close()


def test_issue8_ohif_study_list_shows_pacsd_studies(ohif_page, ohif_site):
    """OHIF's study list is pacsd's QIDO-RS answer (with includefield, fuzzy matching);
    a row opens to its series (QIDO-RS series of the study)."""
    page, traffic = ohif_page, ohif_page.traffic
    page.goto(ohif_site.ohif + "/")
    page.get_by_text("Lin, Alice").first.wait_for(timeout=60000)
    page.get_by_text("Zhou, Bo").first.wait_for()
    assert page.get_by_text("CT chest").count() >= 1
    assert page.get_by_text("MR knee").count() >= 1
    page.get_by_text("Lin, Alice").first.click()
    page.get_by_text("Axial 5mm").first.wait_for(timeout=30000)
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "ohif-1-study-list.png"))
    assert traffic.hit("/dicom-web/studies"), traffic.pacsd
    assert traffic.hit(f"/dicom-web/studies/{ohif_site.ct}/series"), traffic.pacsd
    assert traffic.bad() == [] and traffic.failed == [], (traffic.bad(), traffic.failed)
    assert traffic.errors == []


def test_issue8_ohif_opens_a_study_thumbnails_metadata_frames(ohif_page, ohif_site):
    page, traffic = ohif_page, ohif_page.traffic
    page.goto(f"{ohif_site.ohif}/viewer?StudyInstanceUIDs={ohif_site.ct}")
    canvas = page.locator("canvas.cornerstone-canvas").first
    canvas.wait_for(timeout=90000)
    # Wait until frames came back and the viewport drew something.
    for _ in range(120):
        if traffic.hit("/frames/") and _pixels(canvas.screenshot()).std() > 10:
            break
        page.wait_for_timeout(500)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(SHOTS / "ohif-2-viewer.png"))
    assert _pixels(canvas.screenshot()).std() > 10, "OHIF's viewport is blank"
    assert traffic.hit("/metadata"), traffic.pacsd
    assert traffic.hit("/frames/"), traffic.pacsd
    assert traffic.hit("/thumbnail"), traffic.pacsd
    assert traffic.bad() == [] and traffic.failed == [], (traffic.bad(), traffic.failed)
    assert traffic.errors == []
