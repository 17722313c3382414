"""The aiohttp application factory: routes, middlewares, and the archive's lifetime.

Resources are opened and closed in ``cleanup_ctx`` (ARCHITECTURE conventions); app state
lives in typed AppKeys (web/keys.py). DICOMweb is mounted at ``settings.dicomweb.root``
(default /dicom-web), WADO-URI also at /wado, pacsd's own API under /api/v1.

Every route declares what it needs (``web/auth.py``: ``@public``, ``@authenticated``,
``@requires(action)``) and one middleware enforces it and writes the audit trail; the
security service and the audit trail's batch writer live in their own ``cleanup_ctx``,
torn down (and flushed) before the archive closes.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

import orjson
from aiohttp import web

from .. import __version__
from ..config import Settings
from ..plugins import Plugins
from ..services import (Archive, AuditTrail, IngestService, QueryService, RetrieveService,
                        SecurityService)
from . import admin, auth, forwarding, oidc_routes
from . import audit as audit_api
from ..services.oidc import OidcLogin
from .dicomweb import qido, stow, wado, wado_uri
from ..services.jobs import JobService
from ..services.plugin_api import PluginAPI, install_plugin_jobs
from ..services.stability import StudyStability
from .keys import (ARCHIVE, AUDIT, CLOCK, INGEST, JOBS, PASSWORD_HASHER,
                   PLUGIN_API, PRIMARY, QUERY, RATE_LIMITS, RETRIEVE, SECURITY)
from .middleware import error_middleware, make_cors_middleware, make_cors_prepare, on_prepare
from .viewer import add_viewer_routes

log = logging.getLogger(__name__)
SETTINGS = web.AppKey("settings", Settings)
PLUGINS = web.AppKey("plugins", Plugins)


class InFlight:
    """Counts requests being handled, so shutdown can wait for them (server.py)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


INFLIGHT = web.AppKey("inflight", InFlight)


@web.middleware
async def inflight_middleware(request: web.Request, handler):
    tracker = request.app[INFLIGHT]
    tracker.enter()
    try:
        return await handler(request)
    finally:
        tracker.leave()


async def _archive_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    archive = Archive.open(settings, app[PLUGINS])
    app[ARCHIVE] = archive
    app[INGEST] = IngestService(archive)
    app[QUERY] = QueryService(archive)
    app[RETRIEVE] = RetrieveService(archive)
    archive.clock = app.get(CLOCK, time.time)  # retention / versions (R-A7, R-A8)
    archive.plugins.fire("startup", archive=archive)
    try:
        yield
    finally:
        archive.plugins.fire("shutdown", archive=archive)
        archive.close()


async def _security_ctx(app: web.Application) -> AsyncIterator[None]:
    archive = app[ARCHIVE]
    clock = app.get(CLOCK, time.time)
    audit = AuditTrail(archive.catalogue, clock=clock, run=archive.run)
    app[AUDIT] = audit
    table, conf = app.get(RATE_LIMITS), archive.settings.security
    limiter = None if table is None else table.limiter(
        "login", conf.login_rate_limit, conf.login_rate_window_s, clock)
    app[SECURITY] = SecurityService(archive.settings, archive.catalogue, audit,
                                    archive.plugins, run=archive.run, clock=clock,
                                    hasher=app.get(PASSWORD_HASHER), limiter=limiter)
    if archive.settings.security.oidc.enabled:
        app[oidc_routes.OIDC] = OidcLogin(archive.settings.security.oidc, app[SECURITY])
    if archive.settings.security.enabled:
        for route in auth.undeclared_routes(app):
            log.warning("route %s declares no permission: it answers 403 (SEC-21)", route)
    await audit.start()
    # The public plugin surface (R-E6): plugins use it instead of internals.
    app[PLUGIN_API] = PluginAPI(archive, app[INGEST], app[QUERY], app[RETRIEVE], audit,
                                rate_limits=table)
    archive.plugins.fire("api_ready", api=app[PLUGIN_API])
    try:
        yield
    finally:
        await app[PLUGIN_API].drain(archive.settings.server.shutdown_timeout_s)
        await audit.stop()  # flush what is queued before the archive closes


async def _jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    """The job queue's runner (R-B2, docs/jobs.md): started after the archive and the
    audit trail, stopped (running jobs finish or go back to the queue) before them."""
    archive = app[ARCHIVE]
    jobs = JobService(archive, clock=app.get(CLOCK, time.time))
    app[JOBS] = jobs
    for install in app[JOB_INSTALLERS]:
        install(app, jobs)
    install_plugin_jobs(app[PLUGIN_API], jobs)  # plugins' register_jobs kinds (R-B5)
    if archive.settings.jobs.enabled and app.get(PRIMARY, True):
        await jobs.start()  # one runner per server: the primary worker's (server.py)
    try:
        yield
    finally:
        await jobs.stop(archive.settings.server.shutdown_timeout_s)
        app[PLUGIN_API].jobs._attach(None)


