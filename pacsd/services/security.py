"""Identity, authentication and authorization (R-E1, R-G1, MLPS 1, 2, 5, 6, 7).

* **Identity**: users with unique names and roles from :data:`ROLES`. The three MLPS
  administrator roles (``sysadmin``, ``secadmin``, ``auditor``) are mutually exclusive
  (MLPS 6: 三员分立). No account exists until ``pacsd user add`` creates one (MLPS 5: no
  default password). Passwords follow :func:`check_password_policy` and are stored as
  argon2id hashes only (MLPS 1).
* **Authentication**: ``POST /api/v1/auth/login`` gives a session token with an idle and an
  absolute timeout; logout revokes it (MLPS 2). API tokens (``pacsd token create``) are
  random 256-bit values shown once and stored as their SHA-256, scoped, expiring and
  revocable. Consecutive wrong passwords lock the account; failed logins and bad tokens
  from one address are rate-limited (SEC-8).
* **Authorization**: one function, :meth:`SecurityService.permission_allowed`: an action
  is allowed when the actor's roles give it (:data:`ROLE_ACTIONS`), the token's scopes
  include it, and no plugin's ``permission_allowed`` hook says False.

The web adapter (``pacsd/web/auth.py``) resolves an :class:`Actor` per request and asks
this module; every decision and every login is written to the audit trail
(``services/audit.py``). Times come from an injectable clock (tests travel in time).
"""
from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .. import errors
from ..config import ConfigError, Settings
from ..dicom import is_valid_uid
from ..index import Accounts, Catalogue, TokenRecord, UserRecord
from ..index.access import StudyLabels
from ..store.crypto import KeyUnavailable
from . import sealing
from .archive import open_keyring
from .sealing import Sealer
from ..plugins import Plugins
from . import totp
from .audit import AuditTrail
from .ratelimit import RateLimiter, SharedRateLimiter
from .scoping import check_institution, check_label

log = logging.getLogger(__name__)

#: The actions a route or a token scope can name.
ACTIONS = frozenset({"read", "write", "delete", "audit-read", "admin"})
#: The MLPS administrator roles: system, security and audit administrator (MLPS 6).
ADMIN_ROLES = frozenset({"sysadmin", "secadmin", "auditor"})
ROLES = ADMIN_ROLES | {"radiologist", "clinician", "integration"}
#: What each role may do. Least privilege (MLPS 6): the auditor reads the audit trail and
#: nothing else (no images); the security administrator manages users and tokens and sees
#: no images and no audit; the system administrator runs the archive (read, store,
#: delete) and can neither read the audit trail nor manage accounts.
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "sysadmin": frozenset({"read", "write", "delete"}),
    "secadmin": frozenset({"admin"}),
    "auditor": frozenset({"audit-read"}),
    "radiologist": frozenset({"read", "write"}),
    "clinician": frozenset({"read"}),
    "integration": frozenset({"read", "write"}),
    # The implicit operator of an archive running with [security] enabled = false
    # (loopback only, SEC-20). Not a role a user can hold.
    "local": ACTIONS,
    # A plugin's confined actor (a patient's share link, a kiosk): it may read, and the
    # plugin's permission_allowed hook vetoes everything outside its scope (SEC-1,
    # SEC-12). Not a role a user can hold.
    "guest": frozenset({"read"}),
}
SESSION_PREFIX = "pacsd-s-"
TOKEN_PREFIX = "pacsd-t-"
#: Random bytes per token: 256 bits (SEC-8 asks for at least 128).
TOKEN_BYTES = 32
#: Ended sessions (expired or revoked) are deleted this long after they ended (MLPS 21:
#: authentication data is not kept longer than needed; the audit trail keeps the logins),
#: checked at a login at most every SESSION_PURGE_EVERY_S per process.
SESSION_KEEP_S = 86400.0
SESSION_PURGE_EVERY_S = 3600.0
MAX_PASSWORD_LENGTH = 1024  # argon2 of a megabyte-long "password" is a DoS


