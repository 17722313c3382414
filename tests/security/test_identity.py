"""Identity and authentication in the service layer, on SQLite and PostgreSQL (R-E1,
MLPS 1, 2, 5, 6; SEC-6, SEC-7): password policy and hashing, roles, lockout, session
timeouts with an injectable clock, logout, API tokens, and the schema migration."""
from __future__ import annotations

import hashlib
import uuid

import psycopg
import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from sechelpers import PASSWORD

from pacsd import errors
from pacsd.index import Catalogue, migrations
from pacsd.index.schema import schema_version
from pacsd.index.security_schema import api_tokens, sessions, users
from pacsd.services.security import (SESSION_KEEP_S, SESSION_PREFIX, TOKEN_PREFIX,
                                     SecurityService, check_password_policy)
from tests.conftest import PG_ADMIN_URL


@pytest.mark.parametrize("name, password, ok", [
    ("alice", "Abcdef1!", True),            # 8 chars, 4 classes
    ("alice", "abcdefg1!", True),           # 3 classes
    ("alice", "Abcdef1", False),            # 7 chars
    ("alice", "abcdefgh1", False),          # 2 classes
    ("alice", "ABCDEFGH", False),           # 1 class
    ("alice", "xxAlice-2024", False),       # contains the user name (any case)
    ("bob", "密码密码Ab1!", True),           # non-ASCII counts as "other"
])
def test_MLPS1_password_policy(name, password, ok):
    if ok:
        check_password_policy(name, password)
    else:
        with pytest.raises(errors.BadRequest):
            check_password_policy(name, password)


def _column(service, table, col, where):
    with service.accounts.engine.connect() as conn:
        return conn.scalar(sa.select(table.c[col]).where(where))


def test_MLPS1_argon2_hash_not_plaintext(service, tmp_path):
    # The production hasher (RFC 9106 parameters), not the tests' cheap one.
    real = SecurityService(service.settings, service.accounts.catalogue, service.audit,
                           clock=service.clock, hasher=PasswordHasher())
    real.create_user("alice", PASSWORD, ["radiologist"])
    stored = _column(service, users, "password_hash", users.c.username == "alice")
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert PASSWORD not in stored
    assert PasswordHasher().verify(stored, PASSWORD)
    if service.accounts.catalogue.dialect_name == "sqlite":
        service.audit.flush_sync()
        raw = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("index.db*"))
        assert PASSWORD.encode() not in raw
    with pytest.raises(errors.BadRequest):
        real.create_user("weak", "password", ["clinician"])  # MLPS 5: policy applies


def test_MLPS6_admin_roles_exclusive_and_names_unique(service):
    with pytest.raises(errors.BadRequest, match="mutually exclusive"):
        service.create_user("root", PASSWORD, ["sysadmin", "auditor"])
    with pytest.raises(errors.BadRequest, match="unknown role"):
        service.create_user("root", PASSWORD, ["superuser"])
    with pytest.raises(errors.BadRequest):
        service.create_user("bad name", PASSWORD, ["clinician"])
    service.create_user("ops", PASSWORD, ["sysadmin", "radiologist"])
    with pytest.raises(errors.Conflict):
        service.create_user("ops", PASSWORD, ["clinician"])  # MLPS 1: unique IDs
    assert [u.username for u in service.list_users()] == ["ops"]
    assert service.user_count() == 1


async def test_MLPS2_lockout_after_5_failures_and_unlock_after_window(service, clock):
    service.create_user("alice", PASSWORD, ["clinician"])
    for _ in range(4):
        with pytest.raises(errors.Unauthorized):
            await service.login("alice", "Wrong-pass-1", source_ip="10.0.0.1")
    await service.login("alice", PASSWORD, source_ip="10.0.0.2")  # resets the count
    for _ in range(5):
        with pytest.raises(errors.Unauthorized):
            await service.login("alice", "Wrong-pass-1", source_ip="10.0.0.3")
    # Locked: the right password is refused too, with the same message.
    with pytest.raises(errors.Unauthorized, match="invalid user name or password"):
        await service.login("alice", PASSWORD, source_ip="10.0.0.4")
    clock.advance(899)
    with pytest.raises(errors.Unauthorized):
        await service.login("alice", PASSWORD, source_ip="10.0.0.4")
    clock.advance(2)
    token, _, actor = await service.login("alice", PASSWORD, source_ip="10.0.0.4")
    assert token.startswith(SESSION_PREFIX) and actor.name == "alice"
    reasons = [e["detail"] for e in service.audit.query(event_type="login-failed")]
    assert sum('"account locked"' in d for d in reasons) == 2
    assert any("now locked" in d for d in reasons)


