"""L2: encryption at rest for one copy of the blob store (R-G1 "影像加密"; MLPS items in
reliability-matrix §5; SEC rows on stored data). See docs/security.md "Encryption at rest".

:class:`EncryptedBlobStore` wraps one copy (:class:`~pacsd.store.local.LocalBlobStore` or
:class:`~pacsd.store.fsspec_store.FsspecBlobStore`) and implements the same
:class:`~pacsd.store.base.BlobStore` contract, so ingest, retrieve, scrub, replication,
export and versions do not change.

**What the name means.** An object is still named by the SHA-256 of its *plaintext* (the
DICOM bytes the index knows): dedupe, the catalogue, exports, kept versions and the
replicated store's "hash decides" rule keep working unchanged, and every copy of one
object may hold a different ciphertext (each copy wraps its own random data key). The
stored bytes are checked by the AEAD tags (every segment) and, on whole reads, by the
plaintext SHA-256 against the name, so a modified byte anywhere fails the read with
:class:`~pacsd.store.base.ChecksumMismatch` — the same integrity error path as an
unencrypted copy, so the replicated store falls back to a good copy and repairs the bad
one (FT-6, FT-7).

**Envelope encryption.** Stored layout::

    MAGIC (8 bytes) | header length (u16, big-endian) | header (JSON, UTF-8) | segments

The header names the key-encryption key (``kid`` = ``<scope>.<version>``), carries the
per-object data key wrapped by it (``wk``: 12-byte nonce + AEAD of the data key, the
kid and the object name as associated data), a 7-byte random nonce prefix (``np``), the
segment size, the plaintext size and a key check value (``kcv``, tells a wrong key from
a damaged header). Rotation creates a new KEK version: new objects use it, old versions
stay in the key directory for reading; ``pacsd keys rewrap`` rewrites only headers (the
segments are copied byte for byte, never re-encrypted).

**Segments (STREAM construction).** The plaintext is cut into fixed-size segments (64 KiB
by default), each sealed with AES-256-GCM (or SM4-GCM) under the data key with nonce
``np || counter (u32) || last-flag (u8)`` and associated data ``object name || plaintext
size || segment size``. A range read decrypts only the segments it touches; reordering,
truncation, extension and moving a file to another name all fail authentication.

**Plaintext objects** written before encryption was turned on have no magic and are read
as before (``pacsd keys encrypt-existing`` converts them). ``local_path`` returns None:
no fast path hands ciphertext out as plaintext.

Per-institution keys: writes take the key scope from :func:`key_scope` (a context
variable the ingest service sets to the study's institution code); no scope = the
default key. Repairs keep the scope of the copy they read from.
"""
from __future__ import annotations

import base64
import collections
import contextlib
import contextvars
import datetime as _dt
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pacsd.errors import (DataUnavailable, NotFound, OutOfResources, PacsdError)
from pacsd.store.base import (CHUNK, BlobStore, ChecksumMismatch, HashingWriter,
                              IntegrityMismatch, ObjectCheck, check_range, check_sha256, check_size,
                              fsync_dir, hash_source, open_source)

log = logging.getLogger(__name__)

__all__ = ["CIPHERS", "EncryptedBlobStore", "Header", "Kek", "KeyUnavailable", "Keyring",
           "KeyringError", "MAGIC", "key_scope", "parse_header", "scope_of"]

MAGIC = b"\x89PACSDE\n"
_PREFIX = len(MAGIC) + 2
_MAX_HEADER = 4096
TAG = 16
DEFAULT_SEGMENT = 64 * 1024
#: Cipher name -> key length in bytes.
CIPHERS = {"AES-256-GCM": 32, "SM4-GCM": 16}
DEFAULT_SCOPE = "_default"
_SCOPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_KEYFILE_RE = re.compile(r"(_default|[A-Za-z0-9][A-Za-z0-9-]{0,63})\.([0-9]{1,9})\.key")

_scope: contextvars.ContextVar[str | None] = contextvars.ContextVar("pacsd_key_scope",
                                                                   default=None)


