"""Local-disk backend specifics: durable write protocol (§7 item 1, FT-2), disk full and
fsync errors (FT-3), rename vs copy, layout, and ``open_store`` URL handling."""
from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import os
import subprocess
import time

import pytest

from pacsd.errors import BadRequest, OutOfResources
from pacsd.store import IntegrityMismatch, LocalBlobStore, open_store

DATA = os.urandom(5000)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def local(tmp_path) -> LocalBlobStore:
    return LocalBlobStore(str(tmp_path / "store"))


def leftovers(store: LocalBlobStore) -> list[str]:
    return os.listdir(os.path.join(store.root, "tmp")) + os.listdir(store.staging_dir())


@pytest.fixture
def tmpfs(tmp_path):
    """A 256 KiB tmpfs, so ENOSPC is real (FT-3). Skipped when mount is not permitted."""
    def mount(name: str, size: str = "256k") -> str:
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a size-limited tmpfs (needs root/CAP_SYS_ADMIN): "
                        f"{r.stderr.strip()}")
        mounted.append(str(d))
        return str(d)

    mounted: list[str] = []
    yield mount
    for d in mounted:
        if subprocess.run(["umount", d], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", d], capture_output=True)


# --- layout and the write protocol ---------------------------------------------------------

def legacy_store(root) -> LocalBlobStore:
    """A store made before the one-level layout: objects/ab/cd/<sha256>, no FORMAT."""
    key = sha(b"made by an earlier version")
    d = os.path.join(str(root), "objects", key[:2], key[2:4])
    os.makedirs(d)
    with open(os.path.join(d, key), "wb") as f:
        f.write(b"made by an earlier version")
    return LocalBlobStore(str(root))


def test_new_store_is_one_level_with_every_directory_made(local):
    """§7 item 1 (issue 6, R-H1): a new store has objects/00..ff and FORMAT, so no write
    makes a directory; reopening keeps the layout."""
    objects = os.path.join(local.root, "objects")
    assert sorted(os.listdir(objects)) == [f"{i:02x}" for i in range(256)]
    with open(os.path.join(local.root, "FORMAT")) as f:
        assert f.read() == "fanout 1\n"
    key = local.put_bytes(DATA)
    assert local.local_path(key) == os.path.join(objects, key[:2], key)
    again = LocalBlobStore(local.root)
    assert again.local_path(key) == local.local_path(key) and again.read(key) == DATA
    assert list(again.iter_keys()) == [key]


def test_existing_two_level_store_keeps_its_layout(tmp_path):
    old = legacy_store(tmp_path / "old")
    first = next(old.iter_keys())
    assert not os.path.exists(os.path.join(old.root, "FORMAT"))
    key = old.put_bytes(DATA)
    assert old.local_path(key) == os.path.join(old.root, "objects", key[:2], key[2:4], key)
    assert old.read(key) == DATA and sorted(old.iter_keys()) == sorted([first, key])
    assert LocalBlobStore(old.root).read(first) == b"made by an earlier version"


def test_store_opened_while_another_process_creates_it_is_one_level(tmp_path):
    """Worker processes open a new store together: one that finds some of the 256
    directories made, but no FORMAT yet, makes the same one-level store."""
    root = tmp_path / "s"
    os.makedirs(root / "objects" / "00")
    os.makedirs(root / "objects" / "01")
    store = LocalBlobStore(str(root))
    assert (root / "FORMAT").read_text() == "fanout 1\n"
    key = store.put_bytes(DATA)
    assert store.local_path(key) == os.path.join(store.root, "objects", key[:2], key)


def test_unknown_format_is_refused(tmp_path):
    root = tmp_path / "s"
    LocalBlobStore(str(root))
    (root / "FORMAT").write_text("fanout 7\n")
    with pytest.raises(OutOfResources):
        LocalBlobStore(str(root))


def test_layout_and_no_temp_left(local, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(DATA)
    key = sha(DATA)
    assert local.put_file(str(src), key, len(DATA))
    path = os.path.join(local.root, "objects", key[:2], key)
    assert local.local_path(key) == path
    with open(path, "rb") as f:
        assert f.read() == DATA
    assert local.url == "file://" + local.root
    assert leftovers(local) == []
    local.put_bytes(b"second")
    assert leftovers(local) == []


def test_move_is_a_rename(local):
    w = local.new_staging_file()
    w.write(DATA)
    path, key, size = w.finish()
    ino = os.stat(path).st_ino
    assert local.put_file(path, key, size, move=True)
    assert os.stat(local.local_path(key)).st_ino == ino  # same inode: renamed, not copied
    assert leftovers(local) == []


def test_move_refuses_size_mismatch_and_keeps_source(local):
    """A staged file whose size differs from the declared size is never renamed."""
    w = local.new_staging_file()
    w.write(DATA)
    path, key, size = w.finish()
    with open(path, "ab") as f:
        f.write(b"appended behind the writer's back")
    with pytest.raises(IntegrityMismatch):
        local.put_file(path, key, size, move=True)
    assert os.path.exists(path)  # the caller owns it on failure (w.abort())
    assert not local.exists(key)
    w.abort()
    assert leftovers(local) == []


@pytest.mark.parametrize("layout", ["one-level", "two-level"])
def test_write_protocol_fsyncs_file_before_rename_and_dirs_after(tmp_path, monkeypatch,
                                                                  layout):
    """§7 item 1 / FT-2: fsync(temp file) before the rename; fsync(fan-out dir) after it,
    and each newly created fan-out dir fsynced in its parent — also after the rename,
    once every directory change of the write is made, so on a journaling filesystem the
    directory syncs share one journal commit (issue 6, R-H1); all before put_file
    returns. (A spy around the real os.fsync records the order; power loss itself
    cannot be simulated here.) One level: the directory exists and is durable from the
    store's creation, so only it is synced."""
    local = (LocalBlobStore(str(tmp_path / "store")) if layout == "one-level"
             else legacy_store(tmp_path / "store"))
    key = sha(DATA)
    final = local.local_path(key)
    leaf = os.path.dirname(final)
    mid = os.path.dirname(leaf)
    events: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def spy(fd):
        events.append((os.readlink(f"/proc/self/fd/{fd}"), os.path.exists(final)))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    src = tmp_path / "src"
    src.write_bytes(DATA)
    assert local.put_file(str(src), key, len(DATA))
    tmpdir = os.path.join(local.root, "tmp")
    file_syncs = [i for i, (p, _) in enumerate(events) if os.path.dirname(p) == tmpdir]
    assert len(file_syncs) == 1 and events[file_syncs[0]][1] is False
    # After the rename: the leaf (holds the object), then the parents of the new
    # fan-out directories, innermost first.
    assert events[file_syncs[0] + 1:] == ([(leaf, True)] if layout == "one-level" else [
        (leaf, True), (mid, True), (os.path.join(local.root, "objects"), True)])

    # move=True: the staged file itself is fsynced before its rename.
    events.clear()
    w = local.new_staging_file()
    w.write(b"other")
    path, key2, size2 = w.finish()
    final = local.local_path(key2)
    assert local.put_file(path, key2, size2, move=True)
    assert events[0] == (path, False)
    assert events[1] == (os.path.dirname(final), True)
    assert all(after for _, after in events[1:])


def test_fsync_error_is_not_retried_and_nothing_is_left(local, tmp_path, monkeypatch):
    """FT-3 fsyncgate: EIO from fsync(file) aborts the write at once -> OutOfResources;
    fsync is not called again on that file, no temp file and no object remain.
    (EIO is injected by wrapping os.fsync: a failing disk cannot be produced here.)"""
    real_fsync = os.fsync
    calls: list[str] = []

    def failing(fd):
        p = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isfile(p):
            calls.append(p)
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing)
    src = tmp_path / "src"
    src.write_bytes(DATA)
    with pytest.raises(OutOfResources) as ei:
        local.put_file(str(src), sha(DATA), len(DATA))
    assert ei.value.http_status == 503 and ei.value.dimse_status == 0xA700
    assert ei.value.headers["Retry-After"]
    assert len(calls) == 1
    assert not local.exists(sha(DATA)) and leftovers(local) == []

    calls.clear()
    w = local.new_staging_file()
    w.write(DATA)
    path, key, size = w.finish()
    with pytest.raises(OutOfResources):
        local.put_file(path, key, size, move=True)
    assert len(calls) == 1 and not local.exists(key)
    w.abort()
    assert leftovers(local) == []


def test_disk_full_refuses_without_partial_files_and_recovers(tmpfs, tmp_path):
    """FT-3: ENOSPC -> OutOfResources, no partial file, existing data readable, and the
    store works again once space returns (no restart, no manual repair)."""
    store = LocalBlobStore(tmpfs("full"))
    small = store.put_bytes(b"stored before the disk filled up")
    big = os.urandom(300 * 1024)  # larger than the whole 256 KiB filesystem
    src = tmp_path / "big"
    src.write_bytes(big)
    with pytest.raises(OutOfResources) as ei:
        store.put_file(str(src), sha(big), len(big))
    assert ei.value.__cause__.errno == errno.ENOSPC
    assert not store.exists(sha(big)) and leftovers(store) == []

    # The staging writer on the same full disk: refused, partial file deleted.
    with pytest.raises(OutOfResources):
        with store.new_staging_file() as w:
            for _ in range(10):
                w.write(big[:64 * 1024])
            w.finish()
    assert leftovers(store) == []
    assert store.read(small) == b"stored before the disk filled up"

    # Fill the disk with an unrelated file, then free it: writes recover by themselves.
    filler = os.path.join(store.root, "filler")
    with open(filler, "wb", buffering=0) as f:
        with pytest.raises(OSError) as ei:
            while True:
                f.write(b"\0" * 4096)
    assert ei.value.errno == errno.ENOSPC
    with pytest.raises(OutOfResources):
        store.put_bytes(os.urandom(20 * 1024))
    assert leftovers(store) == []
    os.unlink(filler)
    key = store.put_bytes(b"after recovery")
    assert store.read(key) == b"after recovery"


def test_move_across_filesystems_copies_and_verifies(local, tmpfs):
    """Staging on another filesystem (EXDEV): copied with hash check, source removed."""
    other = tmpfs("other", "1m")
    src = os.path.join(other, "staged")
    with open(src, "wb") as f:
        f.write(DATA)
    assert local.put_file(src, sha(DATA), len(DATA), move=True)
    assert not os.path.exists(src)
    assert local.read(sha(DATA)) == DATA and leftovers(local) == []


def test_concurrent_puts_of_same_and_different_objects(local):
    """LD-6 flavour: many threads writing the same object converge on one copy."""
    blobs = [DATA] * 16 + [os.urandom(3000) for _ in range(16)]
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        keys = list(ex.map(local.put_bytes, blobs))
    assert set(local.iter_keys()) == {sha(b) for b in blobs}
    for k, b in zip(keys, blobs):
        assert local.read(k) == b
    assert leftovers(local) == []


def test_cleanup_temp_removes_crash_leftovers_in_tmp(local):
    stale = os.path.join(local.root, "tmp", "put-crashed.tmp")
    with open(stale, "wb") as f:
        f.write(b"x")
    past = time.time() - 3600
    os.utime(stale, (past, past))
    assert local.cleanup_temp(60) == 1
    assert leftovers(local) == []


def test_iter_keys_ignores_tmp_and_staging(local):
    key = local.put_bytes(DATA)
    with open(os.path.join(local.root, "tmp", sha(b"t")), "wb") as f:
        f.write(b"t")
    with open(os.path.join(local.staging_dir(), sha(b"s")), "wb") as f:
        f.write(b"s")
    assert list(local.iter_keys()) == [key]


# --- open_store ----------------------------------------------------------------------------

def test_open_store_local_urls(tmp_path, monkeypatch):
    a = open_store(f"file://{tmp_path}/a")
    assert isinstance(a, LocalBlobStore) and a.root == str(tmp_path / "a")
    b = open_store(str(tmp_path / "b"))
    assert isinstance(b, LocalBlobStore) and b.url == f"file://{tmp_path}/b"
    monkeypatch.chdir(tmp_path)
    c = open_store("rel")
    assert c.root == str(tmp_path / "rel")
    d = open_store(f"file://localhost{tmp_path}/d")
    assert d.root == str(tmp_path / "d")


@pytest.mark.parametrize("url", ["", "file://evil.example/x", "ftp://host/x", "s3://",
                                 "s3:///prefix", "/x\0y"])
def test_open_store_refuses_bad_urls(url):
    with pytest.raises(BadRequest):
        open_store(url)


def test_open_store_refuses_unknown_options(tmp_path):
    with pytest.raises(BadRequest):
        open_store(str(tmp_path), endpoint_url="http://x")
    with pytest.raises(BadRequest):
        open_store("memory://x", no_such_option=1)


def test_unusable_root_is_out_of_resources(tmp_path):
    f = tmp_path / "a-file"
    f.write_bytes(b"")
    with pytest.raises(OutOfResources):
        LocalBlobStore(str(f / "store"))


@pytest.mark.parametrize("layout", ["one-level", "two-level"])
def test_put_after_fanout_dirs_were_removed(tmp_path, layout, monkeypatch):
    """A fan-out directory removed behind the store (operator, empty-dir sweep) is
    recreated, and synced in its parent; the store's cache of durable directories never
    goes stale."""
    local = (LocalBlobStore(str(tmp_path / "store")) if layout == "one-level"
             else legacy_store(tmp_path / "store"))
    key = local.put_bytes(DATA)
    local.delete(key)
    leaf = os.path.dirname(local.local_path(key))
    os.rmdir(leaf)
    if layout == "two-level":
        os.rmdir(os.path.dirname(leaf))
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    assert local.put_bytes(DATA) == key and local.read(key) == DATA
    assert os.path.join(local.root, "objects") in synced
