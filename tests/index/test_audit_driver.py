"""R-H1 (issue 6): the audit trail's appends run on the transaction's DBAPI cursor
(``audit_log._DriverSql``), on SQLite and PostgreSQL: the rows (numbering, links, hashes)
are exactly those the SQLAlchemy statements wrote, the chain verifies, and a database
error still becomes a pacsd error (the catalogue's retries and translation see
SQLAlchemy's wrapper)."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from pacsd import errors
from pacsd.index import audit_log
from pacsd.index.audit_log import AuditLog
from pacsd.index.audit_schema import audit_anchor
from pacsd.index.security_schema import audit_events, audit_head


def _events(n: int, start: int = 0) -> list[dict]:
    return [{"event_time": f"2026-11-28T03:{(start + i) % 60:02d}:00.{i:06d}Z",
             "event_type": "query", "outcome": "success", "actor": "local",
             "actor_name": "" if i % 3 else "Dr Wang 王", "source_ip": "127.0.0.1",
             "device": "" if i % 2 else "curl/8", "study_uid": None if i % 4 else "1.2.3",
             "object_count": None if i % 5 else i, "location": "",
             "detail": "" if i % 7 == 0 else '{"keys":["PatientID"],"results":1}'}
            for i in range(n)]


def _rows(cat) -> list[dict]:
    with cat.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(
            sa.select(audit_events).order_by(audit_events.c.seq))]
        head = tuple(conn.execute(sa.select(audit_head.c.last_seq, audit_head.c.last_hash)
                                  ).one())
    return rows + [{"head": head}]


def _wipe(cat) -> None:
    with cat.engine.begin() as conn:
        conn.execute(sa.delete(audit_events))
        conn.execute(sa.delete(audit_head))
        conn.execute(sa.delete(audit_anchor))


def test_R_H1_driver_append_writes_the_sqlalchemy_rows(catalogue, monkeypatch):
    cat = catalogue
    cat.migrate()
    _wipe(cat)
    log = AuditLog(cat)
    name = cat.engine.dialect.name
    assert audit_log._driver_sql(name) is not None
    batches = [_events(1), _events(17, 1), _events(1, 40), _events(250, 2)]
    for b in batches:  # the first append creates the head; later ones extend it
        log.append(b)
    driver = _rows(cat)
    assert log.verify().ok and log.verify().rows == 269
    _wipe(cat)
    monkeypatch.setitem(audit_log._DRIVER, name, None)  # the SQLAlchemy statements
    for b in batches:
        log.append(b)
    assert _rows(cat) == driver
    assert log.verify().ok


def test_R_H1_driver_append_errors_become_pacsd_errors(catalogue):
    cat = catalogue
    cat.migrate()
    log = AuditLog(cat)
    _wipe(cat)
    log.append(_events(2))
    with cat.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE audit_events RENAME TO audit_events_gone"))
    try:
        with pytest.raises(errors.PacsdError, match="writing the audit trail"):
            log.append(_events(3))
    finally:
        with cat.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE audit_events_gone RENAME TO audit_events"))
    log.append(_events(3))  # the failed batch left nothing behind: the chain goes on
    assert log.verify().ok and log.verify().rows == 5