class KeyringError(OutOfResources):
    """The key directory is missing, unreadable, insecure or has no key. At start-up a
    configuration error (exit status 2); while serving, a write that needs a key fails
    like an unavailable store (503 / A700, nothing acknowledged)."""


class KeyUnavailable(DataUnavailable):
    """The KEK an object names is not in the key directory, or is a different key.

    A DataUnavailable (the copy cannot be read; a replicated store tries another copy),
    not a ChecksumMismatch: a missing key is a configuration problem, not damage, so the
    scrubber reports the copy UNREACHABLE and never "repairs" it."""


@contextlib.contextmanager
def key_scope(scope: str | None) -> Iterator[None]:
    """Writes inside this block use the KEK of ``scope`` (an institution code).
    ``None`` keeps the enclosing scope (default key when there is none)."""
    if scope is None:
        yield
        return
    token = _scope.set(scope)
    try:
        yield
    finally:
        _scope.reset(token)


def file_id(scope: str | None) -> str:
    """The key-file / kid name of a scope: the code itself when it is plain ASCII
    (letters, digits, ``-``), else ``x-`` + a hash of it; no scope = ``_default``."""
    if not scope:
        return DEFAULT_SCOPE
    if _SCOPE_RE.fullmatch(scope) and not scope.startswith("x-"):
        return scope
    return "x-" + hashlib.sha256(scope.encode("utf-8")).hexdigest()[:32]


# --- ciphers ---------------------------------------------------------------------------------

