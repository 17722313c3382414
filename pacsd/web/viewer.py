"""Serves the zero-footprint web viewer (viewer-web/, R-D1, R-D2) at ``/viewer``.

The viewer is a static single-page app built with Vite (``npm ci && npm run build`` in
``viewer-web/``); it talks only DICOMweb and pacsd's JSON API, so its files are public
assets (``@public``): every piece of patient data it fetches is authorized and audited by
the DICOMweb routes themselves. Files come from ``[server] viewer_dir`` (default: the
``viewer-web/dist`` beside the ``pacsd`` package, i.e. in the source checkout, else in the
current directory — ``scripts/serve.sh`` installs pacsd and runs it in the checkout). When the
build is missing, ``/viewer`` answers a 404 page that says how to build it.

``/viewer/config.json`` is generated (unless the build ships one): it tells the app where
this server's DICOMweb root is, so the same build works behind any ``[dicomweb] root``, and
whether sign-in with the hospital identity provider (OIDC) is offered.
"""
from __future__ import annotations

import html
from pathlib import Path

import orjson
from aiohttp import web

from ..config import Settings
from .auth import public

PREFIX = "/viewer"
VIEWER_DIR = web.AppKey("viewer_dir", Path)
_SETTINGS = web.AppKey("viewer_settings", Settings)

#: Explicit types: responses carry ``X-Content-Type-Options: nosniff``, so a module script
#: or a WebAssembly codec served with a guessed type would be refused by the browser.
CONTENT_TYPES = {
    ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript",
    ".css": "text/css", ".json": "application/json", ".wasm": "application/wasm",
    ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
    ".map": "application/json", ".txt": "text/plain", ".woff2": "font/woff2",
}

NOT_BUILT = """<!doctype html><html><head><meta charset="utf-8"><title>pacsd viewer not built</title></head>
<body style="font-family:sans-serif;max-width:40em;margin:3em auto">
<h1>The pacsd web viewer is not built</h1>
<p>pacsd serves the viewer from <code>{where}</code>, which has no <code>index.html</code>.</p>
<p>Build it once (Node.js 20+ and npm needed):</p>
<pre>cd viewer-web
npm ci
npm run build</pre>
<p>or point <code>[server] viewer_dir</code> at a built copy. DICOMweb keeps working
without it. See docs/viewer.md.</p></body></html>"""


def viewer_dir(settings: Settings) -> Path:
    configured = getattr(settings.server, "viewer_dir", "")
    if configured:
        return Path(configured).expanduser().resolve()
    beside_package = Path(__file__).resolve().parents[2] / "viewer-web" / "dist"
    if beside_package.is_dir():
        return beside_package  # a source checkout or an editable install
    in_cwd = Path.cwd() / "viewer-web" / "dist"  # an installed pacsd run in the checkout
    return in_cwd if in_cwd.is_dir() else beside_package


def _file(root: Path, rel: str) -> Path | None:
    """The file under ``root`` for ``rel``, or None (missing, a directory, or outside
    ``root``: no path traversal)."""
    try:
        path = (root / rel).resolve()
    except (OSError, ValueError):
        return None
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def _serve(path: Path, *, cache: bool) -> web.FileResponse:
    resp = web.FileResponse(path)
    resp.content_type = CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
    # Vite puts a content hash in every asset name: cache those for long, never the page.
    resp.headers["Cache-Control"] = ("public, max-age=31536000, immutable" if cache
                                     else "no-cache")
    return resp


@public
async def viewer_redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound(PREFIX + "/" + (f"?{request.query_string}"
                                        if request.query_string else ""))


@public
async def viewer_file(request: web.Request) -> web.StreamResponse:
    root = request.app[VIEWER_DIR]
    rel = request.match_info.get("path", "")
    if not (root / "index.html").is_file():
        return web.Response(status=404, content_type="text/html", charset="utf-8",
                            text=NOT_BUILT.format(where=html.escape(str(root))))
    if rel == "config.json" and not (root / rel).is_file():
        settings = request.app[_SETTINGS]
        body = {"dicomwebRoot": settings.dicomweb.root.rstrip("/") or "/",
                "apiRoot": "/api/v1"}
        if settings.security.oidc.enabled:  # the sign-in dialog offers the hospital login
            body["oidcLogin"] = "/api/v1/auth/oidc/login"
        return web.Response(body=orjson.dumps(body), content_type="application/json",
                            headers={"Cache-Control": "no-cache"})
    path = _file(root, rel) if rel else None
    if path is not None:
        return _serve(path, cache=rel.startswith("assets/"))
    if rel and Path(rel).suffix.lower() in CONTENT_TYPES:
        raise web.HTTPNotFound(text="no such viewer file\n")  # a missing asset, not a page
    # Pages of the single-page app (/viewer/, /viewer/study/...) all load index.html.
    return _serve(root / "index.html", cache=False)


def add_viewer_routes(app: web.Application, settings: Settings) -> None:
    """Mount the viewer at /viewer (one line in app.py)."""
    app[VIEWER_DIR] = viewer_dir(settings)
    app[_SETTINGS] = settings
    app.router.add_get(PREFIX, viewer_redirect)
    app.router.add_get(PREFIX + "/{path:.*}", viewer_file)