#: Functions ``install(app, jobs)`` run before the job runner starts: they register job
#: kinds and periodic tasks (forwarding does, R-B2).
JOB_INSTALLERS: web.AppKey[list] = web.AppKey("job_installers")


@auth.public
async def health(request: web.Request) -> web.Response:
    archive = request.app[ARCHIVE]
    counts = await archive.run(archive.catalogue.counts)
    body = {"status": "ok", "version": __version__, "counts": counts}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def add_dicomweb_routes(router: web.UrlDispatcher, root: str) -> None:
    r = root.rstrip("/")
    st = f"{r}/studies/{{study}}"
    se = f"{st}/series/{{series}}"
    ins = f"{se}/instances/{{instance}}"
    fr = f"{ins}/frames/{{frames}}"
    router.add_post(f"{r}/studies", stow.stow)
    router.add_post(st, stow.stow)
    # QIDO-RS
    router.add_get(f"{r}/studies", qido.make_qido("study"))
    router.add_get(f"{r}/series", qido.make_qido("series"))
    router.add_get(f"{r}/instances", qido.make_qido("instance"))
    router.add_get(f"{st}/series", qido.make_qido("series"))
    router.add_get(f"{st}/instances", qido.make_qido("instance"))
    router.add_get(f"{se}/instances", qido.make_qido("instance"))
    # WADO-RS
    for path in (st, se, ins):
        router.add_get(path, wado.retrieve_instances)
        router.add_delete(path, wado.delete)
        router.add_get(f"{path}/metadata", wado.retrieve_metadata)
        router.add_get(f"{path}/thumbnail", wado.retrieve_thumbnail)
    router.add_get(fr, wado.retrieve_frames)
    router.add_get(f"{ins}/rendered", wado.retrieve_rendered)
    router.add_get(f"{fr}/rendered", wado.retrieve_rendered)
    router.add_get(f"{fr}/thumbnail", wado.retrieve_rendered)
    router.add_get(f"{ins}/bulkdata/{{tag}}", wado.retrieve_bulkdata)
    # WADO-URI
    router.add_get(f"{r}/wado", wado_uri.wado_uri)


def create_app(settings: Settings, plugins: Plugins | None = None) -> web.Application:
    app = web.Application(middlewares=[
        inflight_middleware,
        make_cors_middleware(settings.dicomweb.cors_allowed_origins),
        error_middleware,
        auth.auth_middleware,
    ])
    app[SETTINGS] = settings
    app[INFLIGHT] = InFlight()
    app.cleanup_ctx.append(_archive_ctx)
    app.cleanup_ctx.append(_security_ctx)
    app.cleanup_ctx.append(audit_api.audit_ctx)  # syslog export, retention (MLPS 13)
    app[JOB_INSTALLERS] = [forwarding.install]  # store-and-forward (R-B2)
    app.cleanup_ctx.append(_jobs_ctx)
    app.on_response_prepare.append(on_prepare)
    app.on_response_prepare.append(make_cors_prepare(settings.dicomweb.cors_allowed_origins))
    add_dicomweb_routes(app.router, settings.dicomweb.root)
    if settings.dicomweb.root.rstrip("/") != "":
        app.router.add_get("/wado", wado_uri.wado_uri)
    app.router.add_get("/api/v1/health", health)
    auth.add_auth_routes(app.router)
    oidc_routes.add_oidc_routes(app.router)  # R-E1: OIDC login ([security.oidc])
    audit_api.add_routes(app.router)  # the auditor's API, exports and page (R-E3, R-E4)
    forwarding.add_routes(app.router)
    from . import lifecycle
    lifecycle.add_routes(app.router)  # retention, legal hold, versions (R-A7, R-A8)
    app.cleanup_ctx.append(lifecycle.scrub_ctx)  # scheduled scrub (R-A6)
    admin.add_admin_routes(app.router)  # /api/v1/admin: secadmin (R-A12, MLPS 8)
    add_viewer_routes(app, settings)  # the web viewer at /viewer (R-D1)
    if plugins is None:
        plugins = Plugins()
        plugins.load(settings.plugins)
    app[PLUGINS] = plugins
    if not plugins.pm.has_plugin("pacsd.stability"):
        # Built-in, registered like a third-party plugin: fires study_stable.
        plugins.register(StudyStability(settings.server.stable_age_s), "pacsd.stability")
    plugins.collect("register_routes", router=app.router, settings=settings)
    return app
