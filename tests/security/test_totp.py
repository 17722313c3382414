"""TOTP second factor for administrators (MLPS 4; RFC 6238 / RFC 4226), through the real
application on SQLite and PostgreSQL, with the injectable clock instead of sleeps."""
from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from sechelpers import PASSWORD

from pacsd.services import totp

# RFC 6238 Appendix B: SHA-1 seed "12345678901234567890", 8 digits.
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()
RFC_VECTORS = [(59, "94287082"), (1111111109, "07081804"), (1111111111, "14050471"),
               (1234567890, "89005924"), (2000000000, "69279037"),
               (20000000000, "65353130")]
# RFC 4226 Appendix D: HOTP values for counters 0..9 (6 digits).
RFC_HOTP = ["755224", "287082", "359152", "969429", "338314", "254676", "287922",
            "162583", "399871", "520489"]


@pytest.mark.parametrize("t,expected", RFC_VECTORS)
def test_MLPS4_rfc6238_test_vectors(t, expected):
    key = base64.b32decode(RFC_SECRET)
    assert totp.hotp(key, totp.step_of(t), digits=8) == expected


def test_MLPS4_rfc4226_hotp_vectors_and_uri():
    key = b"12345678901234567890"
    assert [totp.hotp(key, c) for c in range(10)] == RFC_HOTP
    secret = totp.new_secret()
    assert len(base64.b32decode(secret + "=" * (-len(secret) % 8))) == 20
    uri = totp.provisioning_uri(secret, "sec admin")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc, parts.path) == ("otpauth", "totp", "/pacsd:sec%20admin")
    q = parse_qs(parts.query)
    assert q["secret"] == [secret] and q["digits"] == ["6"] and q["period"] == ["30"]


def test_MLPS4_window_accepts_one_step_of_drift_only():
    secret, now = totp.new_secret(), 1_750_000_000.0
    for drift, ok in ((-60, False), (-30, True), (0, True), (30, True), (60, False)):
        code = totp.code_at(secret, now + drift)
        assert (totp.matching_step(secret, code, now) is not None) == ok, drift
    assert totp.matching_step(secret, "12345", now) is None
    assert totp.matching_step(secret, "abcdef", now) is None


async def login(api, name, otp=None):
    body = {"username": name, "password": PASSWORD}
    if otp is not None:
        body["otp"] = otp
    return await api.client.post("/api/v1/auth/login", json=body)


@pytest.mark.parametrize("role", ["sysadmin", "secadmin", "auditor"])
async def test_MLPS4_administrators_need_password_and_code(api_db, role):
    api = api_db
    api.user("adm", role)
    # Not enrolled: no way in over HTTP, whatever is sent.
    assert (await login(api, "adm")).status == 401
    assert (await login(api, "adm", "123456")).status == 401
    secret, uri = api.security.enroll_totp("adm")
    assert secret in uri
    assert (await login(api, "adm")).status == 401                 # code missing
    wrong = f"{(int(totp.code_at(secret, api.clock())) + 1) % 10**6:06d}"
    assert (await login(api, "adm", wrong)).status == 401          # wrong code
    code = totp.code_at(secret, api.clock())
    r = await login(api, "adm", code)
    assert r.status == 200, await r.text()
    assert (await login(api, "adm", code)).status == 401           # replay: once only
    api.clock.advance(30)
    assert (await login(api, "adm", totp.code_at(secret, api.clock()))).status == 200
    # An older (still in-window) code is refused after a newer one was used.
    assert (await login(api, "adm", code)).status == 401
    reasons = [orjson.loads(e["detail"])["reason"]
               for e in await api.events(event_type="login-failed")]
    assert reasons == ["second factor not enrolled (pacsd user totp)"] * 2 + [
        "one-time code missing", "wrong one-time code", "one-time code replayed",
        "one-time code replayed"]
    logins = await api.events(event_type="login")
    assert all(orjson.loads(e["detail"])["factors"] == ["password", "totp"] for e in logins)
    assert [e["event_type"] for e in await api.events(event_type="totp-enrolled")] == [
        "totp-enrolled"]
    text = orjson.dumps(await api.events()).decode()
    assert secret not in text and code not in text  # never in the trail


