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
against that needs the chain anchored outside the database (the syslog export to the SOC,
``services/audit_syslog.py``, MLPS 13), which is why ``verify`` also reports the head
hash to record elsewhere.

Retention (MLPS 13): :meth:`AuditLog.prune` deletes the oldest rows up to a time bound
and, in the same transaction, moves the chain's start (``audit_anchor``, migration 7) to
the last deleted row's ``seq`` and ``hash``; ``verify`` then starts there, so a pruned
trail still verifies while a row deleted any other way still breaks it. Filters for the
auditor's page and exports are an :class:`AuditFilter`.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import orjson
import sqlalchemy as sa

from pacsd.index.catalogue import Catalogue
from pacsd.index.engine import translate_errors
from pacsd.index.audit_schema import audit_anchor, audit_cursors
from pacsd.index.schema import patients, studies
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


@dataclass(frozen=True)
class AuditFilter:
    """What to read: every field narrows the result; ``None`` = no restriction.

    ``since`` / ``until`` are ISO 8601 UTC texts as stored (``until`` exclusive);
    ``actor`` matches the actor id (``user:3``) or the user name; ``study_uids`` an
    explicit set of studies (an empty tuple matches nothing: a patient without studies);
    ``after_seq`` / ``before_seq`` page through ``seq``; ``descending`` reads newest first.
    """
    since: str | None = None
    until: str | None = None
    event_types: tuple[str, ...] = ()
    actor: str | None = None
    outcome: str | None = None
    study_uids: tuple[str, ...] | None = None
    after_seq: int | None = None
    before_seq: int | None = None
    descending: bool = False
    limit: int | None = 100

    def statement(self) -> sa.Select:
        t = audit_events
        order = t.c.seq.desc() if self.descending else t.c.seq
        stmt = sa.select(t).order_by(order)
        if self.limit is not None:
            stmt = stmt.limit(self.limit)
        if self.since:
            stmt = stmt.where(t.c.event_time >= self.since)
        if self.until:
            stmt = stmt.where(t.c.event_time < self.until)
        if self.event_types:
            stmt = stmt.where(t.c.event_type.in_(self.event_types))
        if self.actor:
            stmt = stmt.where(sa.or_(t.c.actor == self.actor, t.c.actor_name == self.actor))
        if self.outcome:
            stmt = stmt.where(t.c.outcome == self.outcome)
        if self.study_uids is not None:
            stmt = stmt.where(t.c.study_uid.in_(self.study_uids) if self.study_uids
                              else sa.false())
        if self.after_seq is not None:
            stmt = stmt.where(t.c.seq > self.after_seq)
        if self.before_seq is not None:
            stmt = stmt.where(t.c.seq < self.before_seq)
        return stmt


@dataclass(frozen=True)
class Anchor:
    """Where the chain starts (after pruning): the last pruned row's seq and hash."""
    seq: int = 0
    hash: str = GENESIS
    pruned_before: str = ""
    pruned_rows: int = 0


#: The statements of every append, built once: the flusher appends ten times a second
#: under load, and building them was most of its time (issue 6 STOW profile, session 5).
_HEAD = (sa.select(audit_head.c.last_seq, audit_head.c.last_hash)
         .where(audit_head.c.id == 1).with_for_update())
_INSERT = sa.insert(audit_events)
_MOVE_HEAD = (sa.update(audit_head).where(audit_head.c.id == 1)
              .values(last_seq=sa.bindparam("b_seq"), last_hash=sa.bindparam("b_hash")))

#: The columns of an appended row, in insert order.
_ROW_COLUMNS = FIELDS + ("hash",)


class _DriverSql:
    """The append statements as driver SQL of one dialect, run on the transaction's DBAPI
    cursor (R-H1: SQLAlchemy's per-row parameter processing of the batch insert and its
    per-statement execution were ~9 % of a QIDO worker's GIL time at c=16, one audit row
    per request). Named parameters on both drivers (SQLite ``:name``, psycopg
    ``%(name)s``); the columns are plain text and integers (no bind processors: checked,
    else the SQLAlchemy statements run). The transaction stays the SQLAlchemy
    connection's; driver errors are raised as SQLAlchemy wraps them, so the catalogue's
    retry rules and ``translate_errors`` see what they saw before."""

    def __init__(self, dialect_name: str) -> None:
        from sqlalchemy.dialects import postgresql, sqlite
        dialect = (sqlite.dialect(paramstyle="named") if dialect_name == "sqlite"
                   else postgresql.psycopg.dialect(paramstyle="pyformat"))
        one = sa.bindparam("b_id", type_=sa.Integer)
        head = (sa.select(audit_head.c.last_seq, audit_head.c.last_hash)
                .where(audit_head.c.id == one).with_for_update())
        insert = sa.insert(audit_events).values(
            {c: sa.bindparam(c, type_=audit_events.c[c].type) for c in _ROW_COLUMNS})
        move = (sa.update(audit_head).where(audit_head.c.id == one)
                .values(last_seq=sa.bindparam("b_seq", type_=audit_head.c.last_seq.type),
                        last_hash=sa.bindparam("b_hash", type_=audit_head.c.last_hash.type)))
        compiled = [stmt.compile(dialect=dialect) for stmt in (head, insert, move)]
        if any(c._bind_processors for c in compiled):
            raise ValueError("bind processors")  # not expected: the SQLAlchemy path runs
        self.head, self.insert, self.move = (c.string for c in compiled)


