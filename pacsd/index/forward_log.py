"""Store-and-forward bookkeeping: the send / receive log and the upload clocks (R-B2, R-B3,
R-A9; tables in ``forward_schema.py``).

Plain storage, one transaction per call through :meth:`Catalogue.run_write`; the routing
decisions, sending and alerting live in ``pacsd.services.forward``. Times are POSIX seconds
from the caller's clock.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from pacsd.errors import BadRequest
from pacsd.index.catalogue import Catalogue
from pacsd.index.engine import translate_errors
from pacsd.index.forward_schema import forward_items, forward_studies

ERROR_CHARS = 500


@dataclass(frozen=True)
class Arrival:
    """One stored instance routed to ``destination``."""

    destination: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    calling_aet: str = ""


@dataclass(frozen=True)
class PendingItem:
    pk: int
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str


class ForwardLog:
    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    # --- receive side -------------------------------------------------------------------
    def record_arrivals(self, arrivals: list[Arrival], now: float,
                        then: Callable[[sa.Connection], None] | None = None) -> None:
        """Log the instances as received and pending, start (or re-open) each study's
        upload clock, and run ``then(conn)`` (queue the forwarding job) in the same
        transaction. An instance already pending or sent to a destination is set
        pending again (it was stored anew, e.g. after a delete)."""
        def fn(conn: sa.Connection) -> None:
            for a in arrivals:
                item = conn.execute(sa.select(forward_items.c.pk).where(
                    forward_items.c.destination == a.destination,
                    forward_items.c.sop_uid == a.sop_uid)).first()
                values = dict(study_uid=a.study_uid, series_uid=a.series_uid,
                              sop_class_uid=a.sop_class_uid, calling_aet=a.calling_aet,
                              received_at=now, state="pending", sent_at=None,
                              last_error="")
                if item is None:
                    conn.execute(sa.insert(forward_items).values(
                        destination=a.destination, sop_uid=a.sop_uid, attempts=0,
                        **values))
                else:
                    conn.execute(sa.update(forward_items).where(
                        forward_items.c.pk == item.pk).values(**values))
                study = conn.execute(sa.select(forward_studies.c.pk,
                                               forward_studies.c.delivered_at).where(
                    forward_studies.c.destination == a.destination,
                    forward_studies.c.study_uid == a.study_uid)).first()
                if study is None:
                    conn.execute(sa.insert(forward_studies).values(
                        destination=a.destination, study_uid=a.study_uid,
                        first_received_at=now, last_received_at=now, last_error=""))
                else:
                    reopen = {}
                    if study.delivered_at is not None:
                        # Delivered before, more arrived: a new upload from now on.
                        reopen = dict(first_received_at=now, delivered_at=None,
                                      alerted_at=None)
                    conn.execute(sa.update(forward_studies).where(
                        forward_studies.c.pk == study.pk).values(
                        last_received_at=now, **reopen))
            if then is not None:
                then(conn)
        self.catalogue.run_write("logging received instances", fn)

    # --- send side ----------------------------------------------------------------------
    def pending(self, destination: str, study_uid: str) -> list[PendingItem]:
        q = sa.select(forward_items.c.pk, forward_items.c.study_uid,
                      forward_items.c.series_uid, forward_items.c.sop_uid,
                      forward_items.c.sop_class_uid).where(
            forward_items.c.destination == destination,
            forward_items.c.study_uid == study_uid,
            forward_items.c.state == "pending").order_by(forward_items.c.pk)
        with translate_errors("reading the forwarding log"), \
                self.catalogue.engine.connect() as conn:
            return [PendingItem(*r) for r in conn.execute(q)]

    def mark_sent(self, pks: list[int], now: float) -> None:
        if not pks:
            return

        def fn(conn: sa.Connection) -> None:
            conn.execute(sa.update(forward_items).where(forward_items.c.pk.in_(pks)).values(
                state="sent", sent_at=now, attempts=forward_items.c.attempts + 1,
                last_error=""))
        self.catalogue.run_write("logging sent instances", fn)

    def mark_gone(self, pks: list[int], reason: str) -> None:
        """Instances deleted from the archive before they were sent: nothing to send."""
        if not pks:
            return

        def fn(conn: sa.Connection) -> None:
            conn.execute(sa.update(forward_items).where(forward_items.c.pk.in_(pks)).values(
                state="gone", last_error=reason[:ERROR_CHARS]))
        self.catalogue.run_write("logging instances not sent", fn)

    def mark_failed_attempt(self, destination: str, study_uid: str, pks: list[int],
                            reason: str) -> None:
        reason = reason[:ERROR_CHARS]

        def fn(conn: sa.Connection) -> None:
            if pks:
                conn.execute(sa.update(forward_items).where(
                    forward_items.c.pk.in_(pks)).values(
                    attempts=forward_items.c.attempts + 1, last_error=reason))
            conn.execute(sa.update(forward_studies).where(
                forward_studies.c.destination == destination,
                forward_studies.c.study_uid == study_uid).values(last_error=reason))
        self.catalogue.run_write("logging a failed send", fn)

    def finish_study(self, destination: str, study_uid: str, now: float) -> dict | None:
        """Stop the upload clock when nothing of the study is pending for the destination;
        returns the study row (first_received_at, delivered_at, alerted_at, sent count)
        when this call delivered it, else None."""
        def fn(conn: sa.Connection) -> dict | None:
            left = conn.scalar(sa.select(sa.func.count()).select_from(forward_items).where(
                forward_items.c.destination == destination,
                forward_items.c.study_uid == study_uid, forward_items.c.state == "pending"))
            if left:
                return None
            row = conn.execute(sa.select(forward_studies).where(
                forward_studies.c.destination == destination,
                forward_studies.c.study_uid == study_uid,
                forward_studies.c.delivered_at.is_(None))).first()
            if row is None:
                return None
            conn.execute(sa.update(forward_studies).where(
                forward_studies.c.pk == row.pk).values(delivered_at=now, last_error=""))
            sent = conn.scalar(sa.select(sa.func.count()).select_from(forward_items).where(
                forward_items.c.destination == destination,
                forward_items.c.study_uid == study_uid, forward_items.c.state == "sent"))
            return {"pk": row.pk, "first_received_at": row.first_received_at,
                    "delivered_at": now, "alerted_at": row.alerted_at, "sent": sent}
        return self.catalogue.run_write("closing an upload clock", fn)

    # --- SLA (R-A9) ---------------------------------------------------------------------
    def newly_overdue(self, deadline: float, now: float) -> list[dict]:
        """Open studies whose first arrival is before ``deadline`` and that were not
        alerted yet; they are marked alerted (one alert per upload)."""
        def fn(conn: sa.Connection) -> list[dict]:
            rows = conn.execute(sa.select(forward_studies).where(
                forward_studies.c.delivered_at.is_(None),
                forward_studies.c.alerted_at.is_(None),
                forward_studies.c.first_received_at < deadline)).all()
            if rows:
                conn.execute(sa.update(forward_studies).where(
                    forward_studies.c.pk.in_([r.pk for r in rows])).values(alerted_at=now))
            return [_study(r) for r in rows]
        return self.catalogue.run_write("checking forwarding deadlines", fn)

    def overdue(self, deadline: float, limit: int = 100) -> list[dict]:
        """Open studies whose upload clock started before ``deadline``, oldest first."""
        q = sa.select(forward_studies).where(
            forward_studies.c.delivered_at.is_(None),
            forward_studies.c.first_received_at < deadline).order_by(
            forward_studies.c.first_received_at).limit(limit)
        with translate_errors("reading the forwarding log"), \
                self.catalogue.engine.connect() as conn:
            return [_study(r) for r in conn.execute(q)]

    def studies(self, *, destination: str | None = None, study_uid: str | None = None,
                limit: int = 100) -> list[dict]:
        q = sa.select(forward_studies).order_by(forward_studies.c.pk.desc()).limit(limit)
        if destination is not None:
            q = q.where(forward_studies.c.destination == destination)
        if study_uid is not None:
            q = q.where(forward_studies.c.study_uid == study_uid)
        with translate_errors("reading the forwarding log"), \
                self.catalogue.engine.connect() as conn:
            return [_study(r) for r in conn.execute(q)]

    def recent_deliveries(self, limit: int = 20) -> list[dict]:
        """The last delivered studies, newest first (with their upload clocks)."""
        q = sa.select(forward_studies).where(forward_studies.c.delivered_at.is_not(None)
                                             ).order_by(forward_studies.c.delivered_at.desc()
                                                        ).limit(limit)
        with translate_errors("reading the forwarding log"), \
                self.catalogue.engine.connect() as conn:
            return [_study(r) for r in conn.execute(q)]

    def upload_times(self, since: float) -> dict[str, list[float]]:
        """destination -> upload times (delivered - first received, seconds) of the
        studies delivered since ``since``."""
        q = sa.select(forward_studies.c.destination, forward_studies.c.first_received_at,
                      forward_studies.c.delivered_at).where(
            forward_studies.c.delivered_at >= since)
        out: dict[str, list[float]] = {}
        with translate_errors("reading the forwarding log"), \
                self.catalogue.engine.connect() as conn:
            for dest, first, delivered in conn.execute(q):
                out.setdefault(dest, []).append(delivered - first)
        return out

    def item_counts(self) -> dict[str, dict[str, int]]:
        """destination -> item state -> count."""
        q = sa.select(forward_items.c.destination, forward_items.c.state,
                      sa.func.count()).group_by(forward_items.c.destination,
                                                forward_items.c.state)
        out: dict[str, dict[str, int]] = {}
        with translate_errors("reading the forwarding log"), \
                self.catalogue.engine.connect() as conn:
            for dest, state, n in conn.execute(q):
                out.setdefault(dest, {})[state] = n
        return out

    def items(self, *, destination: str | None = None, study_uid: str | None = None,
              state: str | None = None, limit: int = 100, after: int | None = None
              ) -> list[dict]:
        """The send / receive log, newest first."""
        if state is not None and state not in ("pending", "sent", "gone"):
            raise BadRequest("state is one of pending, sent, gone")
        q = sa.select(forward_items).order_by(forward_items.c.pk.desc()).limit(limit)
        if destination is not None:
            q = q.where(forward_items.c.destination == destination)
        if study_uid is not None:
            q = q.where(forward_items.c.study_uid == study_uid)
        if state is not None:
            q = q.where(forward_items.c.state == state)
        if after is not None:
            q = q.where(forward_items.c.pk < after)
        with translate_errors("reading the forwarding log"), \
                self.catalogue.engine.connect() as conn:
            return [{str(c.name): getattr(r, c.name) for c in forward_items.c}
                    for r in conn.execute(q)]


def _study(row: sa.Row) -> dict:
    return {"id": row.pk, "destination": row.destination, "study_uid": row.study_uid,
            "first_received_at": row.first_received_at,
            "last_received_at": row.last_received_at, "delivered_at": row.delivered_at,
            "alerted_at": row.alerted_at, "last_error": row.last_error}
