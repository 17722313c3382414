"""Assembly: settings → aiohttp app → listening server, with graceful shutdown.

Security is default (SEC-20): pacsd refuses to listen on a non-loopback address while it
has no authentication configured (authentication arrives with the security issue; until
then only loopback is allowed).

Graceful shutdown: aiohttp's own shutdown stops reading request bodies at once (its
protocol drops incoming data once closing), so an upload still streaming would be cut.
pacsd therefore drains first: on SIGTERM/SIGINT it stops accepting connections, lets
every request in flight — uploads still arriving included — finish (up to
``shutdown_timeout_s``), and only then cleans up.
"""
from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .config import ConfigError, Settings
from .web import create_app
from .web.app import INFLIGHT

log = logging.getLogger("pacsd")


def check_startup_security(settings: Settings) -> None:
    if not settings.http_is_loopback():
        raise ConfigError(
            "refusing to listen on a non-loopback address without authentication "
            f"({settings.server.http}); bind to 127.0.0.1 or put an authenticating "
            "reverse proxy in front and bind it to loopback")


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    check_startup_security(settings)
    host, port = settings.http_host_port
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=settings.server.shutdown_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("pacsd listening on http://%s:%d%s (data in %s)", host, port,
             settings.dicomweb.root, settings.data_path)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutting down: no new connections; finishing requests in flight")
        await site.stop()
        try:
            await asyncio.wait_for(app[INFLIGHT].idle(), settings.server.shutdown_timeout_s)
        except asyncio.TimeoutError:
            log.warning("requests still running after %ss; cancelling them",
                        settings.server.shutdown_timeout_s)
    finally:
        await runner.cleanup()
        log.info("pacsd stopped")


def serve(settings: Settings) -> None:
    check_startup_security(settings)
    asyncio.run(run(settings))
