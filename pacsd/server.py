"""Assembly: settings → aiohttp app → listening server, with graceful shutdown.

Security is default (SEC-20): pacsd refuses to listen on a non-loopback address unless
``[security] enabled`` is set and at least one user exists (docs/security.md).

Graceful shutdown: aiohttp's own shutdown stops reading request bodies at once (its
protocol drops incoming data once closing), so an upload still streaming would be cut.
pacsd therefore drains first: on SIGTERM/SIGINT it stops accepting connections, lets
every request in flight — uploads still arriving included — finish (up to
``shutdown_timeout_s``), and only then cleans up.

DIMSE (``pacsd.dimse``) runs in the same process over the same opened archive: it starts
once the HTTP site listens (the archive is open after ``runner.setup()``) unless
``dicom_port`` is 0, and on shutdown it stops accepting and drains its associations in
the same window, before the web application (and with it the archive) is cleaned up.
"""
from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from . import tls
from .config import ConfigError, Settings
from .web import create_app
from .web.app import INFLIGHT
from .web.keys import AUDIT, INGEST, QUERY, RETRIEVE, SECURITY

log = logging.getLogger("pacsd")


def check_startup_security(settings: Settings) -> None:
    """SEC-20: a non-loopback listener needs ``[security] enabled`` and at least one user
    (there is no default account, MLPS 5: ``pacsd user add`` creates the first)."""
    if settings.http_is_loopback():
        return
    if settings.security.enabled:
        from .services.security import count_users
        if count_users(settings) > 0:
            return
        reason = "security is enabled but no user exists: create one with `pacsd user add`"
    else:
        reason = "set [security] enabled = true and create a user with `pacsd user add`"
    raise ConfigError(
        "refusing to listen on a non-loopback address without authentication "
        f"({settings.server.http}): {reason}; or bind to 127.0.0.1 (or put an "
        "authenticating reverse proxy in front and bind it to loopback)")


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    check_startup_security(settings)
    tls.check(settings)
    if settings.server.dicom_port or settings.server.dicom_tls_port:
        from .dimse.server import check_exposure
        check_exposure(settings)  # before anything listens
    host, port = settings.http_host_port
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=settings.server.shutdown_timeout_s)
    await runner.setup()
    ssl_context = tls.server_context(settings)
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    log.info("pacsd listening on %s://%s:%d%s (data in %s)",
             "https" if ssl_context else "http", host, port, settings.dicomweb.root,
             settings.data_path)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    dimse = None
    try:
        if settings.server.dicom_port or settings.server.dicom_tls_port:
            from .dimse import DimseServer
            dimse = DimseServer(settings, ingest=app[INGEST], query=app[QUERY],
                                retrieve=app[RETRIEVE], loop=loop,
                                security=app[SECURITY], audit=app[AUDIT])
            dimse.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: no new connections; finishing requests in flight")
        await site.stop()
        drains = [asyncio.wait_for(app[INFLIGHT].idle(), settings.server.shutdown_timeout_s)]
        if dimse is not None:
            # Blocking wait off the loop: the associations' handlers need the loop.
            drains.append(asyncio.to_thread(dimse.stop, settings.server.shutdown_timeout_s))
        http_drain, *_ = await asyncio.gather(*drains, return_exceptions=True)
        if isinstance(http_drain, asyncio.TimeoutError):
            log.warning("requests still running after %ss; cancelling them",
                        settings.server.shutdown_timeout_s)
        elif isinstance(http_drain, BaseException):
            raise http_drain
    finally:
        if dimse is not None:
            await asyncio.to_thread(dimse.stop, 0)  # no-op unless the drain was skipped
        await runner.cleanup()
        log.info("pacsd stopped")


def serve(settings: Settings) -> None:
    check_startup_security(settings)
    asyncio.run(run(settings))
