"""Who a DIMSE peer is, what it may do, and the audit of what it did (SEC-18, R-E3, R-E4,
MLPS 7, 9).

DICOM has no user authentication: the identity of an association is its calling AE title
and source address, mapped to an :class:`~pacsd.services.security.Actor` once per
association by ``SecurityService.actor_from_association`` (``actor_from_association``
plugins first, then ``[dimse] actors``). Each operation is then authorised by the *same*
decision as HTTP (``SecurityService.permission_allowed``: roles, plugins' vetoes):
C-STORE needs ``write``; C-FIND, C-GET and C-MOVE need ``read``. Refusals raise
:class:`pacsd.errors.Forbidden` (status 0x0124) and are audited as ``permission-denied``.
The actor is then passed to the services, whose data scope applies exactly as for
DICOMweb (services/scoping.py).

Audit: C-FIND is a ``query`` event; C-GET / C-MOVE one ``study-read`` event per study
(objects sent, and the C-MOVE destination); C-STORE one ``instances-stored`` event per
study and association (count, calling AE, where stored), written when the association
closes, so a 1000-image CT is one record, as with one STOW-RS request.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any

from .. import errors
from ..services.audit import store_location
from ..services.security import Actor, Resource


class DimseAccess:
    """Per-server state: actors per association and the C-STORE audit tallies."""

    def __init__(self, security: Any, audit: Any, *, fixed_actor: Actor | None = None
                 ) -> None:
        """``fixed_actor``: every association acts for this actor, already authorised —
        the operator who started ``pacsd import --from-peer`` receiving the C-STOREs of
        its own C-GET (``security`` may then be None)."""
        self.security = security
        self.audit = audit
        self.fixed_actor = fixed_actor
        self._lock = threading.Lock()
        self._actors: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._stored: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @staticmethod
    def peer(assoc) -> tuple[str, str, str]:
        """(calling AE, source address, called AE) of an association."""
        req = assoc.requestor
        return ((req.ae_title or "").strip(), str(req.address or ""),
                (assoc.acceptor.ae_title or "").strip())

    def actor(self, assoc) -> Actor | None:
        if self.fixed_actor is not None:
            return self.fixed_actor
        with self._lock:
            if assoc in self._actors:
                return self._actors[assoc]
        calling, address, called = self.peer(assoc)
        actor = self.security.actor_from_association(calling, address, called)
        with self._lock:
            self._actors[assoc] = actor
        return actor

    def authorize(self, event, action: str, service: str) -> Actor:
        """The association's actor, allowed ``action``; Forbidden (0x0124) otherwise."""
        assoc = event.assoc
        if self.fixed_actor is not None:
            return self.fixed_actor
        actor = self.actor(assoc)
        calling, address, _ = self.peer(assoc)
        resource = Resource(route=f"dimse:{service}", method=service)
        if actor is not None and self.security.permission_allowed(actor, action, resource):
            return actor
        self.audit.record("permission-denied", outcome="denied", actor=actor,
                          source_ip=address, device=calling, detail={
                              "action": action, "route": resource.route, "method": service,
                              "reason": "unknown AE or address" if actor is None
                              else "not authorised"})
        raise errors.Forbidden("this AE is not authorised for " + service)

    def record(self, event, event_type: str, actor: Actor | None, *, outcome: str = "success",
               study_uid: str | None = None, object_count: int | None = None,
               location: str = "", **detail) -> None:
        calling, address, _ = self.peer(event.assoc)
        self.audit.record(event_type, outcome=outcome, actor=actor, source_ip=address,
                          device=calling, study_uid=study_uid, object_count=object_count,
                          location=location, detail=detail)

    # --- C-STORE tallies ------------------------------------------------------------------
    def stored(self, event, study_uid: str) -> None:
        with self._lock:
            tally = self._stored.setdefault(event.assoc, {})
            tally[study_uid] = tally.get(study_uid, 0) + 1

    def closed(self, event, store) -> None:
        """EVT_CONN_CLOSE: write the association's archive audit (one event per study)."""
        with self._lock:
            tally = self._stored.pop(event.assoc, None)
            actor = self._actors.get(event.assoc)
        if not tally:
            return
        location = store_location(store)
        for study, count in tally.items():
            self.record(event, "instances-stored", actor, study_uid=study,
                        object_count=count, location=location, service="C-STORE")
