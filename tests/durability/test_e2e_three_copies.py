"""End to end with the real processes (R-A6; FT-5, FT-6, FT-9): ``pacsd serve`` with three
copies — two local directories and one S3 prefix on a real S3-protocol server — configured
in a TOML file; STOW; damage the copy read first; WADO still returns the right bytes and
the server heals that copy; then damage the others behind its back: ``pacsd verify``
exits 1 naming each problem, ``pacsd verify --repair`` exits 0 and the copies are fixed
byte for byte; a further ``pacsd verify`` (copies given with ``--store``) exits 0."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid

import requests
from dicomgen import make_dataset, multipart, to_part10
from pacsd_server import Server
from pacsd.store.local import LocalBlobStore

SINGLE = {"Accept": "application/dicom; transfer-syntax=*"}


def verify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pacsd.cli", "verify", *args],
                          capture_output=True, text=True, timeout=120)


def test_three_copies_serve_verify_repair(tmp_path, s3_endpoint):
    opts = s3_endpoint.store_options()
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    a, b = tmp_path / "copy-a", tmp_path / "copy-b"
    config = tmp_path / "pacsd.toml"
    config.write_text(f"""
[storage]
endpoint_url = "{opts['endpoint_url']}"
key = "{opts['key']}"
secret = "$env:PACSD_TEST_S3_SECRET"
region = "{opts['region']}"

[[storage.copies]]
url = "{a}"
[[storage.copies]]
url = "file://{b}"
[[storage.copies]]
url = "s3://pacsd-e2e/{prefix}"
""")
    os.environ["PACSD_TEST_S3_SECRET"] = opts["secret"]  # $env indirection, inherited
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    common = ("--config", str(config), "--data-dir", str(data_dir))

    srv = Server(str(data_dir), "--config", str(config))
    try:
        ds = make_dataset(rows=32, columns=32)
        data = to_part10(ds)
        sha = hashlib.sha256(data).hexdigest()
        body, ctype = multipart([data])
        r = requests.post(srv.url + "/dicom-web/studies", data=body,
                          headers={"Content-Type": ctype}, timeout=30)
        assert r.status_code == 200
        s3 = s3_endpoint.client()
        s3_key = f"{prefix}/objects/{sha[:2]}/{sha[2:4]}/{sha}"
        assert s3.get_object(Bucket="pacsd-e2e", Key=s3_key)["Body"].read() == data
        rel = os.path.relpath(LocalBlobStore(str(a)).local_path(sha), str(a))
        for d in (a, b):  # new local stores: one fan-out level (store/local.py)
            assert (d / rel).read_bytes() == data

        # FT-6: flip one bit of the copy read first; WADO still answers the right bytes.
        bad = bytearray(data)
        bad[len(bad) // 2] ^= 0x01
        (a / rel).write_bytes(bytes(bad))
        url = (f"{srv.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
               f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")
        r = requests.get(url, headers=SINGLE, timeout=30)
        assert r.status_code == 200 and r.content == data
        deadline = time.monotonic() + 10  # repair-on-read, in the background
        while (a / rel).read_bytes() != data:
            assert time.monotonic() < deadline, "copy A was not repaired on read"
            time.sleep(0.05)

        # Damage the other copies behind the running server's back.
        (b / rel).write_bytes(data[:-64])                       # FT-6 truncation
        s3.delete_object(Bucket="pacsd-e2e", Key=s3_key)        # FT-5 deletion

        p = verify(*common)
        assert p.returncode == 1, p.stdout + p.stderr
        assert f"DIFFERING_SIZE     {sha} file://{b}" in p.stdout
        assert f"MISSING            {sha} s3://pacsd-e2e/{prefix}" in p.stdout
        assert "result: PROBLEMS REMAIN" in p.stdout
        assert (b / rel).read_bytes() == data[:-64]  # without --repair nothing changes

        p = verify(*common, "--repair")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "repairs: 2 done, 0 failed" in p.stdout and "result: OK" in p.stdout
        assert (b / rel).read_bytes() == data
        assert s3.get_object(Bucket="pacsd-e2e", Key=s3_key)["Body"].read() == data

        # The same copies named on the command line instead of [[storage.copies]].
        p = verify("--config", str(config), "--data-dir", str(data_dir), "--store", str(a),
                   "--store", f"file://{b}", "--store", f"s3://pacsd-e2e/{prefix}")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "OK                 3" in p.stdout
    finally:
        srv.stop()
        os.environ.pop("PACSD_TEST_S3_SECRET", None)


def test_verify_config_error_exits_2(tmp_path, capsys):
    from pacsd.cli import main

    assert main(["verify", "--data-dir", str(tmp_path), "--store", str(tmp_path / "x"),
                 "--store", "ftp://nowhere/"]) == 2
    assert "pacsd: [storage]" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[[storage.copies]]\nurl = "/x"\nbucket = "y"\n')
    assert main(["verify", "--config", str(bad), "--data-dir", str(tmp_path)]) == 2
    assert "copies entry 1" in capsys.readouterr().err
