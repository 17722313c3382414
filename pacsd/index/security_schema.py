"""Security tables: users, API tokens, sessions and the audit trail (R-E1, R-E3, R-E4).

They live in the catalogue database (same engine, same backups) and are created by
migration 2 (``migrations.py``) on an existing archive, or with the catalogue on a fresh
one. Design notes:

* Times of users, tokens and sessions are POSIX seconds (``Float``): comparisons with an
  injectable clock are plain arithmetic on SQLite and PostgreSQL alike (no time zone
  round-trip differences). Audit times are ISO 8601 UTC text with microseconds, because
  they are part of the hashed record and must read back byte-identical on both databases.
* Passwords are stored only as argon2id hashes (MLPS 1); session and API tokens only as
  the SHA-256 of the token (the token is shown once and never stored: SEC-10).
* ``audit_events`` is append-only and hash-chained (SEC-22, MLPS 11): ``seq`` is assigned
  by pacsd (1, 2, 3 ... without gaps), ``hash = sha256(canonical row + prev_hash)``.
  ``audit_head`` (one row) records the last ``seq`` and ``hash`` and is updated in the same
  transaction, so deleting rows at the tail is detected as well as in the middle.
  No patient data in it: the object is a StudyInstanceUID and a count, never a name.
"""
from __future__ import annotations

import sqlalchemy as sa

from pacsd.index.schema import Key, Text, metadata

Seconds = sa.Float()

users = sa.Table(
    "users", metadata,
    sa.Column("pk", Key, primary_key=True),
    sa.Column("username", Text, nullable=False, unique=True),
    # Comma-separated role names from services.security.ROLES.
    sa.Column("roles", Text, nullable=False),
    sa.Column("password_hash", Text, nullable=False),
    sa.Column("created_at", Seconds, nullable=False),
    sa.Column("password_changed_at", Seconds, nullable=False),
    sa.Column("failed_logins", sa.Integer, nullable=False, server_default="0"),
    sa.Column("locked_until", Seconds),
    sa.Column("last_login_at", Seconds),
    sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
    # Data scope (R-A12, MLPS 8; migration 5): comma-separated institution codes (NULL =
    # [security] default_institutions) and sensitivity-label clearances.
    sa.Column("institutions", Text),
    sa.Column("clearances", Text, nullable=False, server_default=""),
    # TOTP second factor (MLPS 4; migration 5): base32 secret, and the last time step a
    # code was accepted for (a code is usable once: replay protection).
    sa.Column("totp_secret", Text),
    sa.Column("totp_last_step", sa.BigInteger),
    # Department name (access_schema.departments; R-E1; migration 5).
    sa.Column("department", Text),
    # MLPS 1, 5 (migration 5): previous password hashes (JSON list, newest first), a
    # forced change at the next login, and when a disabled account was enabled again.
    sa.Column("password_history", Text, nullable=False, server_default="[]"),
    sa.Column("must_change_password", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("reactivated_at", Seconds),
)

api_tokens = sa.Table(
    "api_tokens", metadata,
    sa.Column("pk", Key, primary_key=True),
    sa.Column("user_fk", Key, sa.ForeignKey("users.pk"), nullable=False, index=True),
    sa.Column("name", Text, nullable=False, server_default=""),
    sa.Column("token_sha256", Text, nullable=False, unique=True),
    # Comma-separated actions (read, write, delete, audit-read, admin).
    sa.Column("scopes", Text, nullable=False),
    sa.Column("created_at", Seconds, nullable=False),
    sa.Column("expires_at", Seconds, nullable=False),
    sa.Column("revoked_at", Seconds),
    sa.Column("last_used_at", Seconds),
    # Narrows the user's institutions (NULL = the user's; migration 5).
    sa.Column("institutions", Text),
)

sessions = sa.Table(
    "sessions", metadata,
    sa.Column("pk", Key, primary_key=True),
    sa.Column("user_fk", Key, sa.ForeignKey("users.pk"), nullable=False, index=True),
    sa.Column("token_sha256", Text, nullable=False, unique=True),
    sa.Column("created_at", Seconds, nullable=False),
    sa.Column("last_seen_at", Seconds, nullable=False),
    sa.Column("expires_at", Seconds, nullable=False),  # absolute limit (MLPS 2)
    sa.Column("revoked_at", Seconds),
    sa.Column("source_ip", Text, nullable=False, server_default=""),
)

audit_events = sa.Table(
    "audit_events", metadata,
    sa.Column("seq", Key, primary_key=True, autoincrement=False),
    sa.Column("event_time", Text, nullable=False, index=True),  # ISO 8601 UTC, "...Z"
    sa.Column("event_type", Text, nullable=False, index=True),
    sa.Column("outcome", Text, nullable=False),                  # success|failure|denied
    sa.Column("actor", Text, nullable=False),                    # user:N | token:N | local
    sa.Column("actor_name", Text, nullable=False, server_default=""),
    sa.Column("source_ip", Text, nullable=False, server_default=""),
    sa.Column("device", Text, nullable=False, server_default=""),  # User-Agent / AE title
    sa.Column("study_uid", Text),
    sa.Column("object_count", sa.Integer),
    sa.Column("location", Text, nullable=False, server_default=""),  # store URL (R-E3)
    sa.Column("detail", Text, nullable=False, server_default="{}"),  # JSON, no PHI
    sa.Column("prev_hash", Text, nullable=False),
    sa.Column("hash", Text, nullable=False),
)

audit_head = sa.Table(
    "audit_head", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),  # always 1
    sa.Column("last_seq", Key, nullable=False),
    sa.Column("last_hash", Text, nullable=False),
)

#: Created by migration 2, or with the catalogue on a fresh database (dependency order).
SECURITY_TABLES = (users, api_tokens, sessions, audit_events, audit_head)
