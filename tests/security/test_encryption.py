"""Encryption at rest end to end (R-G1 "影像加密", issue 5 item 6; reliability-matrix SEC-26,
§5 MLPS 18 and 19, FT-6/FT-7/FT-8 on encrypted copies): the real app with three
copies (two local directories and a real S3-protocol server), STOW-RS in, WADO-RS out,
``pacsd verify`` and ``pacsd keys`` as real processes."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import uuid

import pytest
from dicomgen import make_dataset, multipart, to_part10
from PIL import Image

from pacsd.config import load_settings
from pacsd.store.crypto import MAGIC, file_id, read_header
from pacsd.web import create_app
from pacsd.web.keys import ARCHIVE

PATIENT = "ZHANG^WEIQIANG"
ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'
SINGLE = "application/dicom; transfer-syntax=*"
FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def write_config(tmp_path, *, enabled=True, s3=None, prefix=None, key_dir=None) -> str:
    cfg = tmp_path / "pacsd.toml"
    copies = [f'{{ url = "{tmp_path / "copy1"}" }}', f'{{ url = "{tmp_path / "copy2"}" }}']
    if s3 is not None:
        o = s3.store_options()
        copies.append(f'{{ url = "s3://pacsd-e2e/{prefix}", endpoint_url = '
                      f'"{o["endpoint_url"]}", key = "{o["key"]}", secret = "{o["secret"]}", '
                      f'region = "{o["region"]}" }}')
    cfg.write_text(f"""
