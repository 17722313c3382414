"""pacsd serves the built web viewer at /viewer (R-D1, R-3.2.6): static files from
``[server] viewer_dir``, a 404 page saying how to build it, a generated config.json naming
the DICOMweb root, no path traversal, public assets while patient data stays protected."""
from __future__ import annotations

import pytest

from pacsd.config import Settings
from pacsd.web import create_app
from pacsd.web.viewer import viewer_dir


@pytest.fixture
def dist(tmp_path):
    d = tmp_path / "dist"
    (d / "assets").mkdir(parents=True)
    (d / "index.html").write_text("<!doctype html><title>pacsd viewer</title>")
    (d / "assets" / "index-abc.js").write_text("console.log(1)")
    (d / "assets" / "codec-abc.wasm").write_bytes(b"\0asm\1\0\0\0")
    (tmp_path / "secret.txt").write_text("outside the viewer")
    return d


def settings_for(tmp_path, viewer: str, **security) -> Settings:
    s = Settings()
    s.server.data_dir = str(tmp_path / "data")
    s.server.worker_threads = 2
    s.server.viewer_dir = viewer
    s.dicomweb.root = "/dw"
    for k, v in security.items():
        setattr(s.security, k, v)
    return s


async def test_r_d1_viewer_not_built_answers_how_to_build(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(settings_for(tmp_path, str(tmp_path / "none"))))
    r = await client.get("/viewer/")
    assert r.status == 404
    assert r.content_type == "text/html"
    text = await r.text()
    assert "npm run build" in text and "viewer_dir" in text
    assert (await client.get("/viewer/study/1.2.3")).status == 404


async def test_r_d1_viewer_static_files_types_and_caching(aiohttp_client, tmp_path, dist):
    client = await aiohttp_client(create_app(settings_for(tmp_path, str(dist))))
    r = await client.get("/viewer", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/viewer/"
    r = await client.get("/viewer/")
    assert r.status == 200 and "pacsd viewer" in await r.text()
    assert r.headers["Cache-Control"] == "no-cache"
    # Pages of the single-page app load index.html too.
    r = await client.get("/viewer/study/1.2.3")
    assert r.status == 200 and "pacsd viewer" in await r.text()
    r = await client.get("/viewer/assets/index-abc.js")
    assert r.status == 200 and r.content_type == "text/javascript"
    assert "immutable" in r.headers["Cache-Control"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    r = await client.get("/viewer/assets/codec-abc.wasm")
    assert r.status == 200 and r.content_type == "application/wasm"
    assert (await client.get("/viewer/assets/missing.js")).status == 404


async def test_r_d1_viewer_config_names_this_servers_dicomweb_root(aiohttp_client, tmp_path, dist):
    client = await aiohttp_client(create_app(settings_for(tmp_path, str(dist))))
    r = await client.get("/viewer/config.json")
    assert r.status == 200
    assert await r.json() == {"dicomwebRoot": "/dw", "apiRoot": "/api/v1"}
    # A config.json shipped with the build wins (a viewer pointed at another server).
    (dist / "config.json").write_text('{"dicomwebRoot": "https://other.example/dicomweb"}')
    r = await client.get("/viewer/config.json")
    assert (await r.json())["dicomwebRoot"] == "https://other.example/dicomweb"


@pytest.mark.parametrize("path", ["/viewer/../secret.txt", "/viewer/%2e%2e/secret.txt",
                                  "/viewer/..%2fsecret.txt", "/viewer/assets/..%2f..%2fsecret.txt"])
async def test_sec_viewer_no_path_traversal(aiohttp_client, tmp_path, dist, path):
    client = await aiohttp_client(create_app(settings_for(tmp_path, str(dist))))
    r = await client.get(path)
    assert "outside the viewer" not in await r.text()


async def test_r_d1_viewer_is_public_but_dicomweb_is_not(aiohttp_client, tmp_path, dist):
    """The app's files need no login; the data it fetches is authorised by DICOMweb."""
    client = await aiohttp_client(create_app(settings_for(tmp_path, str(dist), enabled=True)))
    assert (await client.get("/viewer/")).status == 200
    assert (await client.get("/viewer/config.json")).status == 200
    assert (await client.get("/dw/studies")).status == 401


def test_r_d1_viewer_dir_default_is_the_checkouts_build(tmp_path):
    s = Settings()
    assert viewer_dir(s).parts[-2:] == ("viewer-web", "dist")
    s.server.viewer_dir = str(tmp_path)
    assert viewer_dir(s) == tmp_path.resolve()
