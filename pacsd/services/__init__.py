"""L4: the service layer. Adapters (web/, dimse/) call only this package.

:class:`Archive` bundles the opened store, catalogue and worker pool; the ingest,
retrieve and query services are thin classes over it so every adapter (STOW-RS, C-STORE,
folder import, WADO-RS, WADO-URI, C-GET, C-MOVE) shares one ingest path and one retrieve
path (ARCHITECTURE "The two paths"). ``security`` (identity, authentication, the one
authorization decision) and ``audit`` (the batched, hash-chained audit trail) serve every
adapter the same way.
"""
from .archive import Archive
from .audit import AuditTrail
from .ingest import IngestService, StagedFile
from .query import QueryService
from .retrieve import RetrieveService
from .security import Actor, Resource, SecurityService

__all__ = ["Actor", "Archive", "AuditTrail", "IngestService", "QueryService", "Resource",
           "RetrieveService", "SecurityService", "StagedFile"]
