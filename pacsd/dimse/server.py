"""The DIMSE listener inside ``pacsd serve``: one pynetdicom AE over the opened archive.

:class:`DimseServer` is started by ``pacsd.server.run`` once the HTTP site listens (the
archive is open by then) and stopped before the web application is cleaned up: stop
accepting, let associations in flight finish for up to ``shutdown_timeout_s`` (their
handlers still need the event loop and the archive, see ``bridge.py``), abort the rest.

pynetdicom runs the accept loop in its own thread and each association in another; the
handlers here are plain functions bound with the :class:`ScpContext`. Process-wide
pynetdicom switches set at start, and why:

* ``LOG_REQUEST_IDENTIFIERS`` / ``LOG_RESPONSE_IDENTIFIERS`` off: pynetdicom would log
  every C-FIND/C-GET/C-MOVE identifier (patient names, IDs) at INFO (SEC-23);
* ``LOG_HANDLER_LEVEL`` "none": no per-PDU / per-message log handlers (their messages
  are formatted eagerly, a cost on every PDU, and summarise message contents);
* the ``pynetdicom`` logger defaults to WARNING (one INFO line per PDU otherwise) unless
  it was configured explicitly.
"""
from __future__ import annotations

import asyncio
import logging
import socketserver
import threading
import time

from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom.transport import ThreadedAssociationServer

from .. import __version__, tls
from ..config import ConfigError, Settings
from ..services import (AuditTrail, IngestService, QueryService, RetrieveService,
                        SecurityService)
from .access import DimseAccess
from .bridge import Bridge
from .cfind import handle_find
from .context import ScpContext
from .commitment import commitment_context, handle_action
from .contexts import supported_contexts
from .cretrieve import handle_get, handle_move
from .cstore import handle_echo, handle_store
from .net import PacsdAE, Policy, RequestHandler, on_requested

log = logging.getLogger(__name__)


def configure_pynetdicom() -> None:
    """The process-wide switches of the module docstring."""
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    pnd_log = logging.getLogger("pynetdicom")
    if pnd_log.level == logging.NOTSET:
        pnd_log.setLevel(logging.WARNING)


def check_exposure(settings: Settings) -> None:
    """SEC-20 for DIMSE: DICOM has no user authentication, so a listener reachable from
    other hosts must at least name who may associate (calling AE titles and/or source
    addresses). Loopback (the default) needs neither."""
    d = settings.dimse
    if settings.http_is_loopback() or d.allowed_calling_aets or d.allowed_source_ips:
        return
    raise ConfigError(
        "refusing to listen for DICOM on a non-loopback address with no [dimse] "
        "allowed_calling_aets or allowed_source_ips; list the modalities that may "
        "connect, or set [server] dicom_port = 0")