[server]
data_dir = "{tmp_path / 'data'}"
worker_threads = 4
[storage]
copies = [{", ".join(copies)}]
[retention]
enabled = false
[security]
institution_map = {{ "Hospital A" = "HOSP-A", "Hospital B" = "HOSP-B" }}
[encryption]
enabled = {"true" if enabled else "false"}
key_dir = "{key_dir or tmp_path / 'keys'}"
segment_size = 4096
""")
    return str(cfg)


def cli(*args: str, check: int | None = 0) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "pacsd.cli", *args], capture_output=True,
                       text=True, timeout=120)
    if check is not None:
        assert r.returncode == check, (r.returncode, r.stdout, r.stderr)
    return r


def instance(seed: int, institution: str = "Hospital A"):
    ds = make_dataset(frames=2, rows=64, columns=64, seed=seed, PatientName=PATIENT,
                      InstitutionName=institution)
    return ds, to_part10(ds)


async def stow(client, data: bytes) -> None:
    body, ctype = multipart([data])
    r = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert r.status == 200, await r.text()


def base(ds) -> str:
    return (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


def key_events(cfg: str) -> list[dict]:
    """The ``encryption-key`` audit events, oldest first."""
    from pacsd.index import AuditLog, Catalogue

    cat = Catalogue(load_settings(cfg).index_url)
    try:
        rows = AuditLog(cat).query(event_type="encryption-key", limit=100)
    finally:
        cat.close()
    out = [dict(r) for r in rows]
    for e in out:
        if isinstance(e.get("detail"), str):
            e["detail"] = json.loads(e["detail"])
    return sorted(out, key=lambda e: e.get("seq", e.get("id", 0)))


def local_files(tmp_path, copy: str) -> list[str]:
    out = []
    for root, _, files in os.walk(tmp_path / copy / "objects"):
        out += [os.path.join(root, f) for f in files]
    return out


def header_of(path: str):
    with open(path, "rb") as f:
        return read_header(f)


def flip(path: str, at: int = -20) -> None:
    with open(path, "r+b") as f:
        f.seek(at, os.SEEK_END)
        b = f.read(1)
        f.seek(at, os.SEEK_END)
        f.write(bytes([b[0] ^ 0x01]))


@pytest.fixture
def env(tmp_path, s3_endpoint):
    prefix = uuid.uuid4().hex
    cfg = write_config(tmp_path, s3=s3_endpoint, prefix=prefix)
    cli("keys", "init", "--config", cfg)
    return tmp_path, cfg, s3_endpoint, prefix


async def test_SEC26_raw_copies_on_disk_and_s3_are_ciphertext_round_trip_exact(
        aiohttp_client, env):
    """A raw copy of an encrypted object, on disk and in S3, shows no DICM marker and no
    patient name; STOW -> WADO-RS instance, frames and rendered are bit-exact (R-G1)."""
    tmp_path, cfg, s3, prefix = env
    client = await aiohttp_client(create_app(load_settings(cfg)))
    ds, data = instance(1)
    await stow(client, data)
    files = local_files(tmp_path, "copy1") + local_files(tmp_path, "copy2")
    s3c = s3.client()
    keys = [o["Key"] for o in s3c.list_objects_v2(Bucket="pacsd-e2e", Prefix=prefix)
            .get("Contents", [])]
    raws = [open(p, "rb").read() for p in files] + [
        s3c.get_object(Bucket="pacsd-e2e", Key=k)["Body"].read() for k in keys]
    assert len(raws) == 3
    for raw in raws:
        assert raw.startswith(MAGIC)
        assert b"DICM" not in raw and PATIENT.encode() not in raw
        assert ds.PixelData[1000:1064] not in raw
    assert len(set(raws)) == 3  # each copy wraps its own data key
    r = await client.get(base(ds), headers={"Accept": ANY_TS})
    assert r.status == 200 and data in await r.read()
    r = await client.get(f"{base(ds)}/frames/2", headers={"Accept": FRAMES})
    assert r.status == 200 and ds.pixel_array[1].tobytes() in await r.read()
    r = await client.get(f"{base(ds)}/rendered", headers={"Accept": "image/png"})
    assert r.status == 200
    rendered = await r.read()
    await client.close()
    # The same instance in an archive without encryption renders the same pixels.
    plain = tmp_path / "plain"
    plain.mkdir()
    s = load_settings(write_config(plain, enabled=False))
    other = await aiohttp_client(create_app(s))
    await stow(other, data)
    r = await other.get(f"{base(ds)}/rendered", headers={"Accept": "image/png"})
    assert Image.open(io.BytesIO(await r.read())).tobytes() == \
        Image.open(io.BytesIO(rendered)).tobytes()


async def test_SEC26_MLPS18_tampered_copy_served_from_good_one_scrub_repairs(aiohttp_client,
                                                                              env):
    """FT-6/FT-7: one modified byte in one encrypted copy -> the read is served from a good
    copy; `pacsd verify` reports it and `--repair` rewrites it. Every copy tampered ->
    503 (the existing integrity error), never bad bytes and never 500 (FT-8)."""
    tmp_path, cfg, s3, prefix = env
    ds, data = instance(2)
    client = await aiohttp_client(create_app(load_settings(cfg)))
    await stow(client, data)
    await client.close()
    (victim,) = local_files(tmp_path, "copy1")
    flip(victim)
    r = cli("verify", "--config", cfg, check=1)
    assert "DIFFERING_CHECKSUM" in r.stdout and "PROBLEMS REMAIN" in r.stdout
    r = cli("verify", "--config", cfg, "--repair", check=0)
    assert "repaired" in r.stdout.lower() or "result: OK" in r.stdout
    cli("verify", "--config", cfg, check=0)
    assert header_of(victim).kid == "HOSP-A.1"  # the repair kept the institution key

    client = await aiohttp_client(create_app(load_settings(cfg)))
    flip(victim, -5000)
    r = await client.get(base(ds), headers={"Accept": ANY_TS})
    assert r.status == 200 and data in await r.read()
    r = await client.get(f"{base(ds)}/frames/1", headers={"Accept": FRAMES})
    assert r.status == 200 and ds.pixel_array[0].tobytes() in await r.read()

    client.app[ARCHIVE].store.wait_repairs(30)  # repair-on-read of copy1 is done
    assert any(e.action == "repaired" for e in client.app[ARCHIVE].store.damage_log)
    for p in local_files(tmp_path, "copy1") + local_files(tmp_path, "copy2"):
        flip(p, -3000)
    s3c = s3.client()
    (key,) = [o["Key"] for o in s3c.list_objects_v2(Bucket="pacsd-e2e", Prefix=prefix)
              ["Contents"]]
    raw = bytearray(s3c.get_object(Bucket="pacsd-e2e", Key=key)["Body"].read())
    raw[-3000] ^= 0x01
    s3c.put_object(Bucket="pacsd-e2e", Key=key, Body=bytes(raw))
    r = await client.get(base(ds), headers={"Accept": SINGLE})
    assert r.status == 503, r.status
    body = await r.read()
    assert b"integrity" in body.lower() and data not in body
    r = await client.get(base(ds), headers={"Accept": ANY_TS})  # multipart: aborted
    with pytest.raises(Exception):
        assert data in await r.read() and False
    r = await client.get(f"{base(ds)}/frames/2", headers={"Accept": FRAMES})
    assert r.status == 503  # the damaged segments are in frame 2
    r = await client.get(f"{base(ds)}/frames/1", headers={"Accept": FRAMES})
    # Frame 1's segments are intact and authenticated on their own: served, exact.
    assert r.status == 200 and ds.pixel_array[0].tobytes() in await r.read()


async def test_SEC26_rotation_and_per_institution_keys(aiohttp_client, env):
    """Rotation without re-encryption: objects written before and after `pacsd keys
    rotate` (run while the server runs) both read; two institutions use different KEKs
    (header key ids); `pacsd keys rewrap` moves old objects to the current version."""
    tmp_path, cfg, _, _ = env
    client = await aiohttp_client(create_app(load_settings(cfg)))
    a1, da1 = instance(3, "Hospital A")
    await stow(client, da1)
    b1, db1 = instance(4, "Hospital B")
    await stow(client, db1)
    kids = sorted(header_of(p).kid for p in local_files(tmp_path, "copy1"))
    assert kids == ["HOSP-A.1", "HOSP-B.1"]
    r = cli("keys", "rotate", "--config", cfg, "--institution", "HOSP-A")
    assert "HOSP-A.2" in r.stdout
    a2, da2 = instance(5, "Hospital A")
    await stow(client, da2)
    kids = sorted(header_of(p).kid for p in local_files(tmp_path, "copy1"))
    assert kids == ["HOSP-A.1", "HOSP-A.2", "HOSP-B.1"]
    for ds, data in ((a1, da1), (b1, db1), (a2, da2)):
        r = await client.get(base(ds), headers={"Accept": ANY_TS})
        assert r.status == 200 and data in await r.read()
    listed = json.loads(cli("keys", "list", "--config", cfg, "--json").stdout)
    assert {(k["kid"], k["current"]) for k in listed} >= {("HOSP-A.1", False),
                                                           ("HOSP-A.2", True)}
    assert all("key" not in k for k in listed)
    r = cli("keys", "rewrap", "--config", cfg)
    assert "3 re-wrapped" in r.stdout  # HOSP-A.1 on three copies
    events = key_events(cfg)
    assert [(e["detail"]["action"], e["detail"].get("kids")) for e in events] == [
        ("init", ["_default.1"]), ("rotate", ["HOSP-A.2"]), ("rewrap", None)]
    assert events[-1]["object_count"] == 3 and events[-1]["actor"] == "local"
    kids = sorted(header_of(p).kid for p in local_files(tmp_path, "copy2"))
    assert kids == ["HOSP-A.2", "HOSP-A.2", "HOSP-B.1"]
    for ds, data in ((a1, da1), (b1, db1), (a2, da2)):
        r = await client.get(f"{base(ds)}/frames/2", headers={"Accept": FRAMES})
        assert r.status == 200 and ds.pixel_array[1].tobytes() in await r.read()


async def test_MLPS19_wrong_or_missing_key_is_a_clear_failure(aiohttp_client, env, tmp_path):
    """No key directory -> serve refuses to start (exit 2, clear message); a key file
    replaced by other material -> 503 naming the key problem, not 500, not corruption."""
    _, cfg, _, _ = env
    bad = tmp_path / "bad"
    bad.mkdir()
    r = cli("serve", "--config", write_config(bad, key_dir=str(bad / "nokeys")), check=2)
    assert "key directory" in r.stderr and "pacsd keys init" in r.stderr
    inside = tmp_path / "inside"
    inside.mkdir()
    r = cli("keys", "init", "--config",
            write_config(inside, key_dir=str(inside / "data" / "keys")), check=2)
    assert "outside the data directory" in r.stderr

    client = await aiohttp_client(create_app(load_settings(cfg)))
    ds, data = instance(6)
    await stow(client, data)
    await client.close()
    path = tmp_path / "keys" / "HOSP-A.1.key"
    doc = json.loads(path.read_text())
    doc["key"] = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
    path.write_text(json.dumps(doc))
    client = await aiohttp_client(create_app(load_settings(cfg)))
    r = await client.get(base(ds), headers={"Accept": SINGLE})
    assert r.status == 503 and data not in await r.read()
    path.unlink()
    r = await client.get(f"{base(ds)}/frames/1", headers={"Accept": FRAMES})
    assert r.status == 503
    assert "HOSP-A.1" not in await r.text()  # the reason is generic; the log names it
    r = cli("verify", "--config", cfg, check=1)
    # A key problem is not damage: never DIFFERING_*, so never "repaired" over.
    assert re.search(r"UNREACHABLE\s+3", r.stdout), r.stdout
    assert re.search(r"DIFFERING_CHECKSUM\s+0", r.stdout), r.stdout


async def test_turning_encryption_on_keeps_plaintext_readable_and_converts(aiohttp_client,
                                                                          tmp_path):
    """Objects stored before encryption was turned on stay readable;
    `pacsd keys encrypt-existing` converts them under their institution's key."""
    cfg = write_config(tmp_path, enabled=False)
    client = await aiohttp_client(create_app(load_settings(cfg)))
    ds, data = instance(7, "Hospital B")
    await stow(client, data)
    await client.close()
    (p,) = local_files(tmp_path, "copy1")
    assert b"DICM" in open(p, "rb").read()
    cfg = write_config(tmp_path, enabled=True)
    cli("keys", "init", "--config", cfg)
    client = await aiohttp_client(create_app(load_settings(cfg)))
    r = await client.get(base(ds), headers={"Accept": ANY_TS})
    assert r.status == 200 and data in await r.read()
    r = cli("keys", "encrypt-existing", "--config", cfg)
    assert "2 encrypted" in r.stdout
    for p in local_files(tmp_path, "copy1") + local_files(tmp_path, "copy2"):
        raw = open(p, "rb").read()
        assert b"DICM" not in raw and PATIENT.encode() not in raw
        assert header_of(p).kid == f"{file_id('HOSP-B')}.1"
    r = await client.get(f"{base(ds)}/frames/2", headers={"Accept": FRAMES})
    assert r.status == 200 and ds.pixel_array[1].tobytes() in await r.read()
    r = await client.get(base(ds), headers={"Accept": ANY_TS})
    assert r.status == 200 and data in await r.read()