_DRIVER: dict[str, _DriverSql | None] = {}


def _driver_sql(dialect_name: str) -> _DriverSql | None:
    if dialect_name not in _DRIVER:
        try:
            _DRIVER[dialect_name] = _DriverSql(dialect_name)
        except ValueError:
            _DRIVER[dialect_name] = None
    return _DRIVER[dialect_name]


def _chain(events: list[dict], seq: int, prev: str) -> list[dict]:
    """The rows of ``events`` appended after (``seq``, ``prev``): numbered, linked, hashed."""
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
    return rows


def _append_driver(conn: sa.Connection, driver: _DriverSql, events: list[dict]) -> int:
    """The append of :meth:`AuditLog.append` on the DBAPI cursor of ``conn``'s transaction
    (:class:`_DriverSql`): the same rows, statements and locking as the SQLAlchemy form."""
    dialect = conn.dialect
    error = dialect.loaded_dbapi.Error
    cur = conn.connection.cursor()
    sql, params = driver.head, {"b_id": 1}
    try:
        cur.execute(sql, params)
        head = cur.fetchone()
        if head is None:
            # First append ever: two processes racing here collide on the primary key;
            # the catalogue's write helper runs the loser's transaction again.
            sql, params = "INSERT", {}
            conn.execute(sa.insert(audit_head).values(id=1, last_seq=0, last_hash=GENESIS))
            seq, prev = 0, GENESIS
        else:
            seq, prev = head
        rows = _chain(events, seq, prev)
        seq, prev = rows[-1]["seq"], rows[-1]["hash"]
        sql, params = driver.insert, {}
        if len(rows) == 1:
            cur.execute(sql, rows[0])
        else:
            cur.executemany(sql, rows)
        sql, params = driver.move, {"b_seq": seq, "b_hash": prev, "b_id": 1}
        cur.execute(sql, params)
        return seq
    except error as e:
        raise sa.exc.DBAPIError.instance(
            sql, params, e, error, hide_parameters=True,
            connection_invalidated=dialect.is_disconnect(
                e, conn.connection.dbapi_connection, cur)) from e
    finally:
        try:
            cur.close()
        except error:
            pass


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
            driver = _driver_sql(conn.dialect.name)
            if driver is not None:
                return _append_driver(conn, driver, events)
            head = conn.execute(_HEAD).first()
            if head is None:
                # First append ever: two processes racing here collide on the primary
                # key; the catalogue's write helper runs the loser's transaction again.
                conn.execute(sa.insert(audit_head).values(id=1, last_seq=0,
                                                          last_hash=GENESIS))
                seq, prev = 0, GENESIS
            else:
                seq, prev = head.last_seq, head.last_hash
            rows = _chain(events, seq, prev)
            seq, prev = rows[-1]["seq"], rows[-1]["hash"]
            conn.execute(_INSERT, rows)
            conn.execute(_MOVE_HEAD, {"b_seq": seq, "b_hash": prev})
            return seq

        return self.catalogue.run_write("writing the audit trail", tx)

    def query(self, *, since: str | None = None, event_type: str | None = None,
              after_seq: int | None = None, limit: int = 100) -> list[dict]:
        """Events in ``seq`` order; ``since`` is an ISO 8601 UTC time as stored."""
        return self.select(AuditFilter(since=since, after_seq=after_seq, limit=limit,
                                       event_types=(event_type,) if event_type else ()))

    def select(self, flt: AuditFilter) -> list[dict]:
        """One page of events matching ``flt``."""
        with translate_errors("reading the audit trail"), self.engine.connect() as conn:
            return [{str(k): v for k, v in r._mapping.items()}
                    for r in conn.execute(flt.statement())]

    def iter_filtered(self, flt: AuditFilter, batch: int = 1000) -> Iterator[list[dict]]:
        """Every event matching ``flt`` (ascending ``seq``), in batches of ``batch``: each
        batch is its own short read, so an export never holds a connection for long."""
        after = flt.after_seq
        while True:
            rows = self.select(replace(flt, after_seq=after, descending=False, limit=batch))
            if not rows:
                return
            yield rows
            after = rows[-1]["seq"]
            if len(rows) < batch:
                return

    def count(self, flt: AuditFilter) -> int:
        inner = replace(flt, limit=None, descending=False, after_seq=None,
                        before_seq=None).statement()
        with translate_errors("reading the audit trail"), self.engine.connect() as conn:
            return conn.scalar(sa.select(sa.func.count()).select_from(
                inner.order_by(None).subquery())) or 0

    # --- retention (MLPS 13) -----------------------------------------------------------
    def anchor(self) -> Anchor:
        with translate_errors("reading the audit trail"), self.engine.connect() as conn:
            row = conn.execute(sa.select(audit_anchor).where(audit_anchor.c.id == 1)).first()
        if row is None:
            return Anchor()
        return Anchor(row.seq, row.hash, row.pruned_before, row.pruned_rows)

    def prune(self, before: str, *, keep_after_seq: int | None = None,
              now: str = "") -> tuple[int, Anchor]:
        """Delete the events older than ``before`` (ISO 8601 UTC) — a contiguous run from
        the start of the chain — and anchor the chain at the last deleted row, in one
        transaction. ``keep_after_seq``: never delete past this seq (events a sink has
        not delivered yet). The head row is never deleted, so appends keep their link.
        Returns (rows deleted, the anchor now)."""
        t = audit_events

        def tx(conn: sa.Connection) -> tuple[int, Anchor]:
            old = conn.execute(sa.select(audit_anchor).where(audit_anchor.c.id == 1)
                               .with_for_update()).first()
            head = conn.execute(sa.select(audit_head.c.last_seq)
                                .where(audit_head.c.id == 1)).scalar()
            start = old.seq if old else 0
            # The first event that must stay: the oldest at or after the bound.
            stop = conn.scalar(sa.select(sa.func.min(t.c.seq)).where(
                t.c.event_time >= before, t.c.seq > start))
            limit_seq = (stop - 1) if stop is not None else (head or 0)
            if head:
                limit_seq = min(limit_seq, head - 1)  # keep the head row
            if keep_after_seq is not None:
                limit_seq = min(limit_seq, keep_after_seq)
            current = Anchor(old.seq, old.hash, old.pruned_before, old.pruned_rows) \
                if old else Anchor()
            if limit_seq <= start:
                return 0, current
            last = conn.execute(sa.select(t.c.seq, t.c.hash).where(t.c.seq == limit_seq)
                                ).first()
            if last is None:
                raise ValueError("the audit trail has a gap; run pacsd audit verify")
            n = conn.execute(sa.delete(t).where(t.c.seq <= limit_seq)).rowcount
            anchor = Anchor(last.seq, last.hash, before, current.pruned_rows + n)
            values = dict(seq=anchor.seq, hash=anchor.hash, pruned_before=before,
                          pruned_rows=anchor.pruned_rows, pruned_at=now)
            if old is None:
                conn.execute(sa.insert(audit_anchor).values(id=1, **values))
            else:
                conn.execute(sa.update(audit_anchor).where(audit_anchor.c.id == 1)
                             .values(**values))
            return n, anchor

        return self.catalogue.run_write("pruning the audit trail", tx)

    # --- export cursors (syslog) --------------------------------------------------------
    def cursor(self, sink: str) -> int | None:
        with translate_errors("reading the audit trail"), self.engine.connect() as conn:
            return conn.scalar(sa.select(audit_cursors.c.last_seq)
                               .where(audit_cursors.c.sink == sink))

    def set_cursor(self, sink: str, last_seq: int, now: str) -> None:
        def tx(conn: sa.Connection) -> None:
            done = conn.execute(sa.update(audit_cursors).where(audit_cursors.c.sink == sink)
                                .values(last_seq=last_seq, updated_at=now)).rowcount
            if not done:
                conn.execute(sa.insert(audit_cursors).values(sink=sink, last_seq=last_seq,
                                                             updated_at=now))
        self.catalogue.run_write("moving an audit export cursor", tx)

    # --- patient look-ups (the trail itself holds no patient data, SEC-23) -------------
    def studies_of_patient(self, patient_id: str) -> tuple[str, ...]:
        """StudyInstanceUIDs the catalogue holds for this PatientID (any issuer): the
        auditor's "patient" filter. Studies purged since are no longer found."""
        stmt = (sa.select(studies.c.study_instance_uid)
                .join(patients, studies.c.patient_fk == patients.c.pk)
                .where(patients.c.patient_id == patient_id))
        with translate_errors("reading the catalogue"), self.engine.connect() as conn:
            return tuple(conn.scalars(stmt))

    def patients_of_studies(self, uids: list[str]) -> dict[str, tuple[str, str]]:
        """StudyInstanceUID -> (PatientID, IssuerOfPatientID) for the studies still held
        (the DICOM audit message's patient participant, PS3.15 A.5)."""
        if not uids:
            return {}
        stmt = (sa.select(studies.c.study_instance_uid, patients.c.patient_id,
                          patients.c.issuer_of_patient_id)
                .join(patients, studies.c.patient_fk == patients.c.pk)
                .where(studies.c.study_instance_uid.in_(sorted(set(uids)))))
        with translate_errors("reading the catalogue"), self.engine.connect() as conn:
            return {r[0]: (r[1], r[2]) for r in conn.execute(stmt)}

    def head_seq(self) -> int:
        with translate_errors("reading the audit trail"), self.engine.connect() as conn:
            return conn.scalar(sa.select(audit_head.c.last_seq)
                               .where(audit_head.c.id == 1)) or 0

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
        anchor = self.anchor()  # after pruning the chain starts at the last pruned row
        expected_seq, prev, n = anchor.seq + 1, anchor.hash, 0
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