class DimseServer:
    """C-ECHO, C-STORE, C-FIND, C-GET and C-MOVE SCP on ``[server] dicom_port``."""

    def __init__(self, settings: Settings, *, ingest: IngestService, query: QueryService,
                 retrieve: RetrieveService, loop: asyncio.AbstractEventLoop,
                 security: SecurityService, audit: AuditTrail) -> None:
        settings.dimse.check()
        self.settings = settings
        self.ctx = ScpContext(settings=settings, bridge=Bridge(loop), ingest=ingest,
                              query=query, retrieve=retrieve,
                              peers=settings.dimse.peer_addresses(),
                              access=DimseAccess(security, audit))
        self._servers: list[tuple[ThreadedAssociationServer, threading.Thread]] = []
        self.port: int = 0      # the plain DICOM listener's bound port (0: none)
        self.tls_port: int = 0  # the DICOM-over-TLS listener's (0: none)

    def _make_ae(self) -> PacsdAE:
        s, d = self.settings.server, self.settings.dimse
        ae = PacsdAE(ae_title=s.ae_title)
        ae.policy = Policy(d.source_networks(), d.max_pdu, d.network_timeout_s)
        ae.implementation_version_name = f"PACSD_{__version__}"[:16]
        ae.maximum_associations = d.max_associations
        ae.maximum_pdu_size = d.max_pdu
        ae.acse_timeout = d.acse_timeout_s
        ae.dimse_timeout = d.dimse_timeout_s
        ae.network_timeout = d.network_timeout_s
        ae.connection_timeout = d.acse_timeout_s  # connecting to a C-MOVE destination
        ae.require_calling_aet = [a.strip() for a in d.allowed_calling_aets if a.strip()]
        ae.require_called_aet = True  # A-ASSOCIATE-RJ reason 7 (SEC-18)
        return ae

    def start(self) -> int:
        """Listen on the HTTP host (loopback by default, SEC-20) on ``dicom_port`` and,
        with TLS, ``dicom_tls_port``; returns the plain port (else the TLS one)."""
        check_exposure(self.settings)
        configure_pynetdicom()
        host, _ = self.settings.http_host_port
        ctx = self.ctx
        handlers = [
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [ctx]),
            (evt.EVT_C_FIND, handle_find, [ctx]),
            (evt.EVT_C_GET, handle_get, [ctx]),
            (evt.EVT_C_MOVE, handle_move, [ctx]),
            (evt.EVT_N_ACTION, handle_action, [ctx]),  # Storage Commitment (commitment.py)
            (evt.EVT_CONN_CLOSE, _closed, [ctx]),
        ]
        ae = self._make_ae()
        handlers.append((evt.EVT_REQUESTED, on_requested, [ae.policy]))
        listeners = []
        if self.settings.server.dicom_port:
            listeners.append((self.settings.server.dicom_port, None))
        if self.settings.server.dicom_tls_port:  # DICOM over TLS (pacsd/tls.py)
            listeners.append((self.settings.server.dicom_tls_port,
                              tls.server_context(self.settings, client_ca=True)))
        for port, ssl_context in listeners:
            try:
                server = ae.make_server(
                    (host, port), ae_title=self.settings.server.ae_title,
                    contexts=supported_contexts() + [commitment_context()],
                    ssl_context=ssl_context, evt_handlers=handlers,
                    server_class=ThreadedAssociationServer, request_handler=RequestHandler)
            except OSError as exc:
                self.stop(0)
                raise ConfigError(f"cannot listen for DICOM on {host}:{port}: "
                                  f"{exc.strerror or type(exc).__name__}") from None
            thread = threading.Thread(target=server.serve_forever, name="pacsd-dimse",
                                      daemon=True)
            thread.start()
            self._servers.append((server, thread))
            bound = int(server.server_address[1])
            if ssl_context is None:
                self.port = bound
            else:
                self.tls_port = bound
            log.info("pacsd DIMSE%s listening on %s:%d as AE %s",
                     " (TLS)" if ssl_context else "", host, bound,
                     self.settings.server.ae_title)
        return self.port or self.tls_port

    @property
    def active_associations(self) -> int:
        return sum(len(server.active_associations) for server, _ in self._servers)

    def stop(self, timeout: float) -> None:
        """Blocking: run it off the event loop (``asyncio.to_thread``), which must keep
        running meanwhile to serve the associations' service calls."""
        servers, self._servers = self._servers, []
        for server, _ in servers:
            socketserver.BaseServer.shutdown(server)  # no new associations
            server.server_close()
        # Only established associations can have work in flight. A connection that never
        # sent its A-ASSOCIATE-RQ would hold pynetdicom's thread until acse_timeout_s:
        # it is simply dropped (the association threads are daemons).
        deadline = time.monotonic() + timeout
        while any(_established(s) for s, _ in servers) and time.monotonic() < deadline:
            time.sleep(0.05)
        for server, thread in servers:
            left = _established(server)
            if left:
                log.warning("%d DIMSE association(s) still open after %ss; aborting them",
                            len(left), timeout)
                for assoc in left:
                    assoc.abort()
            thread.join(5)
        if servers:
            log.info("pacsd DIMSE stopped")


def _closed(event, ctx: ScpContext) -> None:
    """The archive audit of the association's C-STOREs (access.py)."""
    try:
        ctx.access.closed(event, ctx.ingest.archive.store)
    except Exception:  # noqa: BLE001 - never break pynetdicom's close path
        log.error("ALARM: the C-STORE audit of an association could not be queued",
                  exc_info=True)


def _established(server: ThreadedAssociationServer) -> list:
    return [a for a in server.active_associations if a.is_established]
