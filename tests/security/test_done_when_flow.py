"""Issue 5's "done when", as one flow through a real ``pacsd serve`` (R-E1, R-E3, R-E4,
R-A12, MLPS 4, 5, 6, 7, 9; SEC-1, SEC-9, SEC-18), on SQLite and PostgreSQL:

1. The security administrator (password + TOTP) creates departments and users over the
   admin API (no default account: the administrators themselves come from the console).
2. A radiologist of hospital A sees A's studies only: QIDO-RS, WADO-RS, and C-FIND with
   DCMTK ``findscu`` from a DICOM peer bound to A; B's study looks missing (404, no match);
   storing into B's study is refused (0x0124, write scoping).
3. The denied attempts on B's study are in the audit trail, read by the auditor (password
   + TOTP) over ``GET /api/v1/audit``; the chain verifies.
4. The research export with an authorization record is ``pacsd export --deidentify``
   (tests/security/test_deid.py covers the de-identification itself); here it runs once
   on the same archive and the auditor finds its authorization in the trail.
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import orjson
import pytest
import requests
from dicomgen import make_dataset, multipart, to_part10
from pacsd_server import Server
from sechelpers import cli

from pacsd.services import totp

PASSWORD = "Correct-Horse-9"
NEW_PASSWORD = "Battery-Staple-42"
ST = {"A": "1.2.826.0.1.3680043.10.543.901", "B": "1.2.826.0.1.3680043.10.543.902"}
JSON = {"Accept": "application/dicom+json"}


def instance(hospital: str, n: int = 1) -> bytes:
    uid = ST[hospital]
    return to_part10(make_dataset(study=uid, series=uid + ".1", sop=f"{uid}.1.{n}",
                                  InstitutionName=f"Hospital {hospital}",
                                  PatientID=f"P{hospital}", seed=n))


class Admin:
    """An administrator enrolled for TOTP on the console, logging in over HTTP."""

    def __init__(self, url: str, name: str, common: list[str]) -> None:
        enrolled = cli("user", "totp", name, "--no-qr", *common)
        assert enrolled.returncode == 0, enrolled.stderr
        self.secret = re.search(r"secret=([A-Z2-7]+)", enrolled.stdout).group(1)
        self.url, self.name, self.step = url, name, None

    def login(self) -> dict[str, str]:
        now = time.time()
        if self.step == totp.step_of(now):  # a code works once: wait for the next step
            time.sleep(totp.STEP_S - now % totp.STEP_S + 0.1)
            now = time.time()
        self.step = totp.step_of(now)
        r = requests.post(f"{self.url}/api/v1/auth/login", timeout=30, json={
            "username": self.name, "password": PASSWORD, "otp": totp.code_at(self.secret, now)})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}


def findscu(port: int, aet: str) -> list[str]:
    """StudyInstanceUIDs a study-level C-FIND with DCMTK findscu returns."""
    done = subprocess.run(
        ["/usr/bin/findscu", "-v", "-S", "-aet", aet, "-aec", "PACSD", "-k",
         "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return re.findall(r"\(0020,000d\) UI \[([0-9.]+)\]", done.stdout + done.stderr)


def test_issue5_done_when_RE1_RA12_RE4_MLPS9_flow(tmp_path, db_url):
    if not Path("/usr/bin/findscu").exists():
        pytest.skip("DCMTK findscu is not installed")
    data = tmp_path / "data"
    data.mkdir()
    conf = tmp_path / "pacsd.toml"
    conf.write_text(f'''
[index]
url = "{db_url}"
[security]
enabled = true
default_institutions = []
institution_map = {{ "Hospital A" = "A", "Hospital B" = "B" }}
[dimse.actors.RAD-A]
roles = ["radiologist"]
institutions = ["A"]
source_ips = ["127.0.0.1"]
''')
    common = ["--config", str(conf), "--data-dir", str(data)]
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    # The console creates the administrators (MLPS 5: no default account) and the
    # modality gateway that stores for both hospitals.
    for name, role, extra in (("sec", "secadmin", []), ("audit", "auditor", []),
                              ("gateway", "integration", ["--institution", "*"])):
        made = cli("user", "add", name, "--role", role, "--password-file", str(pw),
                   *extra, *common)
        assert made.returncode == 0, made.stderr
    srv = Server(str(data), "--config", str(conf), "--ae-title", "PACSD", dicom_port=None)
    try:
        url = srv.url
        sec, auditor = Admin(url, "sec", common), Admin(url, "audit", common)
        r = requests.post(f"{url}/api/v1/auth/login", timeout=30,
                          json={"username": "gateway", "password": PASSWORD})
        gateway = {"Authorization": f"Bearer {r.json()['token']}"}
        body, ctype = multipart([instance("A"), instance("B")])
        r = requests.post(f"{url}/dicom-web/studies", data=body, timeout=60,
                          headers={**gateway, "Content-Type": ctype})
        assert r.status_code == 200, r.text

        # 1. The security administrator, with TOTP, over the admin API.
        admin = sec.login()
        for dept in ("radiology-A", "radiology-B"):
            r = requests.post(f"{url}/api/v1/admin/departments", headers=admin,
                              json={"name": dept}, timeout=30)
            assert r.status_code == 201, r.text
        for name, hospital in (("dr-a", "A"), ("dr-b", "B")):
            r = requests.post(f"{url}/api/v1/admin/users", headers=admin, timeout=30, json={
                "username": name, "password": PASSWORD, "roles": ["radiologist"],
                "department": f"radiology-{hospital}", "institutions": [hospital]})
            assert r.status_code == 201, r.text
        # A password set by an administrator is changed at the first login (MLPS 1).
        r = requests.post(f"{url}/api/v1/auth/login", timeout=30,
                          json={"username": "dr-a", "password": PASSWORD})
        assert r.json()["password_change_required"] is True
        first = {"Authorization": f"Bearer {r.json()['token']}"}
        assert requests.get(f"{url}/dicom-web/studies", headers={**first, **JSON},
                            timeout=30).status_code == 403
        r = requests.post(f"{url}/api/v1/auth/password", headers=first, timeout=30,
                          json={"password": PASSWORD, "new_password": NEW_PASSWORD})
        assert r.status_code == 204, r.text
        r = requests.post(f"{url}/api/v1/auth/login", timeout=30,
                          json={"username": "dr-a", "password": NEW_PASSWORD})
        dr_a = {"Authorization": f"Bearer {r.json()['token']}"}

        # 2. Hospital A's radiologist sees A only: QIDO-RS, WADO-RS, C-FIND.
        r = requests.get(f"{url}/dicom-web/studies", headers={**dr_a, **JSON}, timeout=30)
        assert [s["0020000D"]["Value"][0] for s in r.json()] == [ST["A"]]
        assert r.headers["X-Total-Count"] == "1"
        r = requests.get(f"{url}/dicom-web/studies/{ST['A']}/metadata", timeout=30,
                         headers={**dr_a, **JSON})
        assert r.status_code == 200 and len(r.json()) == 1
        missing = "1.2.826.0.1.3680043.10.543.999"
        for study in (ST["B"], missing):  # B's study looks exactly like a missing one
            r = requests.get(f"{url}/dicom-web/studies/{study}/metadata", timeout=30,
                             headers={**dr_a, **JSON})
            assert r.status_code == 404
        body, ctype = multipart([instance("B", 2)])
        r = requests.post(f"{url}/dicom-web/studies", data=body, timeout=60,
                          headers={**dr_a, "Content-Type": ctype, **JSON})
        assert r.status_code == 409
        assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0124]
        assert findscu(srv.dicom_port, "RAD-A") == [ST["A"]]
        # The radiologist of B sees B only.
        r = requests.post(f"{url}/api/v1/auth/login", timeout=30,
                          json={"username": "dr-b", "password": PASSWORD})
        dr_b = {"Authorization": f"Bearer {r.json()['token']}"}
        r = requests.post(f"{url}/api/v1/auth/password", headers=dr_b, timeout=30,
                          json={"password": PASSWORD, "new_password": NEW_PASSWORD})
        r = requests.post(f"{url}/api/v1/auth/login", timeout=30,
                          json={"username": "dr-b", "password": NEW_PASSWORD})
        dr_b = {"Authorization": f"Bearer {r.json()['token']}"}
        r = requests.get(f"{url}/dicom-web/studies", headers={**dr_b, **JSON}, timeout=30)
        assert [s["0020000D"]["Value"][0] for s in r.json()] == [ST["B"]]
        # Separation of duties (MLPS 6): the security administrator sees no images and
        # no audit; the auditor changes nothing.
        assert requests.get(f"{url}/dicom-web/studies", headers={**admin, **JSON},
                            timeout=30).status_code == 403
        assert requests.get(f"{url}/api/v1/audit", headers=admin,
                            timeout=30).status_code == 403

        # 4. The research export with its authorization record (tests/security/
        # test_deid.py checks what it writes).
        out = tmp_path / "research"
        r = cli("export", "--deidentify", "--authorization", "IRB-2026-042: cohort",
                "--to", str(out), *common)
        assert r.returncode == 0, r.stderr

        # 3. The auditor, with TOTP, finds the denied attempts on B's study.
        audit = auditor.login()
        assert requests.post(f"{url}/api/v1/admin/departments", headers=audit, timeout=30,
                             json={"name": "x"}).status_code == 403
        r = requests.get(f"{url}/api/v1/audit?limit=1000", headers=audit, timeout=30)
        assert r.status_code == 200, r.text
        events = r.json()["events"]
    finally:
        srv.stop()

    def find(**match):
        return [e for e in events if all(e.get(k) == v for k, v in match.items())]

    on_b = find(actor_name="dr-a", study_uid=ST["B"])
    assert {(e["event_type"], e["outcome"]) for e in on_b} == {
        ("study-read", "failure"), ("permission-denied", "denied")}
    denied = [e["detail"]["reason"] for e in find(event_type="permission-denied",
                                                   actor_name="dr-a")]
    assert sorted(denied) == ["outside data scope", "password change required"]
    assert find(event_type="query", actor="ae:RAD-A")[0]["detail"]["results"] == 1
    assert {e["detail"]["name"] for e in find(event_type="department-changed",
                                              actor_name="sec")} == {"radiology-A",
                                                                     "radiology-B"}
    assert len(find(event_type="user-created", actor_name="sec")) == 2
    logins = find(event_type="login", actor_name="sec") + find(event_type="login",
                                                                actor_name="audit")
    assert logins and all(e["detail"]["factors"] == ["password", "totp"] for e in logins)
    exports = [e for e in find(event_type="research-export") if "authorization" in
               e["detail"]]
    assert exports[0]["detail"]["authorization"]["reference"] == "IRB-2026-042"
    # No patient data in the trail (SEC-23).
    assert "PA" not in orjson.dumps([e["detail"] for e in events]).decode().split('"')
    settings_check = cli("audit", "verify", *common)
    assert settings_check.returncode == 0, settings_check.stdout + settings_check.stderr
