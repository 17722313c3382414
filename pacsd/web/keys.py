"""Typed application keys (aiohttp AppKey): app state without module globals."""
from __future__ import annotations

from aiohttp import web

from ..services import Archive, IngestService, QueryService, RetrieveService

ARCHIVE = web.AppKey("archive", Archive)
INGEST = web.AppKey("ingest", IngestService)
QUERY = web.AppKey("query", QueryService)
RETRIEVE = web.AppKey("retrieve", RetrieveService)
