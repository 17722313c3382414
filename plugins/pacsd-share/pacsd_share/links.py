"""Share links in the plugin's own tables (R-C3, R-C5, SEC-6, SEC-8, SEC-10).

A link is an opaque 256-bit token (``secrets.token_urlsafe(32)``), shown once and stored
only as its SHA-256 (a high-entropy token needs no slow hash). It is scoped to chosen
studies (a patient space: the patient's studies minus the hidden ones), expires and can
be revoked. A second factor (birth date, or the last four digits of a phone number) is
stored salted and hashed; wrong answers count per *link*, so re-opening the link does not
reset them, and ``max_attempts`` wrong answers lock it.

Opening a link creates a *session* (another random token, hashed likewise) carried by an
HttpOnly cookie; the session is verified once the second factor was answered. All
functions here are blocking functions of a SQLAlchemy connection (run them through
``api.run(api.read / api.write, ...)``).
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import orjson
import sqlalchemy as sa

from pacsd.plugin_api import Migration, PluginSchema

md = sa.MetaData()
links = sa.Table(
    "share_links", md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),            # patient | exam
    sa.Column("patient_id", sa.String(64)),
    sa.Column("studies", sa.Text, nullable=False),               # JSON list of UIDs
    sa.Column("hidden", sa.Text, nullable=False),                # JSON list of UIDs
    sa.Column("factor_kind", sa.String(16), nullable=False),     # birthdate | phone
    sa.Column("factor_salt", sa.String(32), nullable=False),
    sa.Column("factor_sha256", sa.String(64), nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
    sa.Column("failed_attempts", sa.Integer, nullable=False, default=0),
    sa.Column("locked_at", sa.Float),
    sa.Column("focus", sa.Text),   # version 2: JSON {"series", "sop"} of a shared image
)
sessions = sa.Table(
    "share_sessions", md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("link_id", sa.Integer, sa.ForeignKey("share_links.id"), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("verified", sa.Boolean, nullable=False, default=False),
)

# Version 3: self-enrolment (R-C3), the service switch (R-C9) and feedback (R-C8).
patients = sa.Table(   # the patient's registered phone (salted hash), R-C3
    "share_patients", md,
    sa.Column("patient_id", sa.String(64), primary_key=True),
    sa.Column("phone_salt", sa.String(32), nullable=False),
    sa.Column("phone_sha256", sa.String(64), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),       # report | registry
    sa.Column("updated_at", sa.Float, nullable=False),
)
cards = sa.Table(      # hospital card numbers (SHA-256) -> PatientID, filled by the HIS
    "share_cards", md,
    sa.Column("card_sha256", sa.String(64), primary_key=True),
    sa.Column("patient_id", sa.String(64), nullable=False, index=True),
    sa.Column("updated_at", sa.Float, nullable=False),
)
enrolments = sa.Table(  # one request for an SMS code (cookie token and code hashed)
    "share_enrolments", md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("patient_id", sa.String(64)),                   # NULL: no match, no code
    sa.Column("code_salt", sa.String(32), nullable=False),
    sa.Column("code_sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("used_at", sa.Float),
)
service = sa.Table(     # the digital service switched off per hospital / patient (R-C9)
    "share_service", md,
    sa.Column("scope", sa.String(16), primary_key=True),      # institution | patient
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("updated_by", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
feedback = sa.Table(    # the patient's feedback form (R-C8)
    "share_feedback", md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("link_id", sa.Integer, nullable=False),
    sa.Column("study_uid", sa.String(64)),
    sa.Column("rating", sa.Integer),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

SCHEMA = PluginSchema("share", md, (
    # Version 1 had no focus column; a fresh database gets the current tables instead.
    Migration(1, "share_links, share_sessions", lambda conn: md.create_all(conn)),
    Migration(2, "share_links.focus (share the image being viewed, R-C5)",
              lambda conn: conn.execute(sa.text("ALTER TABLE share_links ADD COLUMN focus TEXT"))),
    Migration(3, "share_patients, share_cards, share_enrolments, share_service, "
                 "share_feedback (R-C3, R-C8, R-C9)",
              lambda conn: md.create_all(conn, tables=[patients, cards, enrolments,
                                                       service, feedback])),
))
FACTORS = ("birthdate", "phone")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)  # 256 bits (SEC-8: at least 128)


def normalise_factor(kind: str, value: str) -> str:
    """Birth date as YYYYMMDD (any separators); phone as its last four digits."""
    digits = re.sub(r"\D", "", value or "")
    return digits[-4:] if kind == "phone" else digits


def _factor_hash(salt: str, kind: str, value: str) -> str:
    return hashlib.sha256(f"{salt}:{normalise_factor(kind, value)}".encode()).hexdigest()


@dataclass(frozen=True)
class Link:
    id: int
    kind: str
    patient_id: str | None
    studies: tuple[str, ...]
    hidden: tuple[str, ...]
    factor_kind: str
    expires_at: float
    revoked_at: float | None
    failed_attempts: int
    locked_at: float | None
    created_by: str
    created_at: float
    focus: dict | None = None

    def state(self, now: float) -> str:
        """``ok`` or why the link cannot be used: revoked / locked / expired."""
        if self.revoked_at is not None:
            return "revoked"
        if self.locked_at is not None:
            return "locked"
        if now >= self.expires_at:
            return "expired"
        return "ok"

    def public(self) -> dict:
        return {"id": self.id, "kind": self.kind, "studies": list(self.studies),
                "hidden": list(self.hidden), "factor": self.factor_kind,
                "created_by": self.created_by, "created_at": self.created_at,
                "expires_at": self.expires_at, "revoked": self.revoked_at is not None,
                "locked": self.locked_at is not None, "focus": self.focus}


def _link(row) -> Link:
    return Link(id=row.id, kind=row.kind, patient_id=row.patient_id,
                studies=tuple(orjson.loads(row.studies)),
                hidden=tuple(orjson.loads(row.hidden)), factor_kind=row.factor_kind,
                expires_at=row.expires_at, revoked_at=row.revoked_at,
                failed_attempts=row.failed_attempts, locked_at=row.locked_at,
                created_by=row.created_by, created_at=row.created_at,
                focus=orjson.loads(row.focus) if row.focus else None)


def create_link(conn, *, kind: str, patient_id: str | None, studies: list[str],
                hidden: list[str], factor_kind: str, factor_value: str, created_by: str,
                ttl_s: float, now: float | None = None, focus: dict | None = None
                ) -> tuple[str, Link]:
    """Insert a link; returns (the token, shown once, and the link)."""
    now = time.time() if now is None else now
    token, salt = new_token(), secrets.token_hex(16)
    pk = conn.execute(sa.insert(links).values(
        token_sha256=digest(token), kind=kind, patient_id=patient_id,
        studies=orjson.dumps(studies).decode(), hidden=orjson.dumps(hidden).decode(),
        factor_kind=factor_kind, factor_salt=salt,
        factor_sha256=_factor_hash(salt, factor_kind, factor_value),
        created_by=created_by[:64], created_at=now, expires_at=now + ttl_s,
        failed_attempts=0, focus=orjson.dumps(focus).decode() if focus else None)
    ).inserted_primary_key[0]
    return token, get_link(conn, pk)


def get_link(conn, pk: int) -> Link | None:
    row = conn.execute(sa.select(links).where(links.c.id == pk)).first()
    return None if row is None else _link(row)


def link_by_token(conn, token: str) -> Link | None:
    row = conn.execute(sa.select(links).where(links.c.token_sha256 == digest(token))).first()
    return None if row is None else _link(row)


def list_links(conn, study: str | None = None) -> list[Link]:
    rows = conn.execute(sa.select(links).order_by(links.c.id)).all()
    out = [_link(r) for r in rows]
    return [lk for lk in out if study is None or study in lk.studies]


def revoke(conn, pk: int, now: float | None = None) -> bool:
    res = conn.execute(sa.update(links).where(links.c.id == pk, links.c.revoked_at.is_(None))
                       .values(revoked_at=time.time() if now is None else now))
    return res.rowcount == 1


def set_studies(conn, pk: int, studies: list[str]) -> None:
    conn.execute(sa.update(links).where(links.c.id == pk)
                 .values(studies=orjson.dumps(studies).decode()))


def open_session(conn, link_id: int, ttl_s: float, now: float | None = None) -> str:
    now = time.time() if now is None else now
    token = new_token()
    conn.execute(sa.insert(sessions).values(token_sha256=digest(token), link_id=link_id,
                                            created_at=now, expires_at=now + ttl_s,
                                            verified=False))
    return token


@dataclass(frozen=True)
class Session:
    id: int
    link: Link
    verified: bool
    expires_at: float


def session_by_token(conn, token: str) -> Session | None:
    row = conn.execute(sa.select(sessions).where(
        sessions.c.token_sha256 == digest(token))).first()
    if row is None:
        return None
    link = get_link(conn, row.link_id)
    if link is None:
        return None
    return Session(id=row.id, link=link, verified=bool(row.verified),
                   expires_at=row.expires_at)


def check_factor(conn, session_id: int, answer: str, max_attempts: int,
                 now: float | None = None) -> str:
    """Check the second factor of a session's link: ``ok`` (session verified, the wrong
    answer count reset), ``wrong`` or ``locked`` (this answer used up the attempts, or
    the link was locked already) — or the link's other state (revoked, expired)."""
    now = time.time() if now is None else now
    srow = conn.execute(sa.select(sessions).where(sessions.c.id == session_id)).first()
    row = conn.execute(sa.select(links).where(links.c.id == srow.link_id)).first()
    state = _link(row).state(now)
    if state != "ok":
        return state
    good = hmac.compare_digest(_factor_hash(row.factor_salt, row.factor_kind, answer),
                               row.factor_sha256)
    if good and normalise_factor(row.factor_kind, answer):
        conn.execute(sa.update(links).where(links.c.id == row.id).values(failed_attempts=0))
        conn.execute(sa.update(sessions).where(sessions.c.id == session_id)
                     .values(verified=True))
        return "ok"
    failed = row.failed_attempts + 1
    values: dict = {"failed_attempts": failed}
    if failed >= max_attempts:
        values["locked_at"] = now
    conn.execute(sa.update(links).where(links.c.id == row.id).values(**values))
    return "locked" if failed >= max_attempts else "wrong"


def mark_verified(conn, session_id: int) -> None:
    conn.execute(sa.update(sessions).where(sessions.c.id == session_id).values(verified=True))
