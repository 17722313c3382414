"""L4: the service layer. Adapters (web/, dimse/) call only this package.

:class:`Archive` bundles the opened store, catalogue and worker pool; the ingest,
retrieve and query services are thin classes over it so every adapter (STOW-RS, C-STORE,
folder import, WADO-RS, WADO-URI, C-GET, C-MOVE) shares one ingest path and one retrieve
path (ARCHITECTURE "The two paths").
"""
from .archive import Archive
from .ingest import IngestService, StagedFile
from .query import QueryService
from .retrieve import RetrieveService

__all__ = ["Archive", "IngestService", "QueryService", "RetrieveService", "StagedFile"]