@dataclass(frozen=True)
class Actor:
    """Who makes a request. ``id`` is what the audit trail records: ``user:N`` (a session),
    ``token:N`` (an API token), ``local`` (security disabled) or a plugin's own id."""

    id: str
    name: str = ""
    roles: frozenset[str] = frozenset()
    #: Token scopes; None = everything the roles give (sessions, local).
    scopes: frozenset[str] | None = None
    user_pk: int | None = None
    session_pk: int | None = None
    token_pk: int | None = None
    #: Data scope (R-A12, services/scoping.py): the institution codes whose studies the
    #: actor sees (None = every institution) and the sensitivity labels it is cleared
    #: for (None = every label; the default, an empty set, hides every labelled study).
    institutions: frozenset[str] | None = None
    clearances: frozenset[str] | None = frozenset()
    #: A session whose password must be changed first (forced change, expired password):
    #: it may only change the password, see who it is, and log out (MLPS 1).
    must_change_password: bool = False

    def actions(self) -> frozenset[str]:
        given = frozenset().union(*(ROLE_ACTIONS.get(r, frozenset()) for r in self.roles))
        return given if self.scopes is None else given & self.scopes


#: The password hash of a user made by an OIDC login: no argon2 hash, so no password
#: ever matches it (services/oidc.py).
EXTERNAL_PASSWORD = "!oidc"

LOCAL = Actor(id="local", name="local", roles=frozenset({"local"}), clearances=None)
ANONYMOUS = Actor(id="anonymous", name="")


@dataclass(frozen=True)
class Resource:
    """What an action is applied to: the route template (``/dicom-web/studies/{study}``),
    the HTTP method and, when the request names one, the study (for plugin policies such
    as share tokens or sensitivity labels: SEC-1, MLPS 8)."""

    route: str
    method: str = "GET"
    study_instance_uid: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class PasswordPolicyError(errors.BadRequest):
    """The password does not meet the password policy."""


