"""Typed application keys (aiohttp AppKey): app state without module globals."""
from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from ..services import (Archive, AuditTrail, IngestService, QueryService, RetrieveService,
                        SecurityService)
from ..services.jobs import JobService
from ..services.plugin_api import PluginAPI

ARCHIVE = web.AppKey("archive", Archive)
INGEST = web.AppKey("ingest", IngestService)
QUERY = web.AppKey("query", QueryService)
RETRIEVE = web.AppKey("retrieve", RetrieveService)
SECURITY = web.AppKey("security", SecurityService)
AUDIT = web.AppKey("audit", AuditTrail)
#: The persistent job queue and its runner (services/jobs.py, docs/jobs.md).
JOBS = web.AppKey("jobs", JobService)
#: Optional, set before start-up: the clock of sessions, lockouts and audit times
#: (POSIX seconds; tests travel in time with it instead of sleeping).
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
#: Optional, set before start-up: an argon2 PasswordHasher (tests use cheap parameters).
PASSWORD_HASHER: web.AppKey[object] = web.AppKey("password_hasher")
#: The public plugin surface (pacsd.plugin_api.api_of(request)), set at start-up.
PLUGIN_API = web.AppKey("plugin_api", PluginAPI)
#: Optional, set before start-up: False in the worker processes of ``pacsd serve
#: --workers N`` other than the first, which alone runs the singletons (job runner,
#: scheduled scrub, audit syslog export and retention, stable-study watcher; DIMSE is
#: started by server.py). Absent = True (one process does everything).
PRIMARY: web.AppKey[bool] = web.AppKey("primary")
#: Optional, set before start-up: the rate-limit table shared by every worker process
#: (server.py; services.ratelimit.SharedFailureTable): the login / bad-token limiter and plugins'
#: limiters (PluginAPI.rate_limiter) count there. Absent = per process.
RATE_LIMITS: web.AppKey[object] = web.AppKey("rate_limits")