class _SM4GCM:
    """SM4 in GCM mode with the AESGCM interface (cryptography has no SM4 AEAD class)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        e = Cipher(algorithms.SM4(self._key), modes.GCM(nonce)).encryptor()
        e.authenticate_additional_data(aad)
        out = e.update(data) + e.finalize()
        return out + e.tag

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        if len(data) < TAG:
            raise InvalidTag()
        d = Cipher(algorithms.SM4(self._key), modes.GCM(nonce, data[-TAG:])).decryptor()
        d.authenticate_additional_data(aad)
        return d.update(data[:-TAG]) + d.finalize()


def aead_for(alg: str, key: bytes):
    """The AEAD (AESGCM interface) of ``alg`` over ``key`` (also services/sealing.py)."""
    if alg == "AES-256-GCM":
        return AESGCM(key)
    if alg == "SM4-GCM":
        return _SM4GCM(key)
    raise KeyringError(f"unsupported cipher {alg!r}")


# --- keys ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Kek:
    """One key-encryption key version. ``repr`` never shows the material."""

    kid: str
    scope: str
    version: int
    alg: str
    created: str
    material: bytes

    @property
    def kcv(self) -> str:
        """Key check value: identifies the key material without revealing it."""
        return hmac.new(self.material, b"pacsd-kek-check-v1", "sha256").hexdigest()[:16]

    def __repr__(self) -> str:
        return f"<Kek {self.kid} {self.alg} kcv={self.kcv}>"


class Keyring:
    """The KEKs in one key directory (``[encryption] key_dir``), one file per version:
    ``<scope>.<version>.key`` (JSON, mode 0600; the directory 0700). The highest version of
    a scope is its current key; older versions stay for reading old objects."""

    def __init__(self, key_dir: str, *, cipher: str = "AES-256-GCM",
                 auto_create: bool = True, rescan_s: float = 10.0) -> None:
        if cipher not in CIPHERS:
            raise KeyringError(f"unsupported cipher {cipher!r}")
        self.key_dir = os.path.abspath(key_dir)
        self.cipher = cipher
        self.auto_create = auto_create
        self._rescan_s = rescan_s
        self._lock = threading.RLock()
        self._keys: dict[str, Kek] = {}
        self._scanned = 0.0
        self._dir_mtime = 0
        self.scan()

    # --- loading ----------------------------------------------------------------------
    def scan(self) -> None:
        """(Re)read the key directory (picks up ``pacsd keys rotate`` of another process)."""
        try:
            st = os.stat(self.key_dir)
            names = os.listdir(self.key_dir)
        except FileNotFoundError:
            raise KeyringError(f"key directory {self.key_dir} does not exist; run "
                               "`pacsd keys init`") from None
        except OSError as e:
            raise KeyringError(f"key directory {self.key_dir} is not readable: "
                               f"{e.strerror}") from None
        if st.st_mode & 0o077:
            raise KeyringError(f"key directory {self.key_dir} must not be accessible to "
                               "group or others (chmod 700)")
        keys: dict[str, Kek] = {}
        for name in names:
            m = _KEYFILE_RE.fullmatch(name)
            if m is None:
                continue
            kek = self._load(os.path.join(self.key_dir, name))
            if kek.kid != f"{m.group(1)}.{int(m.group(2))}":
                raise KeyringError(f"key file {name} names another key")
            keys[kek.kid] = kek
        with self._lock:
            self._keys = keys
            self._scanned = time.monotonic()
            self._dir_mtime = st.st_mtime_ns

    @staticmethod
    def _load(path: str) -> Kek:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                if os.fstat(f.fileno()).st_mode & 0o077:
                    raise KeyringError(f"key file {os.path.basename(path)} must be mode "
                                       "0600 (readable by the pacsd user only)")
                doc = json.loads(f.read(65536))
            material = base64.b64decode(doc["key"], validate=True)
            kek = Kek(kid=str(doc["kid"]), scope=str(doc["scope"]), version=int(doc["version"]),
                      alg=str(doc["alg"]), created=str(doc.get("created", "")),
                      material=material)
        except KeyringError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise KeyringError(f"key file {os.path.basename(path)} is not readable or not "
                               f"a pacsd key ({type(e).__name__})") from None
        if kek.alg not in CIPHERS or len(material) != CIPHERS[kek.alg]:
            raise KeyringError(f"key file {os.path.basename(path)}: wrong cipher or length")
        return kek

    def _rescan_quietly(self) -> None:
        """Rescan while serving: a key directory broken meanwhile (a key file made
        group-readable, an unreadable file) keeps the keys already loaded, logged."""
        try:
            self.scan()
        except KeyringError as e:
            log.error("encryption keys not reloaded: %s", e.reason)
            with self._lock:
                self._scanned = time.monotonic()
                with contextlib.suppress(OSError):
                    self._dir_mtime = os.stat(self.key_dir).st_mtime_ns

    def _maybe_rescan(self) -> None:
        """A key added by another process (``pacsd keys rotate``) changes the directory's
        mtime: one stat per write notices it at once; a full rescan at least every
        ``rescan_s`` covers filesystems with coarse timestamps."""
        try:
            changed = os.stat(self.key_dir).st_mtime_ns != self._dir_mtime
        except OSError:
            changed = True
        if changed or time.monotonic() - self._scanned > self._rescan_s:
            self._rescan_quietly()

    # --- lookups ----------------------------------------------------------------------
    def keys(self) -> list[Kek]:
        with self._lock:
            return sorted(self._keys.values(), key=lambda k: (k.scope != "", k.kid.split(".")[0],
                                                               k.version))

    def get(self, kid: str) -> Kek:
        """The KEK ``kid``; KeyUnavailable when the key directory does not have it."""
        with self._lock:
            kek = self._keys.get(kid)
        if kek is None:
            self._rescan_quietly()
            with self._lock:
                kek = self._keys.get(kid)
        if kek is None:
            raise KeyUnavailable(f"Encryption key {kid} is not in the key directory.")
        return kek

    def latest(self, scope: str | None) -> Kek | None:
        fid = file_id(scope)
        with self._lock:
            found = [k for k in self._keys.values() if k.kid.rsplit(".", 1)[0] == fid]
        return max(found, key=lambda k: k.version) if found else None

    def current(self, scope: str | None) -> Kek:
        """The KEK new objects of ``scope`` use: its highest version; created on first use
        when ``auto_create`` (per-institution keys), else the default key."""
        self._maybe_rescan()
        kek = self.latest(scope)
        if kek is not None:
            return kek
        if scope and self.auto_create:
            return self.create(scope)
        kek = self.latest(None)
        if kek is None:
            raise KeyringError("no default encryption key; run `pacsd keys init`")
        return kek

    def scopes(self) -> list[str]:
        return sorted({k.scope for k in self.keys()})

    # --- changes ------------------------------------------------------------------------
    def create(self, scope: str | None, *, new_version: bool = False) -> Kek:
        """Create version 1 of ``scope`` (or, with ``new_version``, the next version:
        rotation). Safe against a concurrent creator (O_EXCL): the winner's key is used."""
        fid = file_id(scope)
        with self._lock:
            self.scan()
            last = self.latest(scope)
            if last is not None and not new_version:
                return last
            version = 1 if last is None else last.version + 1
            alg = self.cipher
            kek = Kek(kid=f"{fid}.{version}", scope=scope or "", version=version, alg=alg,
                      created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      material=os.urandom(CIPHERS[alg]))
            doc = {"kid": kek.kid, "scope": kek.scope, "version": version, "alg": alg,
                   "created": kek.created,
                   "key": base64.b64encode(kek.material).decode("ascii")}
            path = os.path.join(self.key_dir, f"{kek.kid}.key")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                self.scan()
                return self.get(kek.kid)
            except OSError as e:
                raise KeyringError(f"cannot write a key file in {self.key_dir}: "
                                   f"{e.strerror}") from None
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(doc, f)
                    f.flush()
                    os.fsync(f.fileno())
                fsync_dir(self.key_dir)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise KeyringError(f"cannot write a key file: {e.strerror}") from None
            self._keys[kek.kid] = kek
        # kid only: key material is never logged.
        log.warning("created encryption key %s; back up the key directory", kek.kid)
        return kek

    def rotate(self, scope: str | None) -> Kek:
        return self.create(scope, new_version=True)

    @classmethod
    def init(cls, key_dir: str, *, cipher: str = "AES-256-GCM") -> "Keyring":
        """Create the key directory (0700) and the default key if missing."""
        os.makedirs(key_dir, mode=0o700, exist_ok=True)
        os.chmod(key_dir, 0o700)
        ring = cls(key_dir, cipher=cipher)
        if ring.latest(None) is None:
            ring.create(None)
        return ring