def test_dimse_cstore_and_cget_through_encrypted_store(env, tmp_path):
    """The DIMSE path (DCMTK storescu -> real `pacsd serve` -> getscu) over the same
    encrypted copies: C-STORE is sealed under the institution key, C-GET returns the
    received pixel data bit-exact (R-G1 on every ingest / retrieve path)."""
    import shutil

    import pydicom
    from pacsd_server import Server

    storescu, getscu = shutil.which("storescu"), shutil.which("getscu")
    if not (storescu and getscu):
        pytest.skip("DCMTK storescu/getscu not installed")
    root, cfg, _, _ = env
    ds, data = instance(9, "Hospital B")
    src = tmp_path / "in.dcm"
    src.write_bytes(data)
    srv = Server(str(root / "data"), "--config", cfg, "--ae-title", "PACSD",
                 dicom_port=None)
    try:
        p = subprocess.run([storescu, "-aec", "PACSD", "127.0.0.1", str(srv.dicom_port),
                            str(src)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        (stored,) = local_files(root, "copy1")
        raw = open(stored, "rb").read()
        assert b"DICM" not in raw and PATIENT.encode() not in raw
        assert header_of(stored).kid == "HOSP-B.1"
        out = tmp_path / "get"
        out.mkdir()
        p = subprocess.run([getscu, "-aec", "PACSD", "-S", "-od", str(out), "-k",
                            "QueryRetrieveLevel=STUDY", "-k",
                            f"StudyInstanceUID={ds.StudyInstanceUID}", "127.0.0.1",
                            str(srv.dicom_port)], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        (got,) = list(out.iterdir())
        back = pydicom.dcmread(got)
        assert back.SOPInstanceUID == ds.SOPInstanceUID and back.PixelData == ds.PixelData
    finally:
        srv.stop()
