"""Helpers of the security tests (conftest.py holds the fixtures): a fake clock, cheap
argon2 parameters, settings, and an API wrapper around the aiohttp test client."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher

from pacsd.config import Settings
from pacsd.index import Catalogue
from pacsd.services.audit import AuditTrail
from pacsd.services import totp
from pacsd.services.security import SecurityService
from pacsd.web import create_app
from pacsd.web.keys import AUDIT, CLOCK, PASSWORD_HASHER, SECURITY

#: A password that meets the policy for every user name used in these tests.
PASSWORD = "Correct-Horse-9"
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
ALL_TABLES = ("audit_anchor, audit_cursors, audit_head, audit_events, sessions, api_tokens, "
              "users, instances, series, studies, patients, study_labels, departments, "
              "oidc_links, oidc_logins")


ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m pacsd.cli ARGS`` (this tree's pacsd), output captured as text."""
    return subprocess.run([sys.executable, "-m", "pacsd.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


class FakeClock:
    """POSIX seconds that move only when a test says so."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def pg_empty(url: str) -> str:
    """Migrate the session's PostgreSQL database and empty every table."""
    cat = Catalogue(url)
    cat.migrate()
    cat.close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {ALL_TABLES} RESTART IDENTITY CASCADE")
    engine.dispose()
    return url


def make_settings(tmp_path, db_url: str | None = None, *, enabled: bool = True,
                  **security: Any) -> Settings:
    s = Settings()
    s.server.data_dir = str(tmp_path / "data")
    s.server.worker_threads = 4
    # These tests exercise DELETE itself; the retention veto (R-A7) has its own tests
    # in tests/lifecycle/.
    s.retention.enabled = False
    if db_url:
        s.index.url = db_url
    s.security.enabled = enabled
    for k, v in security.items():
        setattr(s.security, k, v)
    return s


def make_service(settings: Settings, clock) -> tuple[SecurityService, Catalogue]:
    settings.data_path.mkdir(parents=True, exist_ok=True)
    cat = Catalogue(settings.index_url)
    cat.migrate()
    audit = AuditTrail(cat, clock=clock, immediate=True)
    return SecurityService(settings, cat, audit, clock=clock, hasher=FAST_HASHER), cat


class Api:
    """An aiohttp test client plus the app's services and shortcuts."""

    def __init__(self, client, clock: FakeClock) -> None:
        self.client = client
        self.clock = clock
        self.app = client.server.app
        self.security: SecurityService = self.app[SECURITY]
        self.audit: AuditTrail = self.app[AUDIT]
        self._secrets: dict[str, tuple[str, str | None]] = {}
        self._used: dict[str, int] = {}

    def user(self, name: str, *roles: str) -> None:
        self.security.create_user(name, PASSWORD, roles)

    def token(self, user: str, *scopes: str, days: float = 30) -> str:
        return self.security.create_token(user, scopes, days)[1]

    def otp(self, name: str) -> str | None:
        """A fresh TOTP code for a user who needs one (MLPS 4), enrolling on first use.
        A code is usable once: when this user's code of the current step was used, the
        clock moves on to the next step (30 s)."""
        user = self.security.accounts.get_user(name)
        if user is None or not self.security.needs_totp(user):
            return None
        secret, stored = self._secrets.get(name, (None, None))
        if secret is None or user.totp_secret != stored:  # (stored sealed: encryption)
            secret = self.security.enroll_totp(name)[0]
            self._secrets[name] = (secret, self.security.accounts.get_user(name).totp_secret)
        if self._used.get(name) == totp.step_of(self.clock()):
            self.clock.advance(totp.STEP_S)
        self._used[name] = totp.step_of(self.clock())
        return totp.code_at(secret, self.clock())

    async def login(self, name: str, password: str = PASSWORD) -> str:
        body = {"username": name, "password": password}
        code = self.otp(name)
        if code is not None:
            body["otp"] = code
        r = await self.client.post("/api/v1/auth/login", json=body)
        assert r.status == 200, await r.text()
        return (await r.json())["token"]

    async def session(self, name: str, *roles: str) -> dict[str, str]:
        """Create a user with ``roles``, log in, return the Authorization header."""
        self.user(name, *roles)
        return {"Authorization": f"Bearer {await self.login(name)}"}

    async def events(self, **match: Any) -> list[dict]:
        """Audit rows (flushed first) whose columns equal ``match``."""
        await self.audit.flush()
        rows = self.audit.query(limit=1000)
        return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


async def start_api(aiohttp_client, settings: Settings, clock: FakeClock,
                    plugins=None) -> Api:
    app = create_app(settings, plugins)
    app[CLOCK] = clock
    app[PASSWORD_HASHER] = FAST_HASHER
    return Api(await aiohttp_client(app), clock)