async def test_lockout_lifted_by_cli_unlock(service):
    service.create_user("bob", PASSWORD, ["clinician"])
    for _ in range(5):
        with pytest.raises(errors.Unauthorized):
            await service.login("bob", "Wrong-pass-1", source_ip=f"10.0.1.{_}")
    service.unlock_user("bob")
    await service.login("bob", PASSWORD)


async def test_MLPS2_session_idle_timeout(service, clock):
    service.create_user("alice", PASSWORD, ["clinician"])
    token, _, _ = await service.login("alice", PASSWORD)
    bearer = f"Bearer {token}"
    clock.advance(899)
    actor = await service.authenticate_bearer(bearer)  # still alive; activity recorded
    assert actor.id.startswith("user:") and actor.session_pk is not None
    clock.advance(899)
    await service.authenticate_bearer(bearer)
    clock.advance(900)
    with pytest.raises(errors.Unauthorized) as exc:
        await service.authenticate_bearer(bearer)
    assert 'error_description="expired"' in exc.value.headers["WWW-Authenticate"]


async def test_MLPS2_session_absolute_timeout(service, clock):
    service.create_user("alice", PASSWORD, ["clinician"])
    token, expires, _ = await service.login("alice", PASSWORD)
    assert expires == clock.now + 8 * 3600
    bearer = f"Bearer {token}"
    for _ in range(47):  # busy all day, never idle for long
        clock.advance(600)
        await service.authenticate_bearer(bearer)
    clock.advance(600)  # 8 h after login
    with pytest.raises(errors.Unauthorized, match="expired"):
        await service.authenticate_bearer(bearer)


async def test_MLPS2_logout_revokes_the_session(service):
    service.create_user("alice", PASSWORD, ["clinician"])
    token, _, _ = await service.login("alice", PASSWORD)
    actor = await service.authenticate_bearer(f"Bearer {token}")
    await service.logout(actor)
    with pytest.raises(errors.Unauthorized, match="revoked"):
        await service.authenticate_bearer(f"Bearer {token}")
    stored = _column(service, sessions, "token_sha256", sessions.c.pk == actor.session_pk)
    assert stored == hashlib.sha256(token.encode()).hexdigest()


async def test_MLPS21_ended_sessions_are_deleted_a_day_after_they_end(service, clock):
    """Sessions that ended (expired or revoked) more than SESSION_KEEP_S ago are deleted
    at a later login (at most once an hour per process); live or recently ended ones
    stay. The logins themselves stay in the audit trail."""
    service.create_user("alice", PASSWORD, ["clinician"])
    _, _, first = await service.login("alice", PASSWORD)           # expires after 8 h
    _, _, second = await service.login("alice", PASSWORD)
    clock.advance(8 * 3600 - 60)
    await service.logout(second)                      # revoked a minute before first ends

    def kept() -> set[int]:
        with service.accounts.catalogue.engine.connect() as conn:
            return {r[0] for r in conn.execute(sa.select(sessions.c.pk))}
    clock.advance(SESSION_KEEP_S)  # both ended, but not a day ago yet
    _, _, third = await service.login("alice", PASSWORD)
    assert {first.session_pk, second.session_pk, third.session_pk} <= kept()
    clock.advance(3600)  # both ended more than a day ago; the hourly check is due
    _, _, fourth = await service.login("alice", PASSWORD)
    assert kept() == {third.session_pk, fourth.session_pk}


