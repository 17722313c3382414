"""The real ``pacsd`` processes (SEC-20, MLPS 5): no non-loopback listener without
security and a user; the first user and a token made with the command line; a secured
server answering 401 / 200; the audit trail flushed at shutdown and verified by
``pacsd audit verify``."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests
from pacsd_server import free_port

from pacsd.services import totp

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Correct-Horse-9"


def pacsd(*args: str, stdin: str | None = None, timeout: float = 60):
    return subprocess.run([sys.executable, "-m", "pacsd.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def config(tmp_path: Path) -> Path:
    conf = tmp_path / "pacsd.toml"
    conf.write_text("[security]\nenabled = true\n")
    return conf


def test_SEC20_refuses_non_loopback_without_security_or_users(tmp_path):
    data = str(tmp_path / "data")
    p = pacsd("serve", "--data-dir", data, "--dicom-port", "0", "--http",
              f"0.0.0.0:{free_port()}")
    assert p.returncode == 2
    assert "refusing to listen on a non-loopback address" in p.stderr
    assert "[security] enabled" in p.stderr
    p = pacsd("serve", "--data-dir", data, "--dicom-port", "0", "--config",
              str(config(tmp_path)), "--http", f"0.0.0.0:{free_port()}")
    assert p.returncode == 2
    assert "refusing to listen on a non-loopback address" in p.stderr
    assert "no user exists" in p.stderr


def test_MLPS5_cli_first_user_then_secured_server_on_all_interfaces(tmp_path):
    data, conf = str(tmp_path / "data"), str(config(tmp_path))
    common = ["--data-dir", data, "--config", conf]
    weak = pacsd("user", "add", "admin", "--role", "sysadmin", *common, stdin="admin123\n")
    assert weak.returncode == 2 and "password" in weak.stderr  # policy applies (MLPS 1)
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    made = pacsd("user", "add", "admin", "--role", "sysadmin", "--password-file", str(pw),
                 *common)
    assert made.returncode == 0, made.stderr
    tok = pacsd("token", "create", "--user", "admin", "--scope", "read", "--days", "30",
                *common)
    assert tok.returncode == 0, tok.stderr
    token = tok.stdout.strip()
    assert token.startswith("pacsd-t-") and "Shown once" in tok.stderr
    listed = pacsd("token", "list", *common)
    assert "token:1" in listed.stdout and token not in listed.stdout
    # MLPS 4: the administrator enrols a TOTP second factor on the server.
    enrolled = pacsd("user", "totp", "admin", "--no-qr", *common)
    assert enrolled.returncode == 0, enrolled.stderr
    uri = enrolled.stdout.splitlines()[0]
    assert uri.startswith("otpauth://totp/pacsd:admin?")
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    assert secret not in pacsd("audit", "verify", *common).stdout

    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "pacsd.cli", "serve", *common,
                             "--dicom-port", "0", "--http", f"0.0.0.0:{port}",
                             "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert requests.get(url + "/api/v1/health", timeout=1).status_code == 200
                break
            except requests.ConnectionError:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline
                time.sleep(0.1)
        r = requests.get(url + "/dicom-web/studies", timeout=5)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        r = requests.get(url + "/dicom-web/studies", timeout=5,
                         headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        login = {"username": "admin", "password": PASSWORD}
        r = requests.post(url + "/api/v1/auth/login", timeout=10, json=login)
        assert r.status_code == 401  # the password alone is not enough (MLPS 4)
        code = totp.code_at(secret, time.time())
        r = requests.post(url + "/api/v1/auth/login", timeout=10, json={**login, "otp": code})
        assert r.status_code == 200, r.text
        session = r.json()["token"]
        r = requests.post(url + "/api/v1/auth/login", timeout=10, json={**login, "otp": code})
        assert r.status_code == 401  # a code works once (replay)
        r = requests.get(url + "/api/v1/audit", timeout=5,
                         headers={"Authorization": f"Bearer {session}"})
        assert r.status_code == 403  # MLPS 6: a sysadmin does not read the audit trail
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
    assert proc.returncode == 0
    # Shutdown flushed the queue: the CLI's events and the server's are one intact chain.
    v = pacsd("audit", "verify", *common)
    assert v.returncode == 0, v.stderr
    events = int(v.stdout.split("intact: ")[1].split()[0])
    # user-created, token-created, totp-enrolled, query, login-failed (no code), login,
    # login-failed (replayed code), permission-denied
    assert events == 8
