"""Encryption at rest, unit level: EncryptedBlobStore over a local directory and over S3
(a real S3-protocol server), envelope keys, rotation, tampering (R-G1, issue 5 item 6;
reliability-matrix SEC-26, §5 MLPS 18 and 19, FT-6/FT-7 on encrypted copies)."""
from __future__ import annotations

import json
import os
import uuid

import pytest

from pacsd.errors import DataUnavailable, NotFound
from pacsd.store import (FsspecBlobStore, IntegrityMismatch, fast_digest, open_store,
                         sha256_hex)
from pacsd.store.base import ChecksumMismatch
from pacsd.store.crypto import (MAGIC, EncryptedBlobStore, KeyUnavailable, Keyring,
                                KeyringError, file_id, key_scope)
from pacsd.store.replicated import ReplicatedStore
from pacsd.store.verification import CopyState, check_copy

SEG = 1024
NAME = b"ZHANG^WEI"


def payload(n: int = 10_000, seed: int = 1) -> bytes:
    """A Part-10-looking object with a patient name inside (never in the stored bytes)."""
    body = bytes((i * 7 + seed) % 251 for i in range(n))
    return bytes(128) + b"DICM" + body[:500] + NAME + body[500:]


@pytest.fixture
def ring(tmp_path) -> Keyring:
    return Keyring.init(str(tmp_path / "keys"))


@pytest.fixture
def local(tmp_path, ring) -> EncryptedBlobStore:
    return EncryptedBlobStore(open_store(str(tmp_path / "blobs")), ring, segment_size=SEG)


@pytest.fixture
def s3_store(s3_fs, ring):
    inner = FsspecBlobStore(s3_fs, f"pacsd-test/{uuid.uuid4().hex}", url="s3://x")
    yield EncryptedBlobStore(inner, ring, segment_size=SEG)
    inner.close()


def raw_of(store: EncryptedBlobStore, sha: str) -> bytes:
    return b"".join(iter(lambda f=store.inner.open_raw(sha): f.read(1 << 20), b""))


def flip(store: EncryptedBlobStore, sha: str, pos: int) -> None:
    """Change one stored byte behind the store's back (a failing disk, an attacker)."""
    raw = bytearray(raw_of(store, sha))
    raw[pos] ^= 0x01
    path = store.inner.local_path(sha)
    if path is not None:
        with open(path, "r+b") as f:
            f.write(raw)
    else:
        store.inner.fs.pipe_file(store.inner._key(sha), bytes(raw))


@pytest.fixture(params=["local", "s3"])
def store(request):
    return request.getfixturevalue("local" if request.param == "local" else "s3_store")


def test_raw_object_is_ciphertext_and_round_trips(store):
    """R-G1: the stored bytes show no DICM marker and no patient name; every read path
    returns the plaintext bit-exact; names stay the plaintext SHA-256 (dedupe, index)."""
    data = payload()
    sha = store.put_bytes(data)
    assert sha == sha256_hex(data)
    raw = raw_of(store, sha)
    assert raw.startswith(MAGIC)
    assert b"DICM" not in raw and NAME not in raw and data[200:260] not in raw
    assert store.read(sha) == data
    assert store.read(sha, expected_size=len(data)) == data
    assert b"".join(store.open_verified(sha, 3000)) == data
    digest = fast_digest(data, sha)  # the read-time digest (R-H1): AEAD + XXH3
    assert store.read(sha, digest=digest) == data
    assert b"".join(store.open_verified(sha, 3000, digest=digest)) == data
    with pytest.raises(ChecksumMismatch):  # the digest is what is checked
        store.read(sha, digest=fast_digest(data + b"x", sha))
    assert store.size(sha) == len(data) and store.exists(sha)
    for off, n in [(0, 10), (SEG - 3, 7), (SEG, SEG), (2 * SEG + 1, 3 * SEG),
                   (len(data) - 4, 4), (0, len(data)), (17, 0)]:
        assert store.read_range(sha, off, n) == data[off:off + n], (off, n)
    with pytest.raises(DataUnavailable):
        store.read_range(sha, len(data) - 2, 3)  # past the end: a short read
    assert store.local_path(sha) is None  # never hands out ciphertext as plaintext
    assert list(store.iter_keys()) == [sha]
    assert store.put_bytes(data) == sha  # idempotent
    empty = store.put_bytes(b"")
    assert store.read(empty) == b"" and store.size(empty) == 0


