"""OIDC login tables (R-E1; docs/security.md "OIDC login"), created by migration 9.

* ``oidc_links``: which pacsd user an identity provider's subject is (``iss`` + ``sub``,
  the only stable identifier of an OIDC identity), made or linked at the first login.
* ``oidc_logins``: pending logins, one row per started authorization (``state`` -> PKCE
  verifier, nonce, the SHA-256 of the browser-binding cookie) and per ticket waiting for
  pacsd's TOTP code. Deleting the row is what makes a state or ticket single-use, across
  pacsd processes sharing the database.
"""
from __future__ import annotations

import sqlalchemy as sa

from pacsd.index.schema import Key, Text, metadata

oidc_links = sa.Table(
    "oidc_links", metadata,
    sa.Column("user_fk", Key, sa.ForeignKey("users.pk"), primary_key=True),
    sa.Column("issuer", Text, nullable=False),
    sa.Column("subject", Text, nullable=False),
    sa.Column("linked_at", sa.Float(), nullable=False),
    sa.UniqueConstraint("issuer", "subject", name="uq_oidc_links_subject"),
)

oidc_logins = sa.Table(
    "oidc_logins", metadata,
    sa.Column("state", Text, primary_key=True),  # SHA-256 of the state / ticket
    sa.Column("kind", Text, nullable=False),      # "authorize" or "otp"
    sa.Column("browser", Text, nullable=False),   # SHA-256 of the binding cookie
    sa.Column("nonce", Text, nullable=False, server_default=""),
    sa.Column("verifier", Text, nullable=False, server_default=""),
    sa.Column("user_fk", Key),
    sa.Column("detail", Text, nullable=False, server_default="{}"),
    sa.Column("created_at", sa.Float(), nullable=False),
)

OIDC_TABLES = (oidc_links, oidc_logins)


def migrate_oidc(conn: sa.Connection) -> None:
    """Migration 9: new tables only."""
    metadata.create_all(conn, tables=list(OIDC_TABLES))
