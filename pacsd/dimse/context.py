"""What every DIMSE handler needs: settings, the services and the bridge to their loop."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..services import IngestService, QueryService, RetrieveService
from .bridge import Bridge


@dataclass
class ScpContext:
    settings: Settings
    bridge: Bridge
    ingest: IngestService
    query: QueryService
    retrieve: RetrieveService
    #: C-MOVE destinations: AE title -> (host, port) (SEC-18).
    peers: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: Identity, authorization and audit of the peers (``access.DimseAccess``).
    access: Any = None

    @property
    def ae_title(self) -> str:
        return self.settings.server.ae_title

    @property
    def page_size(self) -> int:
        """Rows per index query while C-FIND pages through all matches."""
        return max(1, self.settings.dicomweb.qido_max_limit)

    @property
    def dicomweb_base(self) -> str:
        """Absolute DICOMweb base for RetrieveURL, or '' when no public URL is set
        (a DIMSE peer has no request Host to derive one from)."""
        public = self.settings.server.public_url.rstrip("/")
        return public + self.settings.dicomweb.root.rstrip("/") if public else ""
