"""The append-only, hash-chained audit trail (R-E3, R-E4, MLPS 9-11, SEC-22).

Each row's ``hash`` is SHA-256 over a canonical JSON form of the row (every column but
``hash``), which includes ``prev_hash``, the previous row's hash (the first row's is 64
zeros). ``seq`` is assigned here without gaps. ``audit_head`` holds the last ``seq`` and
``hash``; it is locked (``SELECT .. FOR UPDATE`` on PostgreSQL; SQLite's write lock) and
updated in the same transaction as the batch, so appenders in several pacsd processes
extend one chain in turn and the chain can never fork.

:meth:`AuditLog.verify` walks the whole trail: a row changed in place (its hash no longer
matches), a row deleted in the middle (a gap in ``seq`` and a broken ``prev_hash``) or
at the tail (``audit_head`` points past the last row) are all detected. Someone with
write access to the database could rewrite the chain and the head together; protecting
against that needs the chain anchored outside the database (syslog export to the SOC,
MLPS 13, a later slice), which is why ``verify`` also reports the head hash to record
elsewhere.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import sqlalchemy as sa

from pacsd.index.catalogue import Catalogue
from pacsd.index.engine import translate_errors
from pacsd.index.security_schema import audit_events, audit_head

GENESIS = "0" * 64
#: The hashed columns, in the order they appear in the canonical form.
FIELDS = ("seq", "event_time", "event_type", "outcome", "actor", "actor_name", "source_ip",
          "device", "study_uid", "object_count", "location", "detail", "prev_hash")


def canonical(row: dict) -> bytes:
    """The bytes hashed for one row: a JSON object of :data:`FIELDS`, sorted keys."""
    return orjson.dumps({k: row.get(k) for k in FIELDS}, option=orjson.OPT_SORT_KEYS)


def row_hash(row: dict) -> str:
    return hashlib.sha256(canonical(row)).hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    rows: int
    head_seq: int
    head_hash: str
    #: seq of the first row found wrong (or where a row is missing), None when ok.
    bad_seq: int | None = None
    problem: str = ""


class AuditLog:
    """Rows of ``audit_events`` (append, read, verify); never updated or deleted here."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.engine = catalogue.engine

    def append(self, events: list[dict]) -> int:
        """Append ``events`` (dicts of the non-chain columns) in one transaction;
        returns the new last ``seq``."""
        if not events:
            return 0

        def tx(conn: sa.Connection) -> int:
            head = conn.execute(sa.select(audit_head.c.last_seq, audit_head.c.last_hash)
                                .where(audit_head.c.id == 1).with_for_update()).first()
            if head is None:
                # First append ever: two processes racing here collide on the primary
                # key; the catalogue's write helper runs the loser's transaction again.
                conn.execute(sa.insert(audit_head).values(id=1, last_seq=0,
                                                          last_hash=GENESIS))
                seq, prev = 0, GENESIS
            else:
                seq, prev = head.last_seq, head.last_hash
            rows = []
            for ev in events:
                seq += 1
                row = {k: ev.get(k) for k in FIELDS if k not in ("seq", "prev_hash")}
                row.update(seq=seq, prev_hash=prev)
                for k in ("actor_name", "source_ip", "device", "location"):
                    row[k] = row[k] or ""
                row["detail"] = row["detail"] or "{}"
                row["hash"] = prev = row_hash(row)
                rows.append(row)
            conn.execute(sa.insert(audit_events), rows)
            conn.execute(sa.update(audit_head).where(audit_head.c.id == 1)
                         .values(last_seq=seq, last_hash=prev))
            return seq

        return self.catalogue.run_write("writing the audit trail", tx)

    def query(self, *, since: str | None = None, event_type: str | None = None,
              after_seq: int | None = None, limit: int = 100) -> list[dict]:
        """Events in ``seq`` order; ``since`` is an ISO 8601 UTC time as stored."""
        stmt = sa.select(audit_events).order_by(audit_events.c.seq).limit(limit)
        if since:
            stmt = stmt.where(audit_events.c.event_time >= since)
        if event_type:
            stmt = stmt.where(audit_events.c.event_type == event_type)
        if after_seq is not None:
            stmt = stmt.where(audit_events.c.seq > after_seq)
        with translate_errors("reading the audit trail"), self.engine.connect() as conn:
            return [{str(k): v for k, v in r._mapping.items()} for r in conn.execute(stmt)]

    def _iter_all(self) -> Iterator[dict]:
        stmt = sa.select(audit_events).order_by(audit_events.c.seq)
        with translate_errors("reading the audit trail"), self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=1000).execute(stmt)
            for r in result:
                yield {str(k): v for k, v in r._mapping.items()}

    def verify(self) -> VerifyResult:
        """Walk the chain from the first row; see the module docstring."""
        with translate_errors("reading the audit trail"), self.engine.connect() as conn:
            head = conn.execute(sa.select(audit_head.c.last_seq, audit_head.c.last_hash)
                                .where(audit_head.c.id == 1)).first()
        head_seq, head_hash = (head.last_seq, head.last_hash) if head else (0, GENESIS)
        expected_seq, prev, n = 1, GENESIS, 0
        for row in self._iter_all():
            n += 1
            if row["seq"] != expected_seq:
                return VerifyResult(False, n, head_seq, head_hash, expected_seq,
                                    f"row {expected_seq} is missing")
            if row["prev_hash"] != prev:
                return VerifyResult(False, n, head_seq, head_hash, row["seq"],
                                    "the link to the previous row is broken")
            if row_hash(row) != row["hash"]:
                return VerifyResult(False, n, head_seq, head_hash, row["seq"],
                                    "the row was modified")
            prev = row["hash"]
            expected_seq += 1
        last_seq = expected_seq - 1
        if last_seq != head_seq or prev != head_hash:
            return VerifyResult(False, n, head_seq, head_hash, last_seq + 1,
                                "rows at the end of the trail are missing"
                                if last_seq < head_seq else "the trail head does not match")
        return VerifyResult(True, n, head_seq, head_hash)
