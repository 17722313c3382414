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

Worker processes (R-H1, ``[server] workers`` / ``pacsd serve --workers N``; docs/operations.md
"Worker processes"): one Python process is bound by its GIL, so with N > 1 a small
supervisor (:class:`Supervisor`, this process) forks N workers that all accept HTTP on the
same port: they share one listening socket opened by the supervisor, and each accepts
with its own loop that leaves a new connection to a worker holding fewer connections
(pacsd/web/balance.py; ``SO_REUSEPORT`` spread long keep-alive connections 6/2 as often as
4/4, and the busier worker set the pace). Worker 0 is the *primary*: it alone runs the singletons (DIMSE, the job
runner and its periodic tasks, the scheduled scrub, the audit syslog export and
retention, the stable-study watcher: web/keys.py ``PRIMARY``); the others serve HTTP
only. A worker that dies is logged and started again (the primary as the primary). On
SIGTERM/SIGINT the supervisor passes SIGTERM to every worker, each drains as above, and
the supervisor exits 0 once all have exited 0. Failed logins, and the failures plugins'
limiters count, are kept in memory shared by all workers (services.ratelimit.SharedFailureTable);
rendered images and thumbnails in files the workers share (services/cache.py
SharedFileCache), so a client whose new connection lands on another worker does not wait
for the same image to be rendered again.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import time

from aiohttp import web

from . import tls
from .config import ConfigError, Settings
from .web import create_app
from .web.app import INFLIGHT, PLUGINS
from .web.keys import AUDIT, INGEST, PRIMARY, QUERY, RATE_LIMITS, RETRIEVE, SECURITY

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


def _dimse_on(settings: Settings) -> bool:
    return bool(settings.server.dicom_port or settings.server.dicom_tls_port)


def check_startup(settings: Settings) -> None:
    """Everything refused before anything listens (ConfigError, exit status 2)."""
    check_startup_security(settings)
    tls.check(settings)
    if _dimse_on(settings):
        from .dimse.server import check_exposure
        check_exposure(settings)


async def run(settings: Settings, stop: asyncio.Event | None = None, *,
              primary: bool = True, sock: socket.socket | None = None,
              rate_limits: object | None = None,
              stability_pipe: tuple[int, int] | None = None,
              worker: int | None = None, connections: object | None = None) -> None:
    """One serving process: the whole server, or (with ``worker``) one worker of a
    :class:`Supervisor`: ``primary`` runs the singletons, ``sock`` is the inherited
    listening socket (else the site binds ``[server] http`` itself), ``rate_limits`` is the
    rate-limit table the workers share (services.ratelimit.SharedFailureTable), ``stability_pipe`` carries new instances' studies to the
    primary's stable-study watcher (services/stability.py), ``connections`` the workers'
    open-connection table (web.balance.ConnectionTable: ``sock`` is then accepted from by a
    web.balance.BalancedSite)."""
    if worker is None:
        check_startup(settings)
    host, port = settings.http_host_port
    app = create_app(settings)
    app[PRIMARY] = primary
    if rate_limits is not None:
        app[RATE_LIMITS] = rate_limits
    if stability_pipe is not None:
        from .services.stability import StudyStability
        stability = app[PLUGINS].pm.get_plugin("pacsd.stability")
        if isinstance(stability, StudyStability):
            stability.attach(stability_pipe, primary)
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=settings.server.shutdown_timeout_s)
    await runner.setup()
    if worker is not None:
        # Rendered images and kept QIDO answers are shared by the workers: a client's
        # next connection may land on another worker, which would otherwise build them
        # again.
        app[RETRIEVE].shared_render = app[QUERY].shared = shared_render_cache(settings)
    ssl_context = tls.server_context(settings)
    site: web.BaseSite
    if sock is not None and connections is not None and worker is not None:
        from .web.balance import BalancedSite
        site = BalancedSite(runner, sock, connections, worker, ssl_context=ssl_context)
    elif sock is not None:
        site = web.SockSite(runner, sock, ssl_context=ssl_context)
    else:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    log.info("pacsd%s listening on %s://%s:%d%s (data in %s)",
             "" if worker is None else f" worker {worker} (pid {os.getpid()})",
             "https" if ssl_context else "http", host, port, settings.dicomweb.root,
             settings.data_path)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    dimse = None
    try:
        if primary and _dimse_on(settings):
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


