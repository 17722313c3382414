"""Users, API tokens and sessions in the catalogue database (R-E1, MLPS 1, 2, 5).

Plain storage: every policy decision (password rules, lockout thresholds, timeouts,
scopes, roles) is made by ``pacsd.services.security``; this module only reads and writes
rows, one transaction per write, through :meth:`Catalogue.run_write`. Times are POSIX
seconds passed in by the caller (the service's injectable clock). Tokens arrive here
already hashed (SHA-256 hex); a token itself never reaches the database.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson
import sqlalchemy as sa

from pacsd.errors import Conflict, NotFound
from pacsd.index.catalogue import Catalogue
from pacsd.index.engine import translate_errors
from pacsd.index.access_schema import departments
from pacsd.index.security_schema import api_tokens, sessions, users


@dataclass(frozen=True)
class UserRecord:
    pk: int
    username: str
    roles: tuple[str, ...]
    password_hash: str
    created_at: float
    password_changed_at: float
    failed_logins: int
    locked_until: float | None
    last_login_at: float | None
    disabled: bool
    #: Data scope (R-A12, MLPS 8): None = ``[security] default_institutions``.
    institutions: tuple[str, ...] | None = None
    clearances: tuple[str, ...] = ()
    totp_secret: str | None = None
    department: str | None = None
    password_history: tuple[str, ...] = ()
    must_change_password: bool = False
    reactivated_at: float | None = None


@dataclass(frozen=True)
class TokenRecord:
    pk: int
    user_pk: int
    name: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float
    revoked_at: float | None
    last_used_at: float | None
    #: Narrows the user's institutions; None = the user's.
    institutions: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SessionRecord:
    pk: int
    user_pk: int
    created_at: float
    last_seen_at: float
    expires_at: float
    revoked_at: float | None
    source_ip: str


def _split(text: str) -> tuple[str, ...]:
    return tuple(x for x in text.split(",") if x)


def _opt_split(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else _split(text)


def _get(row, name: str):
    try:
        return getattr(row, name)
    except AttributeError:
        return None


def _user(row: sa.Row) -> UserRecord:
    return UserRecord(
        pk=row.pk, username=row.username, roles=_split(row.roles),
        password_hash=row.password_hash, created_at=row.created_at,
        password_changed_at=row.password_changed_at, failed_logins=row.failed_logins,
        locked_until=row.locked_until, last_login_at=row.last_login_at,
        disabled=bool(row.disabled), institutions=_opt_split(_get(row, "institutions")),
        clearances=_split(_get(row, "clearances") or ""),
        totp_secret=_get(row, "totp_secret"), department=_get(row, "department"),
        password_history=tuple(orjson.loads(_get(row, "password_history") or "[]")),
        must_change_password=bool(_get(row, "must_change_password")),
        reactivated_at=_get(row, "reactivated_at"))


def _token(row: sa.Row) -> TokenRecord:
    return TokenRecord(
        pk=row.pk, user_pk=row.user_fk, name=row.name, scopes=_split(row.scopes),
        created_at=row.created_at, expires_at=row.expires_at, revoked_at=row.revoked_at,
        last_used_at=row.last_used_at, institutions=_opt_split(_get(row, "institutions")))


def _session(row: sa.Row) -> SessionRecord:
    return SessionRecord(
        pk=row.pk, user_pk=row.user_fk, created_at=row.created_at,
        last_seen_at=row.last_seen_at, expires_at=row.expires_at,
        revoked_at=row.revoked_at, source_ip=row.source_ip)


class Accounts:
    """Rows of ``users``, ``api_tokens`` and ``sessions``."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.engine = catalogue.engine

    def _read(self, action: str, stmt):
        with translate_errors(action), self.engine.connect() as conn:
            return conn.execute(stmt).first()

    # --- users ------------------------------------------------------------------------
    def create_user(self, username: str, roles: tuple[str, ...], password_hash: str,
                    now: float) -> int:
        def tx(conn: sa.Connection) -> int:
            if conn.execute(sa.select(users.c.pk).where(users.c.username == username)
                            ).first() is not None:
                raise Conflict("a user with that name exists")
            return conn.execute(sa.insert(users).values(
                username=username, roles=",".join(roles), password_hash=password_hash,
                created_at=now, password_changed_at=now, failed_logins=0,
                disabled=False).returning(users.c.pk)).scalar_one()
        return self.catalogue.run_write("creating a user", tx)

    def get_user(self, username: str) -> UserRecord | None:
        row = self._read("reading a user",
                         sa.select(users).where(users.c.username == username))
        return _user(row) if row is not None else None

    def get_user_by_pk(self, pk: int) -> UserRecord | None:
        row = self._read("reading a user", sa.select(users).where(users.c.pk == pk))
        return _user(row) if row is not None else None

    def list_users(self) -> list[UserRecord]:
        with translate_errors("listing users"), self.engine.connect() as conn:
            return [_user(r) for r in conn.execute(sa.select(users).order_by(users.c.pk))]

    def user_count(self) -> int:
        with translate_errors("counting users"), self.engine.connect() as conn:
            return conn.scalar(sa.select(sa.func.count()).select_from(users)
                               .where(users.c.disabled == sa.false()))

    def set_scope(self, pk: int, institutions: tuple[str, ...] | None,
                  clearances: tuple[str, ...]) -> None:
        """Set a user's institutions (None = the settings' default) and clearances."""
        self.catalogue.run_write("changing a user's scope", lambda conn: conn.execute(
            sa.update(users).where(users.c.pk == pk).values(
                institutions=None if institutions is None else ",".join(institutions),
                clearances=",".join(clearances))))

    def update_user(self, pk: int, **values) -> None:
        """Set ``roles`` (tuple), ``disabled``, ``department`` of a user."""
        if "roles" in values:
            values["roles"] = ",".join(values["roles"])
        self.catalogue.run_write("changing a user", lambda conn: conn.execute(
            sa.update(users).where(users.c.pk == pk).values(**values)))

    # --- departments (R-E1) -----------------------------------------------------------
    def departments(self) -> list[dict]:
        with translate_errors("listing departments"), self.engine.connect() as conn:
            rows = conn.execute(sa.select(departments).order_by(departments.c.name)).all()
            counts = dict(conn.execute(sa.select(users.c.department, sa.func.count())
                                       .group_by(users.c.department)).all())
        return [{"name": r.name, "description": r.description,
                 "users": counts.get(r.name, 0)} for r in rows]

    def create_department(self, name: str, description: str, now: float) -> None:
        def tx(conn: sa.Connection) -> None:
            if conn.execute(sa.select(departments.c.pk).where(departments.c.name == name)
                            ).first() is not None:
                raise Conflict("a department with that name exists")
            conn.execute(sa.insert(departments).values(name=name, description=description,
                                                       created_at=now))
        self.catalogue.run_write("creating a department", tx)

    def update_department(self, name: str, *, new_name: str | None = None,
                          description: str | None = None) -> None:
        def tx(conn: sa.Connection) -> None:
            values = {}
            if description is not None:
                values["description"] = description
            if new_name is not None and new_name != name:
                if conn.execute(sa.select(departments.c.pk).where(
                        departments.c.name == new_name)).first() is not None:
                    raise Conflict("a department with that name exists")
                values["name"] = new_name
                conn.execute(sa.update(users).where(users.c.department == name)
                             .values(department=new_name))
            n = conn.execute(sa.update(departments).where(departments.c.name == name)
                             .values(**values)).rowcount if values else 1
            if not n or conn.execute(sa.select(departments.c.pk).where(
                    departments.c.name == (new_name or name))).first() is None:
                raise NotFound("no such department")
        self.catalogue.run_write("changing a department", tx)

    def delete_department(self, name: str) -> None:
        def tx(conn: sa.Connection) -> None:
            if conn.execute(sa.select(users.c.pk).where(users.c.department == name)
                            ).first() is not None:
                raise Conflict("the department still has users")
            if not conn.execute(sa.delete(departments).where(departments.c.name == name)
                                ).rowcount:
                raise NotFound("no such department")
        self.catalogue.run_write("deleting a department", tx)

    def department_exists(self, name: str) -> bool:
        return self._read("reading a department", sa.select(departments.c.pk).where(
            departments.c.name == name)) is not None

    def set_totp(self, pk: int, secret: str | None, *, keep_step: bool = False) -> None:
        """Enrol (or with None remove) a user's TOTP secret; resets the replay marker
        unless ``keep_step`` (the same secret, sealed: services/sealing.py)."""
        values: dict = {"totp_secret": secret}
        if not keep_step:
            values["totp_last_step"] = None
        self.catalogue.run_write("changing a second factor", lambda conn: conn.execute(
            sa.update(users).where(users.c.pk == pk).values(**values)))

    def use_totp_step(self, pk: int, step: int) -> bool:
        """Mark time step ``step`` used; False when it (or a later one) was used already
        (one atomic UPDATE: two processes cannot both accept one code)."""
        def tx(conn: sa.Connection) -> bool:
            return conn.execute(sa.update(users).where(
                users.c.pk == pk, sa.or_(users.c.totp_last_step.is_(None),
                                         users.c.totp_last_step < step))
                .values(totp_last_step=step)).rowcount == 1
        return self.catalogue.run_write("recording a second factor", tx)

    def set_password(self, pk: int, password_hash: str, now: float, *,
                     history: tuple[str, ...] | None = None,
                     must_change: bool | None = None) -> None:
        """New password hash; ``history`` (previous hashes, newest first) and
        ``must_change`` (forced change at the next login) when given."""
        values: dict = {"password_hash": password_hash, "password_changed_at": now}
        if history is not None:
            values["password_history"] = orjson.dumps(list(history)).decode()
        if must_change is not None:
            values["must_change_password"] = must_change
        self.catalogue.run_write("changing a password", lambda conn: conn.execute(
            sa.update(users).where(users.c.pk == pk).values(**values)))

    def record_login_failure(self, pk: int, now: float, threshold: int,
                             lockout_s: float) -> bool:
        """Count one failed password; lock the account for ``lockout_s`` when the count of
        consecutive failures reaches ``threshold`` (MLPS 2). Returns True when this
        failure locked the account."""
        def tx(conn: sa.Connection) -> bool:
            failed = conn.execute(
                sa.update(users).where(users.c.pk == pk)
                .values(failed_logins=users.c.failed_logins + 1)
                .returning(users.c.failed_logins)).scalar_one()
            if failed >= threshold:
                conn.execute(sa.update(users).where(users.c.pk == pk).values(
                    failed_logins=0, locked_until=now + lockout_s))
                return True
            return False
        return self.catalogue.run_write("recording a failed login", tx)

    def record_login_success(self, pk: int, now: float) -> None:
        self.catalogue.run_write("recording a login", lambda conn: conn.execute(
            sa.update(users).where(users.c.pk == pk).values(
                failed_logins=0, locked_until=None, last_login_at=now)))

    def unlock(self, pk: int) -> None:
        self.catalogue.run_write("unlocking a user", lambda conn: conn.execute(
            sa.update(users).where(users.c.pk == pk).values(failed_logins=0,
                                                            locked_until=None)))

    # --- sessions ---------------------------------------------------------------------
    def create_session(self, user_pk: int, token_sha256: str, now: float,
                       expires_at: float, source_ip: str) -> int:
        return self.catalogue.run_write("creating a session", lambda conn: conn.execute(
            sa.insert(sessions).values(
                user_fk=user_pk, token_sha256=token_sha256, created_at=now,
                last_seen_at=now, expires_at=expires_at, source_ip=source_ip[:64])
            .returning(sessions.c.pk)).scalar_one())

    def find_session(self, token_sha256: str) -> tuple[SessionRecord, UserRecord] | None:
        stmt = (sa.select(sessions, *[c.label("u_" + c.name) for c in users.c])
                .select_from(sessions.join(users, sessions.c.user_fk == users.c.pk))
                .where(sessions.c.token_sha256 == token_sha256))
        row = self._read("reading a session", stmt)
        if row is None:
            return None
        return _session(row), _user(_prefixed(row, "u_"))

    def touch_session(self, pk: int, now: float) -> None:
        self.catalogue.run_write("updating a session", lambda conn: conn.execute(
            sa.update(sessions).where(sessions.c.pk == pk).values(last_seen_at=now)))

    def revoke_session(self, pk: int, now: float) -> None:
        self.catalogue.run_write("ending a session", lambda conn: conn.execute(
            sa.update(sessions).where(sessions.c.pk == pk, sessions.c.revoked_at.is_(None))
            .values(revoked_at=now)))

    def purge_sessions(self, before: float) -> int:
        """Remove sessions that ended (expired or revoked) before ``before`` (MLPS 21:
        authentication data is not kept longer than needed)."""
        def tx(conn: sa.Connection) -> int:
            return conn.execute(sa.delete(sessions).where(sa.or_(
                sessions.c.expires_at < before, sessions.c.revoked_at < before))).rowcount
        return self.catalogue.run_write("purging sessions", tx)

    # --- API tokens -------------------------------------------------------------------
    def create_token(self, user_pk: int, name: str, token_sha256: str,
                     scopes: tuple[str, ...], now: float, expires_at: float,
                     institutions: tuple[str, ...] | None = None) -> int:
        return self.catalogue.run_write("creating a token", lambda conn: conn.execute(
            sa.insert(api_tokens).values(
                user_fk=user_pk, name=name, token_sha256=token_sha256,
                scopes=",".join(scopes), created_at=now, expires_at=expires_at,
                institutions=None if institutions is None else ",".join(institutions))
            .returning(api_tokens.c.pk)).scalar_one())

    def find_token(self, token_sha256: str) -> tuple[TokenRecord, UserRecord] | None:
        stmt = (sa.select(api_tokens, *[c.label("u_" + c.name) for c in users.c])
                .select_from(api_tokens.join(users, api_tokens.c.user_fk == users.c.pk))
                .where(api_tokens.c.token_sha256 == token_sha256))
        row = self._read("reading a token", stmt)
        if row is None:
            return None
        return _token(row), _user(_prefixed(row, "u_"))

    def touch_token(self, pk: int, now: float) -> None:
        self.catalogue.run_write("updating a token", lambda conn: conn.execute(
            sa.update(api_tokens).where(api_tokens.c.pk == pk).values(last_used_at=now)))

    def revoke_token(self, pk: int, now: float) -> None:
        def tx(conn: sa.Connection) -> None:
            n = conn.execute(sa.update(api_tokens).where(api_tokens.c.pk == pk)
                             .values(revoked_at=sa.func.coalesce(api_tokens.c.revoked_at,
                                                                 now))).rowcount
            if not n:
                raise NotFound("no such token")
        self.catalogue.run_write("revoking a token", tx)

    def list_tokens(self, user_pk: int | None = None) -> list[TokenRecord]:
        stmt = sa.select(api_tokens).order_by(api_tokens.c.pk)
        if user_pk is not None:
            stmt = stmt.where(api_tokens.c.user_fk == user_pk)
        with translate_errors("listing tokens"), self.engine.connect() as conn:
            return [_token(r) for r in conn.execute(stmt)]


class _Prefixed:
    """Attribute view of the ``u_*`` columns of a joined row."""

    def __init__(self, row: sa.Row, prefix: str) -> None:
        self._m = {k[len(prefix):]: v for k, v in row._mapping.items()
                   if isinstance(k, str) and k.startswith(prefix)}

    def __getattr__(self, name: str):
        try:
            return self._m[name]
        except KeyError:
            raise AttributeError(name) from None


def _prefixed(row: sa.Row, prefix: str):
    return _Prefixed(row, prefix)