async def test_MLPS4_wrong_codes_count_towards_lockout(api):
    api.user("sec", "secadmin")
    secret, _ = api.security.enroll_totp("sec")
    for _ in range(api.security.conf.lockout_threshold):
        assert (await login(api, "sec", "000000" if totp.code_at(
            secret, api.clock()) != "000000" else "111111")).status == 401
    # Locked: even the right code with the right password is refused now.
    assert (await login(api, "sec", totp.code_at(secret, api.clock()))).status == 401
    reasons = [orjson.loads(e["detail"])["reason"]
               for e in await api.events(event_type="login-failed")]
    assert reasons[-2].endswith("account now locked") and reasons[-1] == "account locked"


async def test_MLPS4_other_roles_need_a_code_once_enrolled(api_db):
    api = api_db
    api.user("dr", "radiologist")
    assert (await login(api, "dr")).status == 200                  # not required
    secret, _ = api.security.enroll_totp("dr")
    assert (await login(api, "dr")).status == 401                  # enrolled: required
    assert (await login(api, "dr", totp.code_at(secret, api.clock()))).status == 200
    api.security.remove_totp("dr")
    assert (await login(api, "dr")).status == 200
    assert len(await api.events(event_type="totp-removed")) == 1


@pytest.fixture
async def sealed_api(aiohttp_client, tmp_path, clock, db_url):
    """An API whose index keeps TOTP secrets sealed: [encryption] on, keys made."""
    from sechelpers import make_settings, start_api
    from pacsd.store.crypto import Keyring
    settings = make_settings(tmp_path, db_url)
    settings.encryption.enabled = True
    settings.encryption.key_dir = str(tmp_path / "keys")
    Keyring.init(settings.encryption.key_dir)
    return await start_api(aiohttp_client, settings, clock)


async def test_MLPS4_MLPS18_totp_secret_sealed_at_rest_with_encryption(sealed_api):
    """With encryption at rest the index holds the TOTP secret sealed (an index backup
    does not give away the second factor); codes still work, rotation keeps them
    working, a sealed value copied onto another user's row does not open."""
    from pacsd.services import sealing
    api = sealed_api
    api.user("adm", "sysadmin")
    api.user("other", "sysadmin")
    secret, _ = api.security.enroll_totp("adm")
    stored = api.security.accounts.get_user("adm").totp_secret
    assert sealing.is_sealed(stored) and secret not in stored
    assert (await login(api, "adm", totp.code_at(secret, api.clock()))).status == 200
    api.security._sealing().ring.rotate(None)          # `pacsd keys rotate`
    api.clock.advance(30)
    assert (await login(api, "adm", totp.code_at(secret, api.clock()))).status == 200
    other = api.security.accounts.get_user("other")
    api.security.accounts.set_totp(other.pk, stored)  # copied row: bound to user adm
    assert (await login(api, "other", totp.code_at(secret, api.clock()))).status == 401
    reasons = [orjson.loads(e["detail"])["reason"]
               for e in await api.events(event_type="login-failed")]
    assert reasons == ["second factor secret does not open with the key directory"]


async def test_MLPS4_clear_secret_from_before_encryption_is_sealed_at_next_login(
        sealed_api):
    api = sealed_api
    api.user("adm", "secadmin")
    user = api.security.accounts.get_user("adm")
    secret = totp.new_secret()
    api.security.accounts.set_totp(user.pk, secret)     # enrolled before encryption
    code = totp.code_at(secret, api.clock())
    assert (await login(api, "adm", code)).status == 200
    stored = api.security.accounts.get_user("adm").totp_secret
    assert stored.startswith("sealed1:") and secret not in stored
    assert (await login(api, "adm", code)).status == 401  # replay marker kept
    api.clock.advance(30)
    assert (await login(api, "adm", totp.code_at(secret, api.clock()))).status == 200