def check_password_policy(username: str, password: str, min_length: int = 8) -> None:
    """MLPS 1 (assessor practice): at least ``min_length`` characters, at least three of
    lower case / upper case / digits / other, and not containing the user name."""
    if len(password) < min_length:
        raise PasswordPolicyError(f"the password needs at least {min_length} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"the password is longer than {MAX_PASSWORD_LENGTH}")
    classes = (any(c.islower() for c in password), any(c.isupper() for c in password),
               any(c.isdigit() for c in password),
               any(not c.isalnum() for c in password))
    if sum(classes) < 3:
        raise PasswordPolicyError("the password needs three of: lower case, upper case, "
                                  "digits, other characters")
    if username and username.lower() in password.lower():
        raise PasswordPolicyError("the password must not contain the user name")


def check_roles(roles: Iterable[str]) -> tuple[str, ...]:
    out = tuple(sorted(set(roles)))
    if not out:
        raise errors.BadRequest("a user needs at least one role")
    unknown = [r for r in out if r not in ROLES]
    if unknown:
        raise errors.BadRequest(f"unknown role {unknown[0][:32]!r}; roles are "
                                + ", ".join(sorted(ROLES)))
    if len(ADMIN_ROLES.intersection(out)) > 1:
        raise errors.BadRequest("sysadmin, secadmin and auditor are mutually exclusive "
                                "(separation of duties)")
    return out


def check_username(username: str) -> str:
    if not (1 <= len(username) <= 64) or not all(c.isalnum() or c in "._-@" for c in username):
        raise errors.BadRequest("user names are 1-64 letters, digits or . _ - @")
    return username


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _bad_token(reason: str) -> errors.Unauthorized:
    # RFC 6750 §3: the reason tells a client why to log in again (SEC-6).
    return errors.Unauthorized(f"the token is {reason}", headers={
        "WWW-Authenticate": f'Bearer realm="pacsd", error="invalid_token", '
                            f'error_description="{reason}"'})


def auth_required() -> errors.Unauthorized:
    return errors.Unauthorized("authentication required: send Authorization: Bearer <token>",
                               headers={"WWW-Authenticate": 'Bearer realm="pacsd"'})


class SecurityService:
    """Users, sessions, API tokens and authorization decisions over the catalogue DB."""

    def __init__(self, settings: Settings, catalogue: Catalogue, audit: AuditTrail,
                 plugins: Plugins | None = None, *, run: Callable | None = None,
                 clock: Callable[[], float] = time.time,
                 hasher: PasswordHasher | None = None,
                 limiter: RateLimiter | SharedRateLimiter | None = None) -> None:
        self.settings = settings
        self.conf = settings.security
        self.accounts = Accounts(catalogue)
        self.labels = StudyLabels(catalogue)
        #: token digest -> (actor, checked at, expires at): see _remember.
        self._cache: dict[str, tuple[Actor, float, float]] = {}
        #: [security] trusted_proxies, parsed (web/auth.py client_ip).
        self.trusted_proxies = [ipaddress.ip_network(str(n).strip(), strict=False)
                                for n in self.conf.trusted_proxies]
        self.audit = audit
        self.plugins = plugins or Plugins()
        self._run = run
        self.clock = clock
        # argon2-cffi's defaults are RFC 9106's second recommended profile (argon2id,
        # t=3, m=64 MiB, p=4), salted per hash.
        self.hasher = hasher or PasswordHasher()
        #: Per process, or shared by the worker processes (server.py, SharedRateLimiter).
        self.limiter = limiter or RateLimiter(self.conf.login_rate_limit,
                                              self.conf.login_rate_window_s, clock)
        self._dummy: str | None = None  # made at the first unknown-user login
        self._next_session_purge = 0.0
        self._sealer: Sealer | None | bool = False  # False: not opened yet (_sealing)

    @property
    def enabled(self) -> bool:
        return self.conf.enabled

    async def run(self, fn: Callable, *args: Any) -> Any:
        if self._run is None:
            return fn(*args)
        return await self._run(fn, *args)

    # --- users --------------------------------------------------------------------------
    def create_user(self, username: str, password: str, roles: Iterable[str], *,
                    actor: Actor = LOCAL, source_ip: str = "", temporary: bool = False
                    ) -> int:
        """``temporary``: the password was chosen by an administrator, so the user must
        change it at the first login (MLPS 1)."""
        username = check_username(username)
        roles = check_roles(roles)
        check_password_policy(username, password, self.conf.password_min_length)
        pk = self.accounts.create_user(username, roles, self.hasher.hash(password),
                                       self.clock())
        if temporary:
            self.accounts.update_user(pk, must_change_password=True)
        self.audit.record("user-created", actor=actor, source_ip=source_ip,
                          detail={"user": f"user:{pk}", "username": username,
                                  "roles": list(roles)})
        return pk

    def set_password(self, username: str, password: str, *, actor: Actor = LOCAL,
                     temporary: bool = False, source_ip: str = "") -> None:
        """A new password (policy and history apply, MLPS 1). ``temporary``: set by an
        administrator, to be changed by the user at the next login."""
        user = self._user(username)
        check_password_policy(username, password, self.conf.password_min_length)
        recent = (user.password_hash, *user.password_history)[:self.conf.password_history]
        if any(self._verify(h, password) for h in recent):
            raise PasswordPolicyError(f"the password must differ from the last "
                                      f"{self.conf.password_history} passwords")
        history = recent[:max(self.conf.password_history - 1, 0)]
        self.accounts.set_password(user.pk, self.hasher.hash(password), self.clock(),
                                   history=tuple(history), must_change=temporary)
        self.accounts.unlock(user.pk)
        self.forget_cached()  # effective at once in this process
        self.audit.record("password-changed", actor=actor, source_ip=source_ip,
                          detail={"user": f"user:{user.pk}", "username": username,
                                  "temporary": temporary})

    async def change_own_password(self, actor: Actor, old: str, new: str, *,
                                  source_ip: str = "") -> None:
        """A signed-in user changes their own password, proving the old one (MLPS 1)."""
        if actor.session_pk is None or actor.user_pk is None:
            raise errors.BadRequest("only a login session can change its password")

        def change() -> None:
            user = self.accounts.get_user_by_pk(actor.user_pk)
            if user is None or not self._verify(user.password_hash, old):
                self.audit.record("login-failed", outcome="failure", actor=actor,
                                  source_ip=source_ip,
                                  detail={"username": actor.name,
                                          "reason": "wrong password at password change"})
                raise errors.Forbidden("the current password is wrong")
            self.set_password(user.username, new, actor=actor, source_ip=source_ip)
        await self.run(change)

    def password_change_required(self, user: UserRecord) -> bool:
        if user.password_hash == EXTERNAL_PASSWORD:
            return False  # an OIDC user has no pacsd password (services/oidc.py)
        max_age = self.conf.password_max_age_days
        return user.must_change_password or (
            max_age > 0 and self.clock() - user.password_changed_at > max_age * 86400)

    def is_inactive(self, user: UserRecord) -> bool:
        """Unused for ``inactive_disable_days`` (disabled at its next login attempt;
        shown in the account report: ``pacsd user list``, the admin API)."""
        return self._inactive(user, self.clock())

    def _inactive(self, user: UserRecord, now: float) -> bool:
        days = self.conf.inactive_disable_days
        since = max(user.created_at, user.last_login_at or 0, user.reactivated_at or 0)
        return days > 0 and now - since > days * 86400

    def unlock_user(self, username: str, *, actor: Actor = LOCAL) -> None:
        user = self._user(username)
        self.accounts.unlock(user.pk)
        self.audit.record("user-unlocked", actor=actor,
                          detail={"user": f"user:{user.pk}", "username": username})

    def set_user_scope(self, username: str, institutions: Iterable[str] | None,
                       clearances: Iterable[str], *, actor: Actor = LOCAL,
                       source_ip: str = "") -> None:
        """Set the institutions (None = ``[security] default_institutions``) and the
        sensitivity-label clearances of a user (R-A12, MLPS 7, 8; audited, MLPS 9)."""
        user = self._user(username)
        insts = None if institutions is None else _codes(institutions)
        clear = tuple(sorted({check_label(c) for c in clearances}))
        self.accounts.set_scope(user.pk, insts, clear)
        self.forget_cached()  # effective at once in this process
        self.audit.record("user-scope-changed", actor=actor, source_ip=source_ip, detail={
            "user": f"user:{user.pk}", "username": username,
            "institutions": None if insts is None else list(insts),
            "clearances": list(clear)})

    _KEEP = object()

    def update_user(self, username: str, *, roles: Iterable[str] | None = None,
                    disabled: bool | None = None, department: Any = _KEEP,
                    actor: Actor = LOCAL, source_ip: str = "") -> UserRecord:
        """Change a user's roles, department or disabled state (audited as
        ``user-changed``). Nobody changes their own roles or disables themselves (MLPS 6:
        an administrator cannot widen or hand over their own duties)."""
        user = self._user(username)
        values: dict[str, Any] = {}
        if roles is not None:
            values["roles"] = check_roles(roles)
        if disabled is not None:
            values["disabled"] = bool(disabled)
            if not disabled and user.disabled:
                values["reactivated_at"] = self.clock()  # restarts the inactivity clock
        if department is not self._KEEP:
            if department is not None and not self.accounts.department_exists(department):
                raise errors.BadRequest("no such department")
            values["department"] = department
        if not values:
            raise errors.BadRequest("nothing to change")
        if actor.user_pk == user.pk and ("roles" in values or values.get("disabled")):
            raise errors.Forbidden("you cannot change your own roles or disable yourself")
        self.accounts.update_user(user.pk, **values)
        detail = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
        self.forget_cached()  # effective at once in this process
        self.audit.record("user-changed", actor=actor, source_ip=source_ip, detail={
            "user": f"user:{user.pk}", "username": username, **detail})
        return self._user(username)

    def departments(self) -> list[dict]:
        return self.accounts.departments()

    def change_department(self, action: str, name: str, *, new_name: str | None = None,
                          description: str | None = None, actor: Actor = LOCAL,
                          source_ip: str = "") -> None:
        """``action``: create, update or delete a department (R-E1; audited)."""
        for n in (name, new_name):
            if n is not None and not (1 <= len(n) <= 64 and n.isprintable()):
                raise errors.BadRequest("a department name is 1-64 printable characters")
        if description is not None and len(description) > 256:
            raise errors.BadRequest("a description is at most 256 characters")
        if action == "create":
            self.accounts.create_department(name, description or "", self.clock())
        elif action == "update":
            self.accounts.update_department(name, new_name=new_name, description=description)
        else:
            self.accounts.delete_department(name)
        self.audit.record("department-changed", actor=actor, source_ip=source_ip, detail={
            "action": action, "name": name, **({"new_name": new_name} if new_name else {})})

    def study_labels(self, study_uid: str) -> list[str]:
        return self.labels.get(study_uid)

    def set_study_labels(self, study_uid: str, labels: Iterable[str], *,
                         actor: Actor = LOCAL, source_ip: str = "", device: str = ""
                         ) -> list[str]:
        """Replace the sensitivity labels of a study (MLPS 8; audited). Labels are kept
        by StudyInstanceUID, so a study may be labelled before it arrives."""
        if not is_valid_uid(study_uid):
            raise errors.BadRequest("not a valid StudyInstanceUID")
        labels = list(labels)
        added, removed = self.labels.replace(study_uid, labels, self.clock(), actor.id)
        self.audit.record("labels-changed", actor=actor, source_ip=source_ip, device=device,
                          study_uid=study_uid,
                          detail={"added": added, "removed": removed})
        return self.labels.get(study_uid)

    def actor_of_user(self, user: UserRecord, *, session_pk: int | None = None) -> Actor:
        actor = _actor_of(user, self._institutions(user.institutions), session_pk=session_pk)
        if session_pk is not None and self.password_change_required(user):
            actor = dataclasses.replace(actor, must_change_password=True)
        return actor

    def _institutions(self, codes: Iterable[str] | None) -> frozenset[str] | None:
        """A user's institutions; None (unrestricted) when they include ``*``."""
        if codes is None:
            codes = self.conf.default_institutions
        codes = frozenset(codes)
        return None if "*" in codes else codes

    def list_users(self) -> list[UserRecord]:
        return self.accounts.list_users()

    def user_count(self) -> int:
        return self.accounts.user_count()

    def _user(self, username: str) -> UserRecord:
        user = self.accounts.get_user(username)
        if user is None:
            raise errors.NotFound("no such user")
        return user

    def is_locked(self, user: UserRecord) -> bool:
        return user.locked_until is not None and user.locked_until > self.clock()

    # --- API tokens ---------------------------------------------------------------------
    def create_token(self, username: str, scopes: Iterable[str], days: float, *,
                     name: str = "", actor: Actor = LOCAL,
                     institutions: Iterable[str] | None = None) -> tuple[int, str, float]:
        """A new API token for ``username``: (token id, the token, expiry). The token is
        returned once and stored only as its SHA-256. ``institutions`` narrows the
        user's (a token never sees more than its user, R-A12)."""
        user = self._user(username)
        insts = None if institutions is None else _codes(institutions)
        scopes = tuple(sorted(set(scopes)))
        bad = [s for s in scopes if s not in ACTIONS]
        if not scopes or bad:
            raise errors.BadRequest("token scopes are one or more of " + ", ".join(
                sorted(ACTIONS)))
        if not 0 < days <= self.conf.token_max_days:
            raise errors.BadRequest(f"a token lives 1 to {self.conf.token_max_days} days")
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        now = self.clock()
        expires = now + days * 86400
        pk = self.accounts.create_token(user.pk, name[:64], token_digest(token), scopes,
                                        now, expires, insts)
        self.audit.record("token-created", actor=actor, detail={
            "token": f"token:{pk}", "user": f"user:{user.pk}", "scopes": list(scopes),
            "expires_at": expires, "institutions": None if insts is None else list(insts)})
        return pk, token, expires

    def revoke_token(self, pk: int, *, actor: Actor = LOCAL) -> None:
        self.accounts.revoke_token(pk, self.clock())
        self.forget_cached()  # effective at once in this process
        self.audit.record("token-revoked", actor=actor, detail={"token": f"token:{pk}"})

    def list_tokens(self, username: str | None = None) -> list[TokenRecord]:
        return self.accounts.list_tokens(self._user(username).pk if username else None)

    # --- login / logout -----------------------------------------------------------------
    async def login(self, username: str, password: str, *, source_ip: str = "",
                    device: str = "", otp: str | None = None) -> tuple[str, float, Actor]:
        """Check the password and, for users who need one (``totp_required_roles`` or
        enrolled), the one-time code ``otp`` (MLPS 4); returns (session token, absolute
        expiry, actor).
        Unauthorized on any failure (one message: which part was wrong is not told),
        TooManyRequests when this address failed too often (SEC-8)."""
        wait = self.limiter.retry_after(source_ip)
        if wait is not None:
            self.audit.record("login-failed", outcome="failure", source_ip=source_ip,
                              device=device, detail={"username": username[:64],
                                                     "reason": "rate-limited"})
            raise errors.TooManyRequests("too many failed attempts; try again later",
                                         retry_after=wait)
        try:
            return await self.run(self._login_sync, username, password, source_ip, device,
                                  otp)
        except errors.Unauthorized:
            self.limiter.failed(source_ip)
            raise

    def _login_sync(self, username: str, password: str, source_ip: str, device: str,
                    otp: str | None = None) -> tuple[str, float, Actor]:
        now = self.clock()
        user = self.accounts.get_user(username) if len(username) <= 64 else None
        reason = ""
        if user is None:
            if self._dummy is None:
                self._dummy = self.hasher.hash(secrets.token_hex(16))
            self._verify(self._dummy, password)  # about the time of a known user (SEC-9)
            reason = "unknown user"
        elif user.disabled:
            reason = "account disabled"
        elif self._inactive(user, now):
            # MLPS 5: an account unused for inactive_disable_days is disabled.
            self.accounts.update_user(user.pk, disabled=True)
            self.forget_cached()  # effective at once in this process
            self.audit.record("user-changed", actor=LOCAL, source_ip=source_ip, detail={
                "user": f"user:{user.pk}", "username": user.username, "disabled": True,
                "reason": f"inactive for {self.conf.inactive_disable_days:g} days"})
            reason = "account disabled (inactive)"
        elif self.is_locked(user):
            reason = "account locked"
        elif not self._verify(user.password_hash, password):
            reason = "wrong password"
            if self.accounts.record_login_failure(user.pk, now, self.conf.lockout_threshold,
                                                  self.conf.lockout_s):
                reason = "wrong password; account now locked"
                log.warning("account user:%d locked after %d failed logins", user.pk,
                            self.conf.lockout_threshold)
        elif self.needs_totp(user):
            # MLPS 4: the second factor, only once the password was right. A wrong or
            # missing code counts as a failed login (lockout: 10^6 codes are guessable).
            reason = self._second_factor(user, otp, now)
            if reason and self.accounts.record_login_failure(
                    user.pk, now, self.conf.lockout_threshold, self.conf.lockout_s):
                reason += "; account now locked"
        if reason:
            self.audit.record("login-failed", outcome="failure", source_ip=source_ip,
                              device=device, actor=self.actor_of_user(user) if user else None,
                              detail={"username": username[:64], "reason": reason})
            raise errors.Unauthorized("invalid user name or password, or account locked",
                                      headers={"WWW-Authenticate": 'Bearer realm="pacsd"'})
        assert user is not None
        if self.hasher.check_needs_rehash(user.password_hash):
            self.accounts.set_password(user.pk, self.hasher.hash(password),
                                       user.password_changed_at)
        return self.open_session(user, source_ip=source_ip, device=device,
                                 factors=["password", "totp"] if self.needs_totp(user)
                                 else ["password"])

    def open_session(self, user: UserRecord, *, source_ip: str, device: str,
                     factors: list[str], method: str = "password"
                     ) -> tuple[str, float, Actor]:
        """A new session for ``user``, whose credentials the caller checked (password
        login above, OIDC login in ``services/oidc.py``); audited as ``login``."""
        now = self.clock()
        self.accounts.record_login_success(user.pk, now)
        token = SESSION_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        expires = now + self.conf.session_absolute_timeout_s
        spk = self.accounts.create_session(user.pk, token_digest(token), now, expires,
                                           source_ip)
        if now >= self._next_session_purge:
            self._next_session_purge = now + SESSION_PURGE_EVERY_S
            self.accounts.purge_sessions(now - SESSION_KEEP_S)
        actor = self.actor_of_user(user, session_pk=spk)
        detail = {"session": f"session:{spk}", "factors": factors}
        if method != "password":
            detail["method"] = method
        self.audit.record("login", actor=actor, source_ip=source_ip, device=device,
                          detail=detail)
        return token, expires, actor

    # --- TOTP second factor (MLPS 4) -----------------------------------------------------
    def needs_totp(self, user: UserRecord) -> bool:
        """Administrators (``[security] totp_required_roles``) and anyone enrolled."""
        return bool(user.totp_secret) or bool(
            set(user.roles) & set(self.conf.totp_required_roles))

    def _second_factor(self, user: UserRecord, otp: str | None, now: float) -> str:
        """'' when ``otp`` is a fresh valid code, else the reason (for the audit only)."""
        if not user.totp_secret:
            return "second factor not enrolled (pacsd user totp)"
        if not otp:
            return "one-time code missing"
        enabled = self.settings.encryption.enabled
        sealer = self._sealing() if enabled or sealing.is_sealed(user.totp_secret) else None
        try:
            secret = sealing.open_value(user.totp_secret, f"totp:{user.pk}", sealer)
        except KeyUnavailable:
            return "second factor secret does not open with the key directory"
        step = totp.matching_step(secret, otp, now)
        if step is None:
            return "wrong one-time code"
        if not self.accounts.use_totp_step(user.pk, step):
            return "one-time code replayed"
        if sealer is not None and enabled and not sealing.is_sealed(user.totp_secret):
            # Enrolled before encryption at rest was on: sealed now, replay marker kept.
            self.accounts.set_totp(user.pk, sealer.seal(secret, f"totp:{user.pk}"),
                                   keep_step=True)
        return ""

    def _sealing(self) -> Sealer | None:
        """The sealer of stored secrets (services/sealing.py): the ``[encryption]`` key
        directory when one is configured, else None (secrets stay as they are)."""
        if self._sealer is False:
            try:
                self._sealer = Sealer(open_keyring(self.settings)) \
                    if self.settings.encryption.key_dir else None
            except ConfigError as e:
                log.warning("sealed secrets cannot be opened: %s", e)
                self._sealer = None
        return self._sealer

    def enroll_totp(self, username: str, *, actor: Actor = LOCAL) -> tuple[str, str]:
        """A new TOTP secret for ``username`` (replacing any): (secret, otpauth URI).
        Audited as ``totp-enrolled``; the secret itself is never logged or audited."""
        user = self._user(username)
        secret = totp.new_secret()
        stored = secret
        if self.settings.encryption.enabled:  # sealed at rest (services/sealing.py)
            sealer = self._sealing()
            if sealer is None:
                raise errors.DataUnavailable("encryption at rest is on but the key "
                                             "directory cannot be opened")
            stored = sealer.seal(secret, f"totp:{user.pk}")
        self.accounts.set_totp(user.pk, stored)
        self.audit.record("totp-enrolled", actor=actor,
                          detail={"user": f"user:{user.pk}", "username": username})
        return secret, totp.provisioning_uri(secret, username, self.conf.totp_issuer)

    def remove_totp(self, username: str, *, actor: Actor = LOCAL) -> None:
        user = self._user(username)
        self.accounts.set_totp(user.pk, None)
        self.audit.record("totp-removed", actor=actor,
                          detail={"user": f"user:{user.pk}", "username": username})

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def logout(self, actor: Actor, *, source_ip: str = "", device: str = "") -> None:
        if actor.session_pk is None:
            raise errors.BadRequest("only a login session can log out; API tokens are "
                                    "revoked with `pacsd token revoke`")
        await self.run(self.accounts.revoke_session, actor.session_pk, self.clock())
        self.forget_cached()  # effective at once in this process
        self.audit.record("logout", actor=actor, source_ip=source_ip, device=device,
                          detail={"session": f"session:{actor.session_pk}"})

    # --- bearer tokens ------------------------------------------------------------------
    async def authenticate_bearer(self, authorization: str | None, *, source_ip: str = "",
                                  device: str = "") -> Actor:
        """The actor of an ``Authorization`` header value; Unauthorized (401 with
        WWW-Authenticate, SEC-6/SEC-7) or TooManyRequests (SEC-8)."""
        if not authorization:
            raise auth_required()
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise auth_required()
        wait = self.limiter.retry_after(source_ip)
        if wait is not None:
            raise errors.TooManyRequests("too many failed attempts; try again later",
                                         retry_after=wait)
        token = token.strip()
        cached = self._cached(token_digest(token)) if len(token) <= 256 else None
        if cached is not None:
            return cached
        try:
            return await self.run(self._actor_for_token, token)
        except errors.Unauthorized as exc:
            self.limiter.failed(source_ip)
            self.audit.record("login-failed", outcome="failure", source_ip=source_ip,
                              device=device, detail={"method": "bearer",
                                                     "reason": exc.reason})
            raise

    def _actor_for_token(self, token: str) -> Actor:
        now = self.clock()
        if len(token) > 256:
            raise _bad_token("unknown")
        digest = token_digest(token)
        if token.startswith(SESSION_PREFIX):
            found = self.accounts.find_session(digest)
            if found is None:
                raise _bad_token("unknown")
            sess, user = found
            if sess.revoked_at is not None:
                raise _bad_token("revoked")
            if now >= sess.expires_at or now - sess.last_seen_at >= \
                    self.conf.session_idle_timeout_s:
                raise _bad_token("expired")
            if user.disabled:
                raise _bad_token("revoked")
            # Idle tracking without a write per request: at most one per interval.
            if now - sess.last_seen_at >= min(60.0, self.conf.session_idle_timeout_s / 10):
                self.accounts.touch_session(sess.pk, now)
            actor = self.actor_of_user(user, session_pk=sess.pk)
            self._remember(digest, actor, sess.expires_at, now)
            return actor
        if token.startswith(TOKEN_PREFIX):
            found = self.accounts.find_token(digest)
            if found is None:
                raise _bad_token("unknown")
            tok, user = found
            if tok.revoked_at is not None or user.disabled:
                raise _bad_token("revoked")
            if now >= tok.expires_at:
                raise _bad_token("expired")
            if tok.last_used_at is None or now - tok.last_used_at >= 60:
                self.accounts.touch_token(tok.pk, now)
            insts = self._institutions(user.institutions)
            if tok.institutions is not None:  # narrows, never widens
                own = frozenset(tok.institutions) - {"*"}
                insts = own if insts is None else insts & own
            actor = Actor(id=f"token:{tok.pk}", name=user.username,
                          roles=frozenset(user.roles), scopes=frozenset(tok.scopes),
                          user_pk=user.pk, token_pk=tok.pk, institutions=insts,
                          clearances=frozenset(user.clearances))
            self._remember(digest, actor, tok.expires_at, now)
            return actor
        raise _bad_token("unknown")

    # --- the token cache ----------------------------------------------------------------
    # A verified token's actor is kept for [security] auth_cache_ttl_s, so most requests
    # skip the database round trip and the worker-thread hop. Changes made through this
    # process (logout, revocation, user / scope / password changes) clear it at once;
    # other pacsd processes see them within the TTL (SEC-6: revocation effective within
    # the authz-cache TTL). Sessions are re-checked against the database at least once
    # per TTL, which also keeps their idle time up to date.
    CACHE_MAX = 10_000

    def _remember(self, digest: str, actor: Actor, expires_at: float, now: float) -> None:
        if self.conf.auth_cache_ttl_s <= 0:
            return
        if len(self._cache) >= self.CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (actor, now, expires_at)

    def _cached(self, digest: str) -> Actor | None:
        entry = self._cache.get(digest)
        if entry is None:
            return None
        actor, checked_at, expires_at = entry
        now = self.clock()
        if now - checked_at >= self.conf.auth_cache_ttl_s or now >= expires_at:
            self._cache.pop(digest, None)
            return None
        return actor

    def forget_cached(self) -> None:
        """Drop every cached token (after any change to accounts, sessions or tokens)."""
        self._cache.clear()

    # --- DIMSE peers --------------------------------------------------------------------
    def actor_from_association(self, calling_ae: str, address: str, called_ae: str = ""
                               ) -> Actor | None:
        """The actor of a DIMSE association (SEC-18): an ``actor_from_association``
        plugin's, else the ``[dimse] actors`` entry of the calling AE title when the
        source address is one of its ``source_ips``. With security disabled an unlisted
        AE acts as the local operator (audited under its AE title); enabled, it is None
        (refused, 0x0124)."""
        calling_ae = (calling_ae or "").strip()
        actor = self.plugins.first("actor_from_association", calling_ae=calling_ae,
                                   address=address, called_ae=called_ae)
        if actor is not None:
            return actor
        entry = self.settings.dimse.actor_table().get(calling_ae)
        if entry is not None and _address_in(address, entry["source_ips"]):
            return Actor(id=f"ae:{calling_ae}", name=calling_ae,
                         roles=frozenset(entry["roles"]),
                         institutions=self._institutions(entry["institutions"]),
                         clearances=frozenset(entry["clearances"]))
        if not self.enabled:
            return Actor(id=f"ae:{calling_ae}", name=calling_ae, roles=frozenset({"local"}),
                         clearances=None)
        return None

    # --- authorization ------------------------------------------------------------------
    def permission_allowed(self, actor: Actor, action: str, resource: Resource) -> bool:
        """The one authorization decision (module docstring): roles and scopes allow,
        plugins may only deny (MLPS 7: plugins cannot bypass)."""
        if action not in actor.actions():
            return False
        votes = self.plugins.collect("permission_allowed", actor=actor, action=action,
                                     resource=resource)
        return not any(v is False for v in votes)


def _actor_of(user: UserRecord, institutions: frozenset[str] | None, *,
              session_pk: int | None = None) -> Actor:
    return Actor(id=f"user:{user.pk}", name=user.username, roles=frozenset(user.roles),
                 user_pk=user.pk, session_pk=session_pk, institutions=institutions,
                 clearances=frozenset(user.clearances))


def _address_in(address: str, networks: list) -> bool:
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks)


def _codes(codes: Iterable[str]) -> tuple[str, ...]:
    try:
        return tuple(sorted({check_institution(c) for c in codes}))
    except ValueError as exc:
        raise errors.BadRequest(str(exc)) from None


def open_security(settings: Settings) -> tuple[SecurityService, Catalogue]:
    """A :class:`SecurityService` over the settings' catalogue, for the command line and
    the start-up check (no blob store, no web app). Audit events it records are written
    at once. Close the returned catalogue when done."""
    settings.data_path.mkdir(parents=True, exist_ok=True)
    catalogue = Catalogue(settings.index_url, busy_timeout_s=settings.index.busy_timeout_s)
    catalogue.migrate()
    audit = AuditTrail(catalogue, immediate=True)
    return SecurityService(settings, catalogue, audit), catalogue


def count_users(settings: Settings) -> int:
    """Enabled user accounts in the settings' catalogue (SEC-20 start-up check)."""
    catalogue = Catalogue(settings.index_url, busy_timeout_s=settings.index.busy_timeout_s)
    try:
        settings.data_path.mkdir(parents=True, exist_ok=True)
        catalogue.migrate()
        return Accounts(catalogue).user_count()
    finally:
        catalogue.close()
