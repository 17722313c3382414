"""The one module plugins import from pacsd (R-E6; docs/plugin_hooks.md "Plugin API").

Everything a plugin needs, re-exported so plugins never import internals:
:data:`hookimpl`, :class:`PluginAPI` (store / read / render / query / audit / plugin
tables), :class:`PluginSchema` and :class:`Migration` (``register_tables``), the route
declarations :func:`public`, :func:`authenticated`, :func:`requires` and the request
helpers :func:`current_actor`, :func:`note_audit`, :func:`client_ip`, :class:`Actor`,
:class:`Resource`, :class:`RateLimiter` (failures per address, SEC-8), :class:`Job` and
:class:`JobFailed` (the persistent job queue: ``api.jobs`` and the ``register_jobs``
hook), the error classes (``errors``), :func:`api_of` for a handler and
:func:`open_api` for a CLI command. :func:`retrieve_metadata` and :func:`retrieve_frames`
are pacsd's own WADO-RS handlers, for a plugin that serves a scoped DICOMweb root under its
own prefix (e.g. the share plugin's phone viewer): they read with the request's actor, so
its data scope (``query_filter``) applies and a study outside it is not found (404).
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from . import errors, hookimpl
from .config import Settings
from .index.migrations import Migration
from .index.plugin_tables import PluginSchema
from .model import InstanceRow, StoreOutcome
from .index.jobs import Job
from .services.jobs import JobFailed
from .services.plugin_api import PluginAPI, PluginJobs
from .services.ratelimit import RateLimiter
from .services.security import Actor, Resource
from .web.auth import (authenticated, client_device, client_ip, current_actor, json_object,
                       note_audit, public, requires)
from .web.dicomweb.wado import retrieve_frames, retrieve_metadata
from .web.keys import PLUGIN_API

__all__ = ["Actor", "InstanceRow", "Job", "JobFailed", "Migration", "PluginJobs", "PluginAPI", "PluginSchema", "RateLimiter",
           "Resource",
           "StoreOutcome", "api_of", "authenticated", "client_device", "client_ip",
           "current_actor", "errors", "json_object", "hookimpl", "note_audit", "open_api", "public",
           "requires", "retrieve_frames", "retrieve_metadata"]


def api_of(request: web.Request) -> PluginAPI:
    """The :class:`PluginAPI` of the server handling ``request``."""
    return request.app[PLUGIN_API]


@contextlib.asynccontextmanager
async def open_api(settings: Settings) -> AsyncIterator[PluginAPI]:
    """Open the archive of ``settings`` (with installed plugins' tables migrated) for a
    CLI command; audit events are written at once. ``async with open_api(s) as api:``"""
    from .plugins import Plugins
    from .services import (Archive, AuditTrail, IngestService, QueryService,
                           RetrieveService)

    plugins = Plugins()
    plugins.load(settings.plugins)
    archive = Archive.open(settings, plugins)
    audit = AuditTrail(archive.catalogue, immediate=True)
    try:
        yield PluginAPI(archive, IngestService(archive), QueryService(archive),
                        RetrieveService(archive), audit)
    finally:
        archive.close()