@pytest.mark.parametrize("where", ["header", "wrapped", "first", "middle", "last_tag"])
def test_any_modified_byte_fails_the_read(store, where):
    """FT-6: one modified byte anywhere -> ChecksumMismatch on read, stream and the
    range that covers it; check_copy says DIFFERING_* (repairable), never OK."""
    data = payload()
    sha = store.put_bytes(data)
    h = store.header(sha)
    raw_len = len(raw_of(store, sha))
    pos = {"header": h.raw.index(b'"size"') + 9, "wrapped": h.raw.index(b'"wk":"') + 8,
           "first": h.offset + 5, "middle": h.offset + 4 * (SEG + 16) + 100,
           "last_tag": raw_len - 1}[where]
    flip(store, sha, pos)
    with pytest.raises(ChecksumMismatch):
        store.read(sha)
    with pytest.raises(ChecksumMismatch):  # with the fast digest too (R-H1)
        store.read(sha, digest=fast_digest(data, sha))
    with pytest.raises(ChecksumMismatch):
        for _ in store.open_verified(sha):
            pass
    assert not store.verify(sha)
    assert check_copy(store, sha, len(data)) in (CopyState.DIFFERING_CHECKSUM,
                                                  CopyState.DIFFERING_SIZE)
    if where in ("first", "middle"):
        seg = (pos - h.offset) // (SEG + 16)
        with pytest.raises(ChecksumMismatch):
            store.read_range(sha, seg * SEG, 10)


def test_truncation_extension_and_swapped_objects_detected(local):
    a, b = payload(seed=1), payload(seed=2)
    sa, sb = local.put_bytes(a), local.put_bytes(b)
    pa, pb = local.inner.local_path(sa), local.inner.local_path(sb)
    raw_b = open(pb, "rb").read()
    with open(pa, "wb") as f:  # object b's file under a's name
        f.write(raw_b)
    with pytest.raises(ChecksumMismatch):
        local.read(sa)
    with pytest.raises(ChecksumMismatch):
        local.read_range(sa, 0, 10)
    with open(pb, "wb") as f:  # drop the last segment
        f.write(raw_b[:-(len(b) % SEG + 16)])
    with pytest.raises(ChecksumMismatch):
        local.read(sb)
    with open(pb, "wb") as f:  # one byte appended
        f.write(raw_b + b"\0")
    with pytest.raises(ChecksumMismatch):
        local.read(sb)


