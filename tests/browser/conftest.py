"""Browser tests of the web viewer (R-D1, R-D2): a real ``pacsd serve`` serving the built
viewer-web/ app, Debian chromium driven by Python playwright, synthetic studies sent by
STOW-RS. Skips with the reason when chromium, playwright or node/npm are missing.

The viewer is (re)built with ``npm ci`` / ``npm run build`` when its build is missing or
older than its sources, so the tests always exercise the code in the tree."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pacsd_server import Server
from pydicom.uid import generate_uid

from dicomgen import make_dataset, to_part10
from viewerdata import ct_series, stow

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "viewer-web"
DIST = WEB / "dist"
CHROMIUM = os.environ.get("PACSD_TEST_CHROMIUM", "/usr/bin/chromium")


def _stale() -> bool:
    index = DIST / "index.html"
    if not index.is_file():
        return True
    built = index.stat().st_mtime
    sources = [WEB / "index.html", WEB / "vite.config.js", WEB / "package-lock.json",
               *(WEB / "src").rglob("*")]
    return any(p.stat().st_mtime > built for p in sources if p.is_file())


@pytest.fixture(scope="session")
def viewer_dist() -> Path:
    if _stale():
        npm = shutil.which("npm")
        if not npm or not shutil.which("node"):
            pytest.skip("node/npm not installed: cannot build viewer-web (docs/viewer.md)")
        if not (WEB / "node_modules").is_dir():
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)
        subprocess.run([npm, "run", "build"], cwd=WEB, check=True,
                       stdout=subprocess.DEVNULL)
    return DIST


@pytest.fixture(scope="module")
def chromium():
    """Module-scoped: sync playwright runs an event loop in this thread while it lives,
    which must be gone before pytest-aiohttp's async tests in other folders run."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"chromium not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Python playwright not installed (pip install playwright)")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            # Software WebGL2 (SwiftShader) in headless mode, without a GPU.
            args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                  "--ignore-gpu-blocklist", "--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def studies():
    """UIDs of the synthetic studies (module constants, stored by ``server``)."""
    return {"current": generate_uid(), "prior": generate_uid(), "other": generate_uid()}


@pytest.fixture(scope="module")
def server(tmp_path_factory, viewer_dist, studies):
    data = tmp_path_factory.mktemp("pacsd-viewer")
    conf = data / "pacsd.toml"
    conf.write_text(f'[server]\nviewer_dir = "{viewer_dist}"\n')
    srv = Server(str(data), "--config", str(conf))
    try:
        same = dict(name="Lin^Alice", pid="VW-001", date="20250310", desc="CT chest",
                    frame_of_ref=generate_uid())
        stow(srv.url, ct_series(studies["current"], **same)
             + ct_series(studies["current"], coronal=True, slices=4, **same))
        stow(srv.url, ct_series(studies["prior"], name="Lin^Alice", pid="VW-001",
                                date="20240305", desc="CT chest prior"))
        mr = make_dataset(study=studies["other"], rows=32, columns=32, seed=3,
                          PatientName="Zhou^Bo", PatientID="VW-002", StudyDate="20230101",
                          Modality="MR", StudyDescription="MR knee",
                          BodyPartExamined="KNEE", InstitutionName="North Clinic")
        stow(srv.url, [to_part10(mr)])
        # Filler studies so the worklist has more than one page (R-D2 paging).
        stow(srv.url, [to_part10(make_dataset(rows=8, columns=8, seed=i,
                                              PatientName=f"Filler^{i:02d}",
                                              PatientID=f"FILL-{i:02d}",
                                              StudyDate=f"2022010{i % 9 + 1}"))
                       for i in range(11)])
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def page(chromium, server):
    ctx = chromium.new_context(viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    yield pg
    ctx.close()
