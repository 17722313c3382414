"""Secrets the server has to read back, sealed at rest with the ``[encryption]`` keys.

Passwords and tokens are stored as hashes; a TOTP shared secret cannot be (the server
computes the codes from it), so it is the one long-lived secret in the index that an
index backup would otherwise carry in clear (MLPS 4, MLPS 18, R-G1). When encryption at
rest is on, such a value is stored as ``sealed1:<kid>:<base64(nonce | ciphertext)>``:
AES-256-GCM (or SM4-GCM, the key's own cipher) under a key derived with HKDF-SHA256 from
the key-encryption key ``kid`` (never the KEK itself: one key, one purpose), with the
value's context (for example ``totp:<user pk>``) as associated data, so a sealed value
copied onto another row does not open. Values stored before encryption was turned on
stay readable and are sealed at their next use (``SecurityService._second_factor``).
"""
from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..store.crypto import Kek, Keyring, KeyUnavailable, aead_for

PREFIX = "sealed1:"
_NONCE = 12
_INFO = b"pacsd sealed secrets v1"


def is_sealed(value: str | None) -> bool:
    return bool(value) and value.startswith(PREFIX)


def _cipher(kek: Kek):
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO
               ).derive(kek.material)
    if kek.alg == "SM4-GCM":
        key = key[:16]
    return aead_for(kek.alg, key)


def _aad(kid: str, context: str) -> bytes:
    return f"{PREFIX}{kid}:{context}".encode()


class Sealer:
    """Seals with the current default KEK; opens with whichever KEK a value names (older
    versions stay in the key directory after ``pacsd keys rotate``)."""

    def __init__(self, ring: Keyring) -> None:
        self.ring = ring

    def seal(self, text: str, context: str) -> str:
        kek = self.ring.current(None)
        nonce = os.urandom(_NONCE)
        sealed = _cipher(kek).encrypt(nonce, text.encode(), _aad(kek.kid, context))
        return f"{PREFIX}{kek.kid}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, value: str, context: str) -> str:
        """The clear text of ``value``; KeyUnavailable when its key is missing or the
        value does not open (wrong key, other row, damaged)."""
        kid, _, data = value[len(PREFIX):].partition(":")
        kek = self.ring.get(kid)
        try:
            raw = base64.b64decode(data, validate=True)
            return _cipher(kek).decrypt(raw[:_NONCE], raw[_NONCE:], _aad(kid, context)
                                        ).decode()
        except (InvalidTag, ValueError):
            raise KeyUnavailable(f"A sealed secret does not open with key {kid}.") from None


def open_value(value: str, context: str, sealer: Sealer | None) -> str:
    """``value`` in clear: as stored when it was never sealed, else opened."""
    if not is_sealed(value):
        return value
    if sealer is None:
        raise KeyUnavailable("A sealed secret needs [encryption] key_dir to open.")
    return sealer.open(value, context)
