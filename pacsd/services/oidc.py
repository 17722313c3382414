"""OIDC login to a hospital identity provider (R-E1; docs/security.md "OIDC login").

Authorization-code flow with PKCE (RFC 7636, S256) for a confidential client:

1. ``begin``: a random ``state``, ``nonce`` and PKCE verifier; a row in ``oidc_logins``
   keyed by the SHA-256 of the state, bound to the browser by the SHA-256 of a random
   cookie value; the browser goes to the provider's authorization endpoint.
2. ``finish`` (the callback): the row is deleted (single use, across processes) and must
   match the cookie and be younger than ``login_timeout_s``; the code is exchanged at the
   token endpoint (client secret + verifier); the ID token's signature is checked with the
   provider's keys (discovery + JWKS, cached; an unknown ``kid`` refetches them: key
   rotation), and its ``iss``, ``aud`` (and ``azp``), ``exp``, ``iat`` and ``nonce``
   (joserfc). Claims map to roles (``role_claim`` + ``role_map``) and institutions
   (``institution_claim``); the pacsd user is found by (issuer, subject) in
   ``oidc_links``, or created (or linked, ``link_existing_users``) on the first login.
3. The session is an ordinary pacsd session (same idle / absolute timeouts; logout
   revokes it). A user who needs TOTP (administrator roles, or enrolled) gives pacsd's
   one-time code too (``finish_otp`` with a single-use ticket) unless the provider says
   the login was multi-factor (``amr`` / ``acr``, ``mfa_amr_values`` / ``mfa_acr_values``).

Every refusal is an Unauthorized (401) audited as ``login-failed`` with ``method`` oidc and
the reason; a success is a ``login`` event with ``method`` oidc.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import time
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import sqlalchemy as sa
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from .. import errors
from ..config import OidcSettings
from ..index.oidc_schema import oidc_links, oidc_logins
from .security import (EXTERNAL_PASSWORD, Actor, SecurityService, check_roles,
                       check_username, token_digest)

log = logging.getLogger(__name__)

COOKIE = "pacsd_oidc"
#: Signature algorithms accepted for ID tokens (never "none", never HMAC with a
#: public key).
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
              "ES512", "EdDSA"]
REFETCH_MIN_S = 1.0
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=15)


class OidcRefused(errors.Unauthorized):
    """The OIDC login was refused."""


def _refusal() -> errors.Unauthorized:
    """What the client is told: one message (the reason is in the audit trail only)."""
    return errors.Unauthorized("the OIDC login was refused; start again",
                               headers={"WWW-Authenticate": 'Bearer realm="pacsd"'})


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _values(claim: Any) -> list[str]:
    if claim is None:
        return []
    if isinstance(claim, (list, tuple)):
        return [str(c) for c in claim]
    return [str(claim)]


class OidcLogin:
    """The OIDC login of one pacsd process (settings ``[security.oidc]``)."""

    def __init__(self, conf: OidcSettings, security: SecurityService) -> None:
        self.conf = conf
        self.security = security
        self.accounts = security.accounts
        self._meta: dict | None = None
        self._meta_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = 0.0

    # --- provider metadata and keys -------------------------------------------------------
    async def _get_json(self, url: str) -> dict:
        try:
            async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
                async with http.get(url, headers={"Accept": "application/json"}) as r:
                    body = await r.json(content_type=None) if r.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            body = None
        if not isinstance(body, dict):
            raise errors.OutOfResources("the identity provider did not answer")
        return body

    async def metadata(self) -> dict:
        if self._meta is None or time.monotonic() - self._meta_at > self.conf.jwks_cache_s:
            url = self.conf.issuer.rstrip("/") + "/.well-known/openid-configuration"
            meta = await self._get_json(url)
            if meta.get("issuer") != self.conf.issuer:
                raise errors.OutOfResources("the identity provider's discovery document "
                                            "names another issuer")
            self._meta, self._meta_at = meta, time.monotonic()
        return self._meta

    async def end_session_url(self) -> str | None:
        """Where the browser ends its session at the provider (OpenID Connect RP-Initiated
        Logout 1.0: ``end_session_endpoint`` with ``client_id`` and, when set,
        ``post_logout_redirect_uri``), or None when the provider offers none. pacsd keeps
        no ID token, so no ``id_token_hint``: the provider asks the user to confirm."""
        endpoint = (await self.metadata()).get("end_session_endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            return None
        params = {"client_id": self.conf.client_id}
        if self.conf.post_logout_redirect:
            params["post_logout_redirect_uri"] = self.conf.post_logout_redirect
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)

    async def keys(self, refresh: bool = False) -> KeySet:
        age = time.monotonic() - self._keys_at
        if self._keys is None or age > self.conf.jwks_cache_s or (
                refresh and age > REFETCH_MIN_S):
            jwks = await self._get_json((await self.metadata())["jwks_uri"])
            self._keys = KeySet.import_key_set(
                {"keys": [k for k in jwks.get("keys", []) if k.get("use", "sig") == "sig"]})
            self._keys_at = time.monotonic()
        return self._keys

    # --- step 1 ---------------------------------------------------------------------------
    async def begin(self, browser: str) -> str:
        """The authorization URL for a browser holding the cookie value ``browser``."""
        meta = await self.metadata()
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        now = self.security.clock()

        def tx(conn: sa.Connection) -> None:
            # Old unfinished logins go (no state lives longer than the timeout).
            conn.execute(sa.delete(oidc_logins).where(
                oidc_logins.c.created_at < now - self.conf.login_timeout_s))
            conn.execute(sa.insert(oidc_logins).values(
                state=_digest(state), kind="authorize", browser=_digest(browser),
                nonce=nonce, verifier=verifier, created_at=now))
        await self.security.run(self.accounts.catalogue.run_write, "starting a login", tx)
        scopes = ["openid", *[s for s in self.conf.scopes if s != "openid"]]
        query = urlencode({
            "response_type": "code", "client_id": self.conf.client_id,
            "redirect_uri": self.conf.redirect_uri, "scope": " ".join(scopes),
            "state": state, "nonce": nonce, "code_challenge": challenge,
            "code_challenge_method": "S256"})
        sep = "&" if "?" in meta["authorization_endpoint"] else "?"
        return f"{meta['authorization_endpoint']}{sep}{query}"

    def _take(self, kind: str, key: str, browser: str) -> sa.Row | None:
        """Delete and return the pending row (single use), if it is this browser's and
        not too old."""
        now = self.security.clock()

        def tx(conn: sa.Connection):
            row = conn.execute(sa.select(oidc_logins).where(
                oidc_logins.c.state == _digest(key), oidc_logins.c.kind == kind)).first()
            if row is None:
                return None
            conn.execute(sa.delete(oidc_logins).where(oidc_logins.c.state == row.state))
            return row
        row = self.accounts.catalogue.run_write("finishing a login", tx)
        if row is None or not secrets.compare_digest(row.browser, _digest(browser or "")):
            return None
        if now - row.created_at > self.conf.login_timeout_s:
            return None
        return row

    # --- step 2 ---------------------------------------------------------------------------
    async def finish(self, *, code: str, state: str, browser: str, source_ip: str,
                     device: str) -> dict:
        """Callback: a session ({"token", ...}) or {"otp_required": True, "ticket"}."""
        wait = self.security.limiter.retry_after(source_ip)
        if wait is not None:  # SEC-8, as for password logins
            raise errors.TooManyRequests("too many failed attempts; try again later",
                                         retry_after=wait)
        try:
            row = await self.security.run(self._take, "authorize", state or "", browser)
            if row is None:
                raise OidcRefused("unknown, used or expired state, or another browser")
            if not code:
                raise OidcRefused("no authorization code")
            id_token = await self._exchange(code, row.verifier)
            claims = await self._verify(id_token, row.nonce)
            return await self.security.run(self._login, claims, source_ip, device)
        except OidcRefused as exc:
            self._refused(exc.reason, source_ip, device)
            raise _refusal() from None
        except JoseError as exc:
            self._refused(f"id_token refused: {exc.error}", source_ip, device)
            raise _refusal() from None
        except (ValueError, TypeError):  # not a JWS / JSON at all
            self._refused("id_token refused: malformed", source_ip, device)
            raise _refusal() from None

    def _refused(self, reason: str, source_ip: str, device: str,
                 actor: Actor | None = None) -> None:
        self.security.limiter.failed(source_ip)
        self.security.audit.record("login-failed", outcome="failure", actor=actor,
                                   source_ip=source_ip, device=device,
                                   detail={"method": "oidc", "reason": reason[:200]})

    async def _exchange(self, code: str, verifier: str) -> str:
        meta = await self.metadata()
        # client_secret_basic (RFC 6749 §2.3.1): form-encoded id and secret, base64.
        basic = base64.b64encode(f"{quote(self.conf.client_id, safe='')}:"
                                 f"{quote(self.conf.secret(), safe='')}".encode()).decode()
        data = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": self.conf.redirect_uri, "code_verifier": verifier}
        try:
            async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
                async with http.post(meta["token_endpoint"], data=data, headers={
                        "Accept": "application/json", "Authorization": f"Basic {basic}"}
                        ) as r:
                    status = r.status
                    body = await r.json(content_type=None) if status < 500 else {}
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            raise OidcRefused("token endpoint unreachable or not JSON") from None
        if not isinstance(body, dict):
            body = {}
        if status != 200:
            raise OidcRefused(f"token endpoint answered {status} "
                              f"{str(body.get('error', ''))[:64]}")
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise OidcRefused("no id_token in the token response")
        return id_token

    async def _verify(self, id_token: str, nonce: str) -> dict:
        try:
            token = jwt.decode(id_token, await self.keys(), algorithms=ALGORITHMS)
        except InvalidKeyIdError:  # key rotation: fetch the keys again once
            token = jwt.decode(id_token, await self.keys(refresh=True),
                               algorithms=ALGORITHMS)
        claims = token.claims
        registry = jwt.JWTClaimsRegistry(
            now=int(self.security.clock()), leeway=int(self.conf.clock_skew_s),
            iss={"essential": True, "value": self.conf.issuer},
            sub={"essential": True}, exp={"essential": True}, iat={"essential": True},
            nonce={"essential": True, "value": nonce})
        registry.validate(claims)
        aud = _values(claims.get("aud"))
        if self.conf.client_id not in aud:
            raise OidcRefused("id_token refused: audience is not this client")
        if len(aud) > 1 and claims.get("azp") != self.conf.client_id:
            raise OidcRefused("id_token refused: authorized party is not this client")
        return claims

    def _mfa(self, claims: dict) -> bool:
        amr = set(_values(claims.get("amr")))
        return bool(amr & set(self.conf.mfa_amr_values)) or (
            claims.get("acr") is not None and str(claims["acr"]) in self.conf.mfa_acr_values)

    def _login(self, claims: dict, source_ip: str, device: str) -> dict:
        sec = self.security
        roles = sorted({self.conf.role_map[v] for v in _values(claims.get(self.conf.role_claim))
                        if v in self.conf.role_map})
        if not roles:
            raise OidcRefused("no pacsd role in the provider's claims")
        try:
            roles = list(check_roles(roles))
        except errors.BadRequest as exc:
            raise OidcRefused(f"claims map to roles pacsd refuses: {exc.reason}") from None
        user = self._user_for(claims, roles)
        if user.disabled:
            raise OidcRefused("account disabled")
        if sec.is_locked(user):
            raise OidcRefused("account locked")
        if self.conf.institution_claim:
            institutions = _values(claims.get(self.conf.institution_claim))
            if tuple(sorted(set(institutions))) != (user.institutions or None):
                try:
                    sec.set_user_scope(user.username, institutions, user.clearances)
                except (errors.BadRequest, ValueError):
                    raise OidcRefused("the institution claim holds an invalid code") from None
        if tuple(sorted(roles)) != tuple(sorted(user.roles)):
            sec.update_user(user.username, roles=roles)
        user = self.accounts.get_user_by_pk(user.pk)
        if sec.needs_totp(user) and not self._mfa(claims):
            ticket = secrets.token_urlsafe(32)
            self.accounts.catalogue.run_write("starting a login", lambda conn: conn.execute(
                sa.insert(oidc_logins).values(state=_digest(ticket), kind="otp", browser=_digest(""),
                                              user_fk=user.pk, created_at=sec.clock())))
            return {"otp_required": True, "ticket": ticket, "user": user.username}
        factors = ["oidc", "oidc-mfa"] if self._mfa(claims) else ["oidc"]
        return self._session(user, source_ip, device, factors)

    def _session(self, user, source_ip: str, device: str, factors: list[str]) -> dict:
        token, expires, actor = self.security.open_session(
            user, source_ip=source_ip, device=device, factors=factors, method="oidc")
        return {"token": token, "token_type": "Bearer", "expires_at": expires,
                "idle_timeout_s": self.security.conf.session_idle_timeout_s,
                "user": actor.name, "roles": sorted(actor.roles)}

    async def finish_otp(self, *, ticket: str, otp: str, source_ip: str,
                         device: str) -> dict:
        """Second step for a user who needs pacsd's TOTP (MLPS 4)."""
        sec = self.security

        def run() -> dict:
            row = self._take("otp", ticket or "", "")
            user = self.accounts.get_user_by_pk(row.user_fk) if row is not None else None
            if user is None or user.disabled:
                raise OidcRefused("unknown, used or expired ticket")
            reason = sec._second_factor(user, otp, sec.clock())
            if reason:
                sec.accounts.record_login_failure(user.pk, sec.clock(),
                                                  sec.conf.lockout_threshold,
                                                  sec.conf.lockout_s)
                raise OidcRefused(reason)
            return self._session(user, source_ip, device, ["oidc", "totp"])
        try:
            return await sec.run(run)
        except OidcRefused as exc:
            self._refused(exc.reason, source_ip, device)
            raise _refusal() from None

    def _user_for(self, claims: dict, roles: list[str]):
        """The linked user, or a new / linked one on the first login (audited)."""
        sec = self.security
        issuer, subject = self.conf.issuer, str(claims["sub"])
        with self.accounts.catalogue.engine.connect() as conn:
            pk = conn.scalar(sa.select(oidc_links.c.user_fk).where(
                oidc_links.c.issuer == issuer, oidc_links.c.subject == subject))
        if pk is not None:
            user = self.accounts.get_user_by_pk(pk)
            if user is not None:
                return user
        name = str(claims.get(self.conf.username_claim) or "")
        existing = self.accounts.get_user(name) if name else None
        if existing is not None:
            with self.accounts.catalogue.engine.connect() as conn:
                linked = conn.scalar(sa.select(oidc_links.c.subject).where(
                    oidc_links.c.user_fk == existing.pk))
            if linked is not None or not self.conf.link_existing_users:
                raise OidcRefused("the user name belongs to another pacsd account")
            user = existing
            action = "linked"
        else:
            try:
                check_username(name)
            except errors.BadRequest:
                raise OidcRefused("the provider's user name claim is missing or not a "
                                  "valid pacsd user name") from None
            # No password: "!oidc" is no argon2 hash, so a password login never matches.
            pk = self.accounts.create_user(name, tuple(roles), EXTERNAL_PASSWORD, sec.clock())
            user = self.accounts.get_user_by_pk(pk)
            action = "created"
            sec.audit.record("user-created", actor=None, detail={
                "user": f"user:{pk}", "username": name, "roles": roles, "method": "oidc"})
        self.accounts.catalogue.run_write("linking a login", lambda conn: conn.execute(
            sa.insert(oidc_links).values(user_fk=user.pk, issuer=issuer, subject=subject,
                                         linked_at=sec.clock())))
        log.info("OIDC subject %s user:%d (%s)", token_digest(subject)[:12], user.pk, action)
        return user
