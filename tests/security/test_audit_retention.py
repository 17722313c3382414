"""Retention of the audit trail (MLPS 13: 网络安全法 §21, at least 6 months; SEC-22): a
prune never deletes an event younger than max(180 days, ``[audit] retention_days``),
re-anchors the hash chain so ``pacsd audit verify`` still passes, is itself audited, and
leaves tampering detectable. Time travels with an injectable clock; SQLite and
PostgreSQL; migration 7 adds the anchor and cursor tables to an existing trail."""
from __future__ import annotations

import orjson
import pytest
import sqlalchemy as sa
from sechelpers import FakeClock, make_service, make_settings

from pacsd import cli
from pacsd.index import audit_schema, migrations
from pacsd.index.security_schema import audit_events
from pacsd.services.audit import MIN_RETENTION_DAYS

DAY = 86400.0


def add(svc, clock, days_later: float, n: int = 1) -> None:
    clock.advance(days_later * DAY)
    for _ in range(n):
        svc.audit.record("scrub", detail={"n": 1})


def seqs_and_types(svc):
    return [(r["seq"], r["event_type"]) for r in svc.audit.query(limit=1000)]


def test_MLPS13_never_younger_than_180_days_and_chain_still_verifies(service, clock):
    svc = service
    start = clock.now
    add(svc, clock, 0, 3)      # seq 1-3 at day 0
    add(svc, clock, 100, 2)    # seq 4-5 at day 100
    add(svc, clock, 100, 2)    # seq 6-7 at day 200
    clock.now = start + 300 * DAY  # bound = day 300 - 180 = day 120
    # A configured 30 days counts as 180: day 100 events are 200 days old, day 200 ones
    # only 100 days old and stay.
    n, anchor = svc.audit.prune(30)
    assert n == 5 and anchor.seq == 5 and anchor.pruned_rows == 5
    rows = svc.audit.query(limit=1000)
    assert [r["seq"] for r in rows] == [6, 7, 8]
    pruned = rows[-1]
    assert pruned["event_type"] == "audit-pruned" and pruned["actor"] == "system:audit"
    d = orjson.loads(pruned["detail"])
    assert (d["through_seq"], d["retention_days"], pruned["object_count"]) == (
        5, MIN_RETENTION_DAYS, 5)
    assert d["anchor_hash"] == anchor.hash
    result = svc.audit.verify()
    assert result.ok, result.problem
    assert result.rows == 3 and result.head_seq == 8
    # Nothing more is due; a longer configured retention deletes less, never more.
    assert svc.audit.prune(30)[0] == 0
    clock.advance(100 * DAY)   # day 400: day 200 events are 200 days old
    assert svc.audit.prune(365)[0] == 0     # 365 > 200: kept
    assert svc.audit.prune(0)[0] == 0       # 0 = keep forever
    n, anchor = svc.audit.prune(180)
    # day 200 events go; the first audit-pruned marker (day 300) is only 100 days old.
    assert n == 2 and anchor.seq == 7 and anchor.pruned_rows == 7
    assert svc.audit.verify().ok


def test_SEC22_tampering_after_a_prune_is_still_detected(service, clock, db_url):
    svc = service
    add(svc, clock, 0, 4)
    add(svc, clock, 200, 4)
    assert svc.audit.prune(180)[0] == 4
    assert svc.audit.verify().ok
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:   # delete a kept event directly in SQL
        conn.execute(sa.delete(audit_events).where(audit_events.c.seq == 6))
    engine.dispose()
    result = svc.audit.verify()
    assert not result.ok and result.bad_seq == 6


def test_MLPS13_prune_keeps_the_head_and_undelivered_events(service, clock):
    svc = service
    add(svc, clock, 0, 5)
    clock.advance(400 * DAY)
    # Everything is old, but a syslog cursor at seq 2 holds back seq 3-5.
    n, anchor = svc.audit.prune(180, keep_after_seq=2)
    assert (n, anchor.seq) == (2, 2)
    assert [s for s, _ in seqs_and_types(svc)] == [3, 4, 5, 6]
    n, anchor = svc.audit.prune(180)
    # The head row (the newest event) always stays, so appends keep their link.
    assert [s for s, t in seqs_and_types(svc)][-2:] == [6, 7]
    assert svc.audit.verify().ok


def test_cli_audit_prune(tmp_path, capsys):
    data = tmp_path / "data"
    settings = make_settings(tmp_path)
    clock = FakeClock(1_600_000_000.0)  # 2020: long ago for the command's real clock
    svc, cat = make_service(settings, clock)
    for _ in range(3):
        svc.audit.record("scrub")
    cat.close()
    conf = tmp_path / "p.toml"
    conf.write_text("[audit]\nretention_days = 200\n")
    common = ["--data-dir", str(data), "--config", str(conf)]
    assert cli.main(["audit", "prune", *common]) == 0
    assert "2 audit events pruned" in capsys.readouterr().out  # the newest stays
    assert cli.main(["audit", "verify", *common]) == 0
    assert "intact" in capsys.readouterr().out
    conf.write_text("")
    assert cli.main(["audit", "prune", *common]) == 0
    assert "kept forever" in capsys.readouterr().out


def test_migration_7_adds_the_tables_to_an_existing_trail(tmp_path, clock):
    assert any(m.version == 7 for m in migrations.MIGRATIONS)
    assert set(audit_schema.AUDIT_TABLES) <= set(migrations.FRESH_TABLES)
    svc, cat = make_service(make_settings(tmp_path), clock)
    for _ in range(3):
        svc.audit.record("scrub")
    with cat.engine.begin() as conn:  # the trail as a version-6 database holds it
        for t in audit_schema.AUDIT_TABLES:
            t.drop(conn)
        for ix in audit_schema.AUDIT_INDEXES:
            ix.drop(conn)
        audit_schema.migrate_audit(conn)
        audit_schema.migrate_audit(conn)  # idempotent
    indexes = {ix["name"] for ix in sa.inspect(cat.engine).get_indexes("audit_events")}
    assert {"ix_audit_events_study_uid", "ix_audit_events_actor"} <= indexes
    assert svc.audit.verify().ok and svc.audit.log.anchor().seq == 0
    assert svc.audit.log.cursor("syslog") is None
    clock.advance(200 * DAY)
    assert svc.audit.prune(180)[0] == 2 and svc.audit.verify().ok
    cat.close()


@pytest.mark.parametrize("days", [1, 179])
def test_MLPS13_minimum_is_180_days(service, clock, days):
    add(service, clock, 0, 2)
    clock.advance(179.9 * DAY)
    add(service, clock, 0, 1)
    assert service.audit.prune(days)[0] == 0  # 179.9 days old: too young