def test_bad_source_refused_nothing_stored(local, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(payload())
    with pytest.raises(IntegrityMismatch):
        local.put_file(str(src), "0" * 64, src.stat().st_size)
    with pytest.raises(IntegrityMismatch):
        local.put_file(str(src), sha256_hex(payload()), src.stat().st_size - 1)
    assert list(local.iter_keys()) == []
    assert os.listdir(local.inner.staging_dir()) == []


def test_rotation_old_and_new_readable_rewrap_changes_header_only(local, ring):
    """Rotation without re-encrypting: objects before and after both read; rewrap
    re-wraps the data key (new kid) and copies the encrypted body unchanged."""
    a = payload(seed=1)
    sa = local.put_bytes(a)
    assert local.header(sa).kid == "_default.1"
    ring.rotate(None)
    b = payload(seed=2)
    sb = local.put_bytes(b)
    assert local.header(sb).kid == "_default.2"
    assert local.read(sa) == a and local.read(sb) == b
    assert local.read_range(sa, 5, 10) == a[5:15]  # caches the old header
    body = raw_of(local, sa)[local.header(sa).offset:]
    assert local.rewrap(sa) == "_default.2"
    assert local.rewrap(sb) is None  # already current
    assert local.header(sa).kid == "_default.2"
    assert raw_of(local, sa)[local.header(sa).offset:] == body
    assert local.read(sa) == a and local.read_range(sa, 5, 10) == a[5:15]


def test_per_institution_keys(local, ring):
    """Two institutions get different KEKs (asserted through the header key ids)."""
    with key_scope("HOSP-A"):
        sa = local.put_bytes(payload(seed=1))
    with key_scope("Peking Union 东院"):
        sb = local.put_bytes(payload(seed=2))
    sc = local.put_bytes(payload(seed=3))
    kids = [local.header(s).kid for s in (sa, sb, sc)]
    assert kids == ["HOSP-A.1", f"{file_id('Peking Union 东院')}.1", "_default.1"]
    assert len({ring.get(k).material for k in kids}) == 3
    assert local.scope_of(sb) == "Peking Union 东院"
    ring.auto_create = False
    with key_scope("HOSP-NEW"):
        sd = local.put_bytes(payload(seed=4))
    assert local.header(sd).kid == "_default.1"


def test_missing_or_wrong_key_is_a_clear_failure(local, ring, tmp_path):
    data = payload()
    sha = local.put_bytes(data)
    path = os.path.join(ring.key_dir, "_default.1.key")
    doc = json.loads(open(path).read())
    doc["key"] = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="  # 32 other bytes
    os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    ring.scan()
    with pytest.raises(KeyUnavailable, match="not the key this object was written with"):
        local.read(sha)
    assert check_copy(local, sha, len(data)) is CopyState.UNREACHABLE  # not "corrupt"
    os.unlink(path)
    ring.scan()
    with pytest.raises(KeyUnavailable, match="_default.1 is not in the key directory"):
        local.read_range(sha, 0, 10)
    with pytest.raises(KeyUnavailable):
        local.open_verified(sha)  # before any byte is yielded


def test_key_directory_rules(tmp_path):
    with pytest.raises(KeyringError, match="does not exist"):
        Keyring(str(tmp_path / "none"))
    ring = Keyring.init(str(tmp_path / "k"))
    (kek,) = ring.keys()
    assert "material" not in repr(kek) and kek.material.hex() not in repr(kek)
    f = os.path.join(ring.key_dir, "_default.1.key")
    assert os.stat(f).st_mode & 0o777 == 0o600
    assert os.stat(ring.key_dir).st_mode & 0o777 == 0o700
    os.chmod(f, 0o644)
    with pytest.raises(KeyringError, match="0600"):
        ring.scan()
    os.chmod(f, 0o600)
    os.chmod(ring.key_dir, 0o755)
    with pytest.raises(KeyringError, match="chmod 700"):
        ring.scan()


def test_plaintext_objects_stay_readable_and_convert(tmp_path, ring):
    """Encryption turned on later: plaintext objects read as before; encrypt_existing
    converts them (verified first) and leaves encrypted ones alone."""
    plain = open_store(str(tmp_path / "blobs"))
    data = payload()
    sha = plain.put_bytes(data)
    enc = EncryptedBlobStore(plain, ring, segment_size=SEG)
    assert enc.header(sha) is None
    assert enc.read(sha) == data and enc.read_range(sha, 3, 9) == data[3:12]
    assert b"".join(enc.open_verified(sha)) == data and enc.size(sha) == len(data)
    assert enc.put_bytes(data) == sha and enc.header(sha) is None  # no silent rewrite
    assert enc.encrypt_existing(sha, "HOSP-A")
    assert not enc.encrypt_existing(sha)
    raw = raw_of(enc, sha)
    assert b"DICM" not in raw and NAME not in raw and enc.header(sha).kid == "HOSP-A.1"
    assert enc.read(sha) == data
    with pytest.raises(NotFound):
        enc.read("1" * 64)


def test_sm4_gcm(tmp_path):
    """SM4 (GB/T 32907) in GCM mode, selected by [encryption] cipher."""
    ring = Keyring.init(str(tmp_path / "k"), cipher="SM4-GCM")
    st = EncryptedBlobStore(open_store(str(tmp_path / "b")), ring, segment_size=SEG)
    data = payload()
    sha = st.put_bytes(data)
    assert st.header(sha).alg == "SM4-GCM" and len(ring.get("_default.1").material) == 16
    assert st.read(sha) == data and st.read_range(sha, SEG - 1, 2) == data[SEG - 1:SEG + 1]
    assert NAME not in raw_of(st, sha)
    flip(st, sha, st.header(sha).offset + 3)
    with pytest.raises(ChecksumMismatch):
        st.read(sha)


def test_replicated_encrypted_copies_fall_back_and_repair(tmp_path, ring, s3_fs):
    """FT-6/FT-7 with encryption: each copy holds its own ciphertext; a tampered copy is
    never served, the read falls back to a good one and repair-on-read rewrites it under
    the same institution key."""
    s3_inner = FsspecBlobStore(s3_fs, f"pacsd-test/{uuid.uuid4().hex}", url="s3://y")
    copies = [EncryptedBlobStore(open_store(str(tmp_path / f"c{i}")), ring, segment_size=SEG)
              for i in range(2)] + [EncryptedBlobStore(s3_inner, ring, segment_size=SEG)]
    rs = ReplicatedStore(copies)
    try:
        data = payload()
        with key_scope("HOSP-B"):
            sha = rs.put_bytes(data)
        raws = [raw_of(c, sha) for c in copies]
        assert len(set(raws)) == 3 and all(NAME not in r for r in raws)
        flip(copies[0], sha, copies[0].header(sha).offset + 10)
        assert rs.read(sha) == data
        assert rs.read_range(sha, 0, 50) == data[:50]
        rs.wait_repairs(30)
        assert any(e.state is CopyState.DIFFERING_CHECKSUM for e in rs.damage_log)
        assert check_copy(copies[0], sha, len(data)) is CopyState.OK
        assert copies[0].header(sha).kid == "HOSP-B.1"
        for c in copies:
            flip(c, sha, c.header(sha).offset + 10)
        with pytest.raises(ChecksumMismatch):
            rs.read(sha)
    finally:
        rs.close()
