"""TOTP second factor (RFC 6238 over RFC 4226 HOTP) for administrators (MLPS 4).

Implemented here with :mod:`hmac` rather than a dependency: the algorithm is a dozen lines
(HMAC-SHA1 of the 30-second time step, dynamic truncation, 6 digits), it is checked
against the RFC 6238 Appendix B test vectors in the tests, and owning it lets the replay
rule live in the database (a step, once used, is refused: ``Accounts.use_totp_step``).
The parameters are the ones every authenticator app (Google / Microsoft Authenticator,
FreeOTP, 阿里云/腾讯身份宝) reads from an ``otpauth://`` URI: SHA-1, 6 digits, 30 s.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from urllib.parse import quote, urlencode

STEP_S = 30
DIGITS = 6
#: Steps accepted either side of now (clock drift of the phone: +-30 s).
WINDOW = 1
SECRET_BYTES = 20  # 160 bits, RFC 4226 recommends at least 128


def new_secret() -> str:
    """A random shared secret, base32 without padding (what authenticator apps take)."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")


def _key(secret: str) -> bytes:
    s = secret.strip().replace(" ", "").upper()
    return base64.b32decode(s + "=" * (-len(s) % 8))


def hotp(key: bytes, counter: int, digits: int = DIGITS, digest=hashlib.sha1) -> str:
    """RFC 4226 §5.3: HMAC, dynamic truncation, modulo 10^digits."""
    mac = hmac.new(key, struct.pack(">Q", counter), digest).digest()
    offset = mac[-1] & 0x0F
    code = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(code % 10 ** digits).zfill(digits)


def step_of(now: float) -> int:
    return int(now // STEP_S)


def code_at(secret: str, now: float) -> str:
    """The code an authenticator shows at ``now`` (tests, enrolment check)."""
    return hotp(_key(secret), step_of(now))


def matching_step(secret: str, code: str, now: float, window: int = WINDOW) -> int | None:
    """The time step (within +-``window``) whose code is ``code``, else None. Every
    candidate is compared in constant time."""
    code = (code or "").strip()
    if len(code) != DIGITS or not code.isdigit():
        return None
    key = _key(secret)
    now_step = step_of(now)
    found = None
    for step in range(now_step - window, now_step + window + 1):
        if hmac.compare_digest(hotp(key, step), code) and found is None:
            found = step
    return found


def provisioning_uri(secret: str, account: str, issuer: str = "pacsd") -> str:
    """``otpauth://totp/ISSUER:ACCOUNT?...`` (Key Uri Format), for a QR code or manual
    entry."""
    label = quote(f"{issuer}:{account}", safe=":@")
    query = urlencode({"secret": secret, "issuer": issuer, "algorithm": "SHA1",
                       "digits": DIGITS, "period": STEP_S})
    return f"otpauth://totp/{label}?{query}"