def usable_cpus(cgroup: str = "/sys/fs/cgroup") -> int:
    """The CPUs this process may use: its affinity mask (taskset, cpusets), lowered to a
    cgroup v2 CPU quota (``cpu.max``, e.g. a container's ``--cpus 2``) rounded up;
    ``os.cpu_count()`` alone counts the host's CPUs."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open(os.path.join(cgroup, "cpu.max")) as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max" and int(period) > 0:
            n = min(n, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, n)


def shared_render_cache(settings: Settings):
    """The render cache's files shared by the workers (services/cache.py SharedFileCache),
    or None with ``[encryption] enabled``: rendered pixels are not written to disk in
    plaintext there, so each worker keeps its own in memory."""
    if settings.encryption.enabled:
        return None
    from .services.cache import SharedFileCache
    from .services.retrieve import SHARED_RENDER_CACHE_BYTES, SHARED_RENDER_CACHE_DIR
    return SharedFileCache(settings.data_path / SHARED_RENDER_CACHE_DIR,
                           SHARED_RENDER_CACHE_BYTES)


def worker_count(settings: Settings) -> int:
    """``[server] workers``: N, or 0 (the default, ``auto``) = one per usable CPU."""
    n = settings.server.workers
    return n if n > 0 else usable_cpus()


def serve(settings: Settings) -> int:
    """``pacsd serve``: one process, or a :class:`Supervisor` of worker processes.
    Returns the exit status."""
    n = worker_count(settings)
    if n <= 1:
        check_startup_security(settings)
        asyncio.run(run(settings))
        return 0
    return Supervisor(settings, n).serve()


#: Workers that die within this many seconds of their start are restarted after a
#: growing delay (0.5 s doubling to 30 s), so a crash loop does not spin.
QUICK_DEATH_S = 10.0
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class Supervisor:
    """Forks and watches the worker processes (module docstring). Not a server itself:
    it holds no database connection, thread or event loop when it forks."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.workers = workers
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
        self.stopping = False
        self.codes: list[int] = []
        self.sock: socket.socket | None = None
        # One shared listening socket, connections balanced by the workers (web/balance.py).
        self.connections: object | None = None
        self.rate_limits: object | None = None
        self.stability_pipe: tuple[int, int] | None = None
        self.pid = os.getpid()

    # --- set-up -------------------------------------------------------------------------
    def _open_port(self) -> socket.socket:
        """The listening socket the workers inherit and accept from in turns
        (web/balance.py)."""
        host, port = self.settings.http_host_port
        family, _, _, _, addr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                   flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(1024)
            sock.set_inheritable(True)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot listen on {self.settings.server.http}: "
                              f"{exc.strerror or type(exc).__name__}") from None
        return sock

    def _prepare(self) -> None:
        if not hasattr(os, "fork"):
            raise ConfigError("[server] workers > 1 needs a system with fork(); use 1")
        check_startup(self.settings)
        from .index import Catalogue
        from .services.ratelimit import SHARED_LIMIT_CAP, SharedFailureTable

        # The schema once, here, rather than by N workers racing at their start.
        self.settings.data_path.mkdir(parents=True, exist_ok=True)
        catalogue = Catalogue(self.settings.index_url,
                              busy_timeout_s=self.settings.index.busy_timeout_s)
        try:
            catalogue.migrate()
        finally:
            catalogue.close()
        # Failures per address of the login limiter and of plugins' limiters (SEC-8).
        self.rate_limits = SharedFailureTable(
            cap=max(SHARED_LIMIT_CAP, self.settings.security.login_rate_limit))
        self.stability_pipe = os.pipe()
        self.sock = self._open_port()
        from .web.balance import ConnectionTable
        self.connections = ConnectionTable(self.workers)
        for i in range(self.workers):
            self.connections.gone(i)  # until that worker listens
        self._render_cache_dir(create=True)

    def _render_cache_dir(self, *, create: bool) -> None:
        """The workers' shared render cache (services/cache.py SharedFileCache): emptied
        at start (a crash may have left one), removed at stop."""
        from .services.retrieve import SHARED_RENDER_CACHE_DIR
        path = self.settings.data_path / SHARED_RENDER_CACHE_DIR
        shutil.rmtree(path, ignore_errors=True)
        if create and shared_render_cache(self.settings) is not None:
            path.mkdir(mode=0o700)

    # --- the workers --------------------------------------------------------------------
    def _spawn(self, index: int) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._worker(index)  # never returns
            self.children[pid] = (index, time.monotonic())
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        log.info("started worker %d (pid %d)%s", index, pid, " (primary)" if index == 0 else "")

    def _worker(self, index: int) -> None:
        code = 1
        try:
            for sig in _STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            _die_with_parent()
            if os.getppid() != self.pid:  # the supervisor died before that took effect
                return
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            asyncio.run(run(self.settings, primary=index == 0, sock=self.sock,
                            rate_limits=self.rate_limits,
                            stability_pipe=self.stability_pipe, worker=index,
                            connections=self.connections))
            code = 0
        except ConfigError as exc:
            print(f"pacsd: worker {index}: {exc.reason}", file=sys.stderr)
            code = 2
        except BaseException:  # noqa: BLE001 - logged; the supervisor restarts us
            log.exception("worker %d failed", index)
        finally:
            logging.shutdown()
            os._exit(code)

    def _on_signal(self, signum: int, _frame) -> None:
        if not self.stopping:
            log.info("%s: stopping %d workers (they finish requests in flight)",
                     signal.Signals(signum).name, len(self.children))
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _pause(self, seconds: float) -> None:
        """Sleep, but wake for a stop at once."""
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def serve(self) -> int:
        self._prepare()
        host, port = self.settings.http_host_port
        log.info("pacsd supervisor (pid %d): %d worker processes on %s:%d (one shared "
                 "listening socket)", os.getpid(), self.workers, host, port)
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        quick_deaths = [0] * self.workers
        fatal = False
        try:
            for index in range(self.workers):
                self._spawn(index)
            while self.children:
                try:
                    pid, status = os.waitpid(-1, 0)
                except ChildProcessError:
                    break
                entry = self.children.pop(pid, None)
                if entry is None:
                    continue
                index, started = entry
                if self.connections is not None:
                    self.connections.gone(index)  # its successor starts at 0
                code = os.waitstatus_to_exitcode(status)
                if self.stopping:
                    self.codes.append(code)
                    continue
                how = f"exit status {code}" if code >= 0 else \
                    f"signal {signal.Signals(-code).name}"
                if code == 2:  # a ConfigError in the worker: restarting cannot help
                    log.error("worker %d (pid %d) refused to start (%s): stopping", index,
                              pid, how)
                    fatal = True
                    self._on_signal(signal.SIGTERM, None)
                    continue
                quick = time.monotonic() - started < QUICK_DEATH_S
                quick_deaths[index] = quick_deaths[index] + 1 if quick else 0
                delay = min(30.0, 0.5 * 2 ** (quick_deaths[index] - 1)) if quick else 0.0
                log.error("worker %d (pid %d) died (%s); starting it again%s", index, pid,
                          how, f" in {delay:g} s" if delay else "")
                self._pause(delay)
                if not self.stopping:
                    self._spawn(index)
        finally:
            for sig in _STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            if self.sock is not None:
                self.sock.close()
            self._render_cache_dir(create=False)
        if fatal:
            return 2
        # -SIGTERM: stopped before it served anything (its handler comes with the site)
        bad = [c for c in self.codes if c not in (0, -signal.SIGTERM)]
        log.info("pacsd stopped (%d workers%s)", len(self.codes),
                 f", {len(bad)} did not exit cleanly" if bad else "")
        return 1 if bad else 0


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the supervisor dies (even by SIGKILL), so no
    orphan keeps serving the port or the DICOM port."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
