"""L5: the DIMSE adapter — a thin pynetdicom layer over ``pacsd.services``.

C-ECHO, C-STORE (every storage SOP class, stored byte for byte through the one ingest
path), C-FIND (QIDO-RS matching), C-GET and C-MOVE (the one retrieve path), inside the
``pacsd serve`` process. Errors become statuses in ``status.py`` only. Conformance
statement: docs/dimse-conformance.md.

Public API: :class:`DimseServer` (started and stopped by ``pacsd.server``).
"""
from .server import DimseServer

__all__ = ["DimseServer"]