async def test_api_tokens_scoped_expiring_revocable_hashed(service, clock):
    service.create_user("pacs-bridge", PASSWORD, ["integration"])
    pk, token, expires = service.create_token("pacs-bridge", ["read"], 30)
    assert token.startswith(TOKEN_PREFIX)
    assert len(token) - len(TOKEN_PREFIX) >= 43  # 256 random bits, urlsafe base64
    assert expires == clock.now + 30 * 86400
    stored = _column(service, api_tokens, "token_sha256", api_tokens.c.pk == pk)
    assert stored == hashlib.sha256(token.encode()).hexdigest() and token not in stored
    actor = await service.authenticate_bearer(f"Bearer {token}")
    assert actor.id == f"token:{pk}" and actor.actions() == {"read"}  # integration ∩ read
    # SEC-7: one character changed, truncated, or a stranger's token: unknown.
    for bad in (token[:-1] + ("A" if token[-1] != "A" else "B"), token[:-4],
                TOKEN_PREFIX + "x" * 43, "eyJhbGciOiJub25lIn0.e30.", "a" * 300):
        with pytest.raises(errors.Unauthorized) as exc:
            await service.authenticate_bearer(f"Bearer {bad}")
        assert exc.value.headers["WWW-Authenticate"].startswith("Bearer ")
    clock.advance(30 * 86400)  # SEC-6: expired
    with pytest.raises(errors.Unauthorized, match="expired"):
        await service.authenticate_bearer(f"Bearer {token}")
    pk2, token2, _ = service.create_token("pacs-bridge", ["read", "write"], 1)
    await service.authenticate_bearer(f"Bearer {token2}")
    service.revoke_token(pk2)  # SEC-6: revoked
    with pytest.raises(errors.Unauthorized, match="revoked"):
        await service.authenticate_bearer(f"Bearer {token2}")
    with pytest.raises(errors.BadRequest):
        service.create_token("pacs-bridge", ["everything"], 1)
    with pytest.raises(errors.BadRequest):
        service.create_token("pacs-bridge", ["read"], 10_000)  # beyond token_max_days
    kinds = [e["event_type"] for e in service.audit.query(limit=1000)]
    assert kinds.count("token-created") == 2 and "token-revoked" in kinds


async def test_missing_or_malformed_header_is_401_with_challenge(service):
    for header in (None, "", "Basic YWxhZGRpbjpvcGVu", "Bearer", "Bearer "):
        with pytest.raises(errors.Unauthorized) as exc:
            await service.authenticate_bearer(header)
        assert exc.value.headers == {"WWW-Authenticate": 'Bearer realm="pacsd"'}


# --- the migration (an existing archive gains the security tables) -----------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def version1_url(request, tmp_path):
    """A database at schema version 1, as a pacsd before the security issue left it."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'v1.db'}"
        drop = None
    else:
        request.getfixturevalue("pg_server_url")  # skips when PostgreSQL is unreachable
        admin_url = sa.engine.make_url(PG_ADMIN_URL).set(drivername="postgresql")
        admin = psycopg.connect(admin_url.render_as_string(hide_password=False),
                                autocommit=True)
        name = f"pacsd_test_v1_{uuid.uuid4().hex[:10]}"
        admin.execute(f'CREATE DATABASE "{name}"')
        url = admin_url.set(drivername="postgresql+psycopg", database=name
                            ).render_as_string(hide_password=False)
        drop = (admin, name)
    cat = Catalogue(url)
    with cat.engine.begin() as conn:
        schema_version.create(conn)
        migrations.MIGRATIONS[0].apply(conn)
        conn.execute(sa.insert(schema_version).values(version=1, description="initial",
                                                      applied_at=sa.func.now()))
    cat.close()
    yield url
    if drop:
        drop[0].execute(f'DROP DATABASE IF EXISTS "{drop[1]}" WITH (FORCE)')
        drop[0].close()


async def test_migration_2_upgrades_an_existing_archive(version1_url, tmp_path, clock):
    cat = Catalogue(version1_url)
    assert not sa.inspect(cat.engine).has_table("users")
    assert cat.migrate() == migrations.LATEST >= 2
    insp = sa.inspect(cat.engine)
    for table in ("users", "api_tokens", "sessions", "audit_events", "audit_head"):
        assert insp.has_table(table), table
    with cat.engine.connect() as conn:
        assert list(conn.scalars(sa.select(schema_version.c.version)
                                 .order_by(schema_version.c.version))) == \
            [m.version for m in migrations.MIGRATIONS]
    from sechelpers import FAST_HASHER, make_settings
    from pacsd.services.audit import AuditTrail
    settings = make_settings(tmp_path, version1_url)
    svc = SecurityService(settings, cat, AuditTrail(cat, clock=clock, immediate=True),
                          clock=clock, hasher=FAST_HASHER)
    svc.create_user("alice", PASSWORD, ["clinician"])
    await svc.login("alice", PASSWORD)
    assert svc.audit.verify().ok and svc.audit.verify().rows == 2
    cat.close()