# --- the object format -------------------------------------------------------------------------

@dataclass(frozen=True)
class Header:
    raw: bytes          # MAGIC + length + JSON, exactly as stored
    alg: str
    kid: str
    kcv: str
    wrapped: bytes
    nonce_prefix: bytes
    segment: int
    size: int

    @property
    def offset(self) -> int:
        return len(self.raw)

    @property
    def segments(self) -> int:
        return max(1, -(-self.size // self.segment))

    @property
    def stored_size(self) -> int:
        return self.offset + self.size + self.segments * TAG


def _header_bytes(alg: str, kid: str, kcv: str, wrapped: bytes, np_: bytes, segment: int,
                  size: int) -> bytes:
    body = json.dumps({"v": 1, "alg": alg, "kid": kid, "kcv": kcv,
                       "wk": base64.b64encode(wrapped).decode("ascii"),
                       "np": base64.b64encode(np_).decode("ascii"),
                       "seg": segment, "size": size}, separators=(",", ":")).encode()
    return MAGIC + len(body).to_bytes(2, "big") + body


def parse_header(prefix: bytes, body: bytes) -> Header:
    """Parse a header (``prefix`` = MAGIC + length). ChecksumMismatch if malformed."""
    try:
        doc = json.loads(body)
        h = Header(raw=prefix + body, alg=str(doc["alg"]), kid=str(doc["kid"]),
                   kcv=str(doc["kcv"]), wrapped=base64.b64decode(doc["wk"], validate=True),
                   nonce_prefix=base64.b64decode(doc["np"], validate=True),
                   segment=int(doc["seg"]), size=int(doc["size"]))
        ok = (doc.get("v") == 1 and h.alg in CIPHERS and len(h.nonce_prefix) == 7
              and 1024 <= h.segment <= (16 << 20) and h.size >= 0)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ChecksumMismatch("Stored object has a damaged encryption header.")
    return h


def read_header(f: BinaryIO) -> Header | None:
    """Read the header at the start of ``f``; None if the object is plaintext (no magic)."""
    prefix = _read_exact(f, _PREFIX)
    if len(prefix) < _PREFIX or prefix[:len(MAGIC)] != MAGIC:
        return None
    n = int.from_bytes(prefix[len(MAGIC):], "big")
    if n > _MAX_HEADER:
        raise ChecksumMismatch("Stored object has a damaged encryption header.")
    body = _read_exact(f, n)
    if len(body) != n:
        raise ChecksumMismatch("Stored object has a damaged encryption header.")
    return parse_header(prefix, body)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        b = f.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _wrap_aad(kid: str, name: str) -> bytes:
    return b"pacsd-wrap-v1|" + kid.encode() + b"|" + name.encode()


def _seg_aad(name: str, size: int, segment: int) -> bytes:
    return b"pacsd-seg-v1|" + name.encode() + size.to_bytes(8, "big") + segment.to_bytes(4, "big")


def _nonce(prefix: bytes, i: int, last: bool) -> bytes:
    return prefix + i.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def wrap_key(kek: Kek, dek: bytes, name: str) -> bytes:
    nonce = os.urandom(12)
    return nonce + aead_for(kek.alg, kek.material).encrypt(nonce, dek, _wrap_aad(kek.kid, name))


def _raw_errors(fn):
    """Run ``fn``; any non-pacsd exception while reading stored bytes -> DataUnavailable."""
    try:
        return fn()
    except PacsdError:
        raise
    except Exception as e:  # noqa: BLE001 - an I/O or transport failure of this copy
        raise DataUnavailable("Stored object could not be read.") from e


class EncryptedBlobStore(BlobStore):
    """One copy, encrypted at rest. See the module docstring.

    ``inner`` must provide the raw primitives ``open_raw(name)`` and ``put_raw(src, name,
    content_sha256, size, move=...)`` (LocalBlobStore and FsspecBlobStore do)."""

    _CACHE = 4096

    def __init__(self, inner: BlobStore, keyring: Keyring, *,
                 segment_size: int = DEFAULT_SEGMENT) -> None:
        if not 1024 <= segment_size <= (16 << 20):
            raise KeyringError("segment size must be between 1 KiB and 16 MiB")
        self.inner = inner
        self.keyring = keyring
        self.segment_size = segment_size
        self.url = inner.url
        self._lock = threading.Lock()
        # name -> (header, data key): range reads read the header once per object.
        self._cache: collections.OrderedDict[str, tuple[Header, bytes]] = \
            collections.OrderedDict()

    # --- keys -------------------------------------------------------------------------
    def _unwrap(self, h: Header, name: str) -> bytes:
        kek = self.keyring.get(h.kid)
        if kek.alg != h.alg:
            raise KeyUnavailable(f"Encryption key {h.kid} is for another cipher.")
        try:
            nonce, ct = h.wrapped[:12], h.wrapped[12:]
            dek = aead_for(kek.alg, kek.material).decrypt(nonce, ct, _wrap_aad(h.kid, name))
        except InvalidTag:
            if not hmac.compare_digest(kek.kcv, h.kcv):
                raise KeyUnavailable(f"Encryption key {h.kid} in the key directory is not "
                                     "the key this object was written with.") from None
            raise ChecksumMismatch("Stored object failed its integrity check "
                                   "(wrapped key).") from None
        if len(dek) != CIPHERS[h.alg]:
            raise ChecksumMismatch("Stored object failed its integrity check (wrapped key).")
        return dek

    def _remember(self, name: str, h: Header, dek: bytes) -> None:
        with self._lock:
            self._cache[name] = (h, dek)
            self._cache.move_to_end(name)
            if len(self._cache) > self._CACHE:
                self._cache.popitem(last=False)

    def _forget(self, name: str) -> None:
        with self._lock:
            self._cache.pop(name, None)

    # --- raw access -------------------------------------------------------------------
    def header(self, name: str) -> Header | None:
        """The stored header of ``name`` (None: a plaintext object). NotFound if missing."""
        check_sha256(name)
        f = self.inner.open_raw(name)
        try:
            return _raw_errors(lambda: read_header(f))
        finally:
            with contextlib.suppress(Exception):
                f.close()

    def _decrypt_segment(self, aead, h: Header, name: str, i: int, ct: bytes) -> bytes:
        try:
            return aead.decrypt(_nonce(h.nonce_prefix, i, i == h.segments - 1), ct,
                                _seg_aad(name, h.size, h.segment))
        except InvalidTag:
            raise ChecksumMismatch("Stored object failed its integrity check.") from None

    # --- writing ----------------------------------------------------------------------
    def staging_dir(self) -> str:
        return self.inner.staging_dir()

    def put_file(self, src_path: str, sha256: str, size: int, *, move: bool = False) -> bool:
        check_sha256(sha256)
        check_size(size)
        if self._existing_ok(sha256, size):
            # Idempotent re-send (BI-25): the source must still be what it claims.
            if hash_source(src_path) != (sha256, size):
                raise IntegrityMismatch("The stored data does not match its declared hash "
                                        "or size.")
            if move:
                with contextlib.suppress(OSError):
                    os.unlink(src_path)
            return False
        kek = self.keyring.current(_scope.get())
        with self._encrypt(src_path, sha256, size, kek) as (tmp, ct_sha, ct_size):
            self.inner.put_raw(tmp, sha256, ct_sha, ct_size, move=True)
        self._forget(sha256)
        if move:
            with contextlib.suppress(OSError):
                os.unlink(src_path)
        return True

    def _existing_ok(self, sha256: str, size: int) -> bool:
        try:
            if not self.inner.exists(sha256):
                return False
            for _ in self.open_verified(sha256):
                pass
            return self.size(sha256) == size
        except (NotFound, DataUnavailable):
            return False  # corrupt, truncated or unreadable: rewrite it (heal on write)

    @contextlib.contextmanager
    def _encrypt(self, src_path: str, name: str, size: int, kek: Kek):
        """Encrypt ``src_path`` into a staging file, checking its SHA-256 and size on the
        way; yields (path, sha256 of the stored bytes, stored size). The file is removed
        on exit unless the block consumed it."""
        src = open_source(src_path)
        with src, HashingWriter(self.inner.staging_dir(), prefix="enc-") as w:
            try:
                self._encrypt_stream(src, w, name, size, kek)
            except OSError as e:
                raise OutOfResources("Cannot read the source file to store.") from e
            path, ct_sha, ct_size = w.finish()
            try:
                yield path, ct_sha, ct_size
            finally:
                w.abort()  # idempotent; the file is gone when put_raw moved it

    def _encrypt_stream(self, src: BinaryIO, w: HashingWriter, name: str, size: int,
                        kek: Kek) -> None:
        seg = self.segment_size
        dek = os.urandom(CIPHERS[kek.alg])
        np_ = os.urandom(7)
        h = _header_bytes(kek.alg, kek.kid, kek.kcv, wrap_key(kek, dek, name), np_, seg,
                          size)
        w.write(h)
        aead = aead_for(kek.alg, dek)
        aad = _seg_aad(name, size, seg)
        n = max(1, -(-size // seg))
        digest = hashlib.sha256()
        for i in range(n):
            want = min(seg, size - i * seg)
            data = _read_exact(src, want)
            if len(data) != want:
                raise IntegrityMismatch("The stored data does not match its declared size.")
            digest.update(data)
            w.write(aead.encrypt(_nonce(np_, i, i == n - 1), data, aad))
        if src.read(1) or digest.hexdigest() != name:
            raise IntegrityMismatch("The stored data does not match its declared hash or "
                                    "size.")

    # --- reading ----------------------------------------------------------------------
    # Whole reads check the AEAD tag of every segment (bound to the name, the size and
    # the position) and then the plaintext against the fast digest when the caller gives
    # a usable one (XXH3: a small cost next to the decryption), else its SHA-256.
    def read(self, sha256: str, *, expected_size: int | None = None,
             digest: str | None = None) -> bytes:
        check_sha256(sha256)
        f = self.inner.open_raw(sha256)
        try:
            h = _raw_errors(lambda: read_header(f))
        except BaseException:
            f.close()
            raise
        if h is None:
            f.close()
            return self.inner.read(sha256, expected_size=expected_size, digest=digest)
        if expected_size is not None and h.size != expected_size:
            f.close()
            raise ChecksumMismatch("Stored object has the wrong size.")
        return b"".join(self._plain_stream(f, h, sha256, CHUNK, digest=digest))

    def open_verified(self, sha256: str, chunk_size: int = CHUNK, *,
                      digest: str | None = None) -> Iterator[bytes]:
        check_sha256(sha256)
        f = self.inner.open_raw(sha256)
        try:
            h = _raw_errors(lambda: read_header(f))
            if h is None:
                f.close()
                return self.inner.open_verified(sha256, chunk_size, digest=digest)
            dek = self._unwrap(h, sha256)  # a missing key fails before any byte is sent
        except BaseException:
            f.close()
            raise
        return self._plain_stream(f, h, sha256, chunk_size, dek, digest=digest)

    def _plain_stream(self, f: BinaryIO, h: Header, name: str, chunk_size: int,
                      dek: bytes | None = None, *, digest: str | None = None
                      ) -> Iterator[bytes]:
        try:
            if dek is None:
                dek = self._unwrap(h, name)
            aead = aead_for(h.alg, dek)
            check = ObjectCheck(name, digest)
            buf = bytearray()  # at most one segment + one chunk: bounded memory
            for i in range(h.segments):
                want = min(h.segment, h.size - i * h.segment) + TAG
                ct = _raw_errors(lambda: _read_exact(f, want))
                if len(ct) != want:
                    raise ChecksumMismatch("Stored object is truncated.")
                plain = self._decrypt_segment(aead, h, name, i, ct)
                check.update(plain)
                buf += plain
                while len(buf) >= chunk_size:  # chunks of exactly chunk_size, as plain
                    yield bytes(buf[:chunk_size])
                    del buf[:chunk_size]
            if _raw_errors(lambda: f.read(1)):
                raise ChecksumMismatch("Stored object is longer than its header says.")
            if not check.ok():
                raise ChecksumMismatch("Stored object failed its integrity check.")
            if buf:
                yield bytes(buf)
        finally:
            with contextlib.suppress(Exception):
                f.close()

    def read_range(self, sha256: str, offset: int, length: int) -> bytes:
        check_sha256(sha256)
        check_range(offset, length)
        with self._lock:
            cached = self._cache.get(sha256)
        if cached is not None:
            try:
                return self._range(sha256, offset, length, *cached)
            except (ChecksumMismatch, DataUnavailable):
                self._forget(sha256)  # rewritten since (repair, rewrap): read it again
        h = self.header(sha256)
        if h is None:
            return self.inner.read_range(sha256, offset, length)
        dek = self._unwrap(h, sha256)
        data = self._range(sha256, offset, length, h, dek)
        self._remember(sha256, h, dek)
        return data

    def _range(self, name: str, offset: int, length: int, h: Header, dek: bytes) -> bytes:
        if offset + length > h.size:
            raise DataUnavailable("Stored object is shorter than the requested range.")
        if length == 0:
            return b""
        seg, step = h.segment, h.segment + TAG
        first, last = offset // seg, (offset + length - 1) // seg
        start = h.offset + first * step
        end = min(h.offset + (last + 1) * step, h.stored_size)
        ct = self.inner.read_range(name, start, end - start)
        aead = aead_for(h.alg, dek)
        parts = [self._decrypt_segment(aead, h, name, i,
                                       ct[(i - first) * step:(i - first + 1) * step])
                 for i in range(first, last + 1)]
        skip = offset - first * seg
        return b"".join(parts)[skip:skip + length]

    def local_path(self, sha256: str) -> str | None:
        check_sha256(sha256)
        return None  # never hand out ciphertext as plaintext

    def exists(self, sha256: str) -> bool:
        return self.inner.exists(sha256)

    def size(self, sha256: str) -> int | None:
        """The plaintext size (what the index records). A damaged header gives the stored
        size, which differs, so a scrub reports DIFFERING_SIZE (repairable)."""
        try:
            h = self.header(sha256)
        except NotFound:
            return None
        except ChecksumMismatch:
            return self.inner.size(sha256)
        return self.inner.size(sha256) if h is None else h.size

    # --- maintenance --------------------------------------------------------------------
    def delete(self, sha256: str) -> None:
        self._forget(sha256)
        self.inner.delete(sha256)

    def iter_keys(self) -> Iterator[str]:
        return self.inner.iter_keys()

    def cleanup_temp(self, older_than_s: float) -> int:
        return self.inner.cleanup_temp(older_than_s)

    def close(self) -> None:
        self.inner.close()

    # --- key management -----------------------------------------------------------------
    def scope_of(self, sha256: str) -> str | None:
        """The key scope (institution code) of a stored object, None if unknown."""
        try:
            h = self.header(sha256)
            return None if h is None else self.keyring.get(h.kid).scope or None
        except PacsdError:
            return None

    def rewrap(self, sha256: str, *, only_kids: set[str] | None = None) -> str | None:
        """Re-wrap the data key of one object under the current KEK of its scope; the
        segments are copied unchanged (no re-encryption). Returns the new kid, or None
        when nothing was to do (plaintext, already current, or not in ``only_kids``)."""
        h = self.header(sha256)
        if h is None or (only_kids is not None and h.kid not in only_kids):
            return None
        old = self.keyring.get(h.kid)
        new = self.keyring.current(old.scope or None)
        if new.kid == h.kid:
            return None
        dek = self._unwrap(h, sha256)
        if new.alg != h.alg:
            return None  # a cipher change needs re-encryption (encrypt-existing --force)
        head = _header_bytes(h.alg, new.kid, new.kcv, wrap_key(new, dek, sha256),
                             h.nonce_prefix, h.segment, h.size)
        f = self.inner.open_raw(sha256)
        try:
            with HashingWriter(self.inner.staging_dir(), prefix="rewrap-") as w:
                w.write(head)
                f.seek(h.offset) if f.seekable() else _read_exact(f, h.offset)
                while True:
                    b = _raw_errors(lambda: f.read(CHUNK))
                    if not b:
                        break
                    w.write(b)
                path, ct_sha, ct_size = w.finish()
                # The body was only copied: make sure it still decrypts before replacing.
                test = open(path, "rb")
                hh = read_header(test)
                for _ in self._plain_stream(test, hh, sha256, CHUNK, dek):
                    pass
                self.inner.put_raw(path, sha256, ct_sha, ct_size, move=True)
                w.abort()
        finally:
            with contextlib.suppress(Exception):
                f.close()
        self._forget(sha256)
        return new.kid

    def encrypt_existing(self, sha256: str, scope: str | None = None) -> bool:
        """Encrypt one plaintext object in place (verified first); False if it already is
        encrypted. A corrupt plaintext object raises ChecksumMismatch (repair it first)."""
        if self.header(sha256) is not None:
            return False
        size = self.inner.size(sha256)
        if size is None:
            raise NotFound("Stored object is missing.")
        with HashingWriter(self.inner.staging_dir(), prefix="plain-") as w:
            for chunk in self.inner.open_verified(sha256):
                w.write(chunk)
            path, got, n = w.finish()
            if (got, n) != (sha256, size):
                raise ChecksumMismatch("Stored object failed its integrity check.")
            kek = self.keyring.current(scope)
            with self._encrypt(path, sha256, size, kek) as (tmp, ct_sha, ct_size):
                self.inner.put_raw(tmp, sha256, ct_sha, ct_size, move=True)
            w.abort()
        self._forget(sha256)
        return True


def scope_of(store: BlobStore, sha256: str) -> str | None:
    """The key scope of ``sha256`` in ``store`` if it is an encrypted copy, else None."""
    fn = getattr(store, "scope_of", None)
    return fn(sha256) if fn is not None else None


def unwrap_store(store: BlobStore) -> BlobStore:
    """The raw copy under an encrypting wrapper (for tests, tamper tools, mtime)."""
    return getattr(store, "inner", store)
