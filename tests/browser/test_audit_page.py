"""The auditor's page at /audit (R-E3, R-E4, MLPS 4, 6, 9-11) in real Chromium against a
real ``pacsd serve`` with [security] enabled: the audit administrator signs in with
password and TOTP code, sees the chain status line, filters (type, outcome, patient),
pages, and exports CSV; a radiologist signing in gets "not authorised", and that refusal
is itself in the trail the auditor reads."""
from __future__ import annotations

import csv
import io
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from pacsd_server import Server

from dicomgen import make_dataset, multipart, to_part10
from pacsd.services import totp
from viewerdata import ROOT_DIR, shot

PASSWORD = "Correct-Horse-9"


def pacsd(*args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "pacsd.cli", *args], capture_output=True,
                       text=True, timeout=60, cwd=ROOT_DIR)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    data = tmp_path_factory.mktemp("pacsd-audit-page")
    conf = data / "pacsd.toml"
    conf.write_text("[security]\nenabled = true\n")
    pw = data / "pw"
    pw.write_text(PASSWORD + "\n")
    common = ["--data-dir", str(data), "--config", str(conf)]
    pacsd("user", "add", "uploader", "--role", "integration", "--password-file", str(pw),
          *common)
    pacsd("user", "add", "dr-zhou", "--role", "radiologist", "--password-file", str(pw),
          *common)
    pacsd("user", "add", "audrey", "--role", "auditor", "--password-file", str(pw), *common)
    uri = pacsd("user", "totp", "audrey", "--no-qr", *common).strip().splitlines()[0]
    srv = Server(str(data), "--config", str(conf))
    srv.totp_secret = parse_qs(urlsplit(uri).query)["secret"][0]
    try:
        tok = requests.post(srv.url + "/api/v1/auth/login", timeout=10, json={
            "username": "uploader", "password": PASSWORD}).json()["token"]
        auth = {"Authorization": f"Bearer {tok}"}
        srv.studies = {}
        for pid in ("PAGE-PID-1", "PAGE-PID-2"):
            ds = make_dataset(PatientName="Test^Page", PatientID=pid)
            body, ctype = multipart([to_part10(ds)])
            r = requests.post(srv.url + "/dicom-web/studies", data=body, timeout=30,
                              headers={"Content-Type": ctype, **auth})
            assert r.status_code == 200, r.text
            srv.studies[pid] = ds.StudyInstanceUID
        for _ in range(55):  # more than one page of events (50 a page)
            assert requests.get(srv.url + "/dicom-web/studies", headers=auth,
                                timeout=10).status_code == 200
        yield srv
    finally:
        srv.stop()


def sign_in(page, url, user, otp=None):
    page.goto(url + "/audit")
    page.wait_for_selector("#login[open]")
    page.fill('#login [name="username"]', user)
    page.fill('#login [name="password"]', PASSWORD)
    if otp:
        page.fill('#login [name="otp"]', otp)
    page.click('#login button[type="submit"]')


def rows(page) -> list[dict]:
    return page.eval_on_selector_all("#events tbody tr", """trs => trs.map(tr => ({
        seq: +tr.dataset.seq, type: tr.children[2].textContent,
        outcome: tr.children[3].textContent, actor: tr.children[4].textContent,
        study: tr.children[7].textContent, detail: tr.children[9].textContent}))""")


def search(page, **fields):
    # Reset reloads the unfiltered list: let that answer land before filling the form.
    page.evaluate("delete document.body.dataset.loaded")
    page.click('#filters button[type="reset"]')
    page.wait_for_function("() => document.body.dataset.loaded !== undefined")
    for name, value in fields.items():
        sel = f'#filters [name="{name}"]'
        if name == "outcome":
            page.select_option(sel, value)
        else:
            page.fill(sel, value)
    page.evaluate("delete document.body.dataset.loaded")
    page.click('#filters button[type="submit"]')
    page.wait_for_function("() => document.body.dataset.loaded !== undefined")


def test_MLPS6_a_radiologist_is_refused_and_the_refusal_is_recorded(chromium, audited):
    ctx = chromium.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    try:
        sign_in(page, audited.url, "dr-zhou")
        page.wait_for_selector("#denied:not([hidden])")
        assert page.is_hidden("#events") and page.is_hidden("#filters")
        assert "Only the audit administrator" in page.inner_text("#denied")
        shot(page, "audit-page-denied")
    finally:
        ctx.close()


def test_R_E3_E4_auditor_signs_in_filters_pages_and_exports(chromium, audited, tmp_path):
    ctx = chromium.new_context(viewport={"width": 1500, "height": 1000},
                               accept_downloads=True)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(audited.url + "/audit")
        page.wait_for_selector("#login[open]")
        shot(page, "audit-page-login")
        # Password alone is not enough for the audit administrator (MLPS 4).
        sign_in(page, audited.url, "audrey")
        page.wait_for_function("() => document.querySelector('#login .error').textContent !== ''")
        sign_in(page, audited.url, "audrey", totp.code_at(audited.totp_secret, time.time()))
        page.wait_for_function("() => document.body.dataset.loaded === '50'")
        assert page.get_attribute("#chain", "data-state") == "ok"
        assert "Hash chain intact" in page.inner_text("#chain")
        assert "audrey (auditor)" in page.inner_text("#who")
        first = rows(page)
        assert [r["seq"] for r in first] == sorted((r["seq"] for r in first), reverse=True)
        assert "1–50 of" in page.inner_text("#page-info")
        shot(page, "audit-page")

        # Paging: older, then back to newer.
        page.evaluate("delete document.body.dataset.loaded")
        page.click("#older")
        page.wait_for_function("() => document.body.dataset.loaded !== undefined")
        second = rows(page)
        assert second and second[0]["seq"] == first[-1]["seq"] - 1
        assert "51–" in page.inner_text("#page-info")
        page.evaluate("delete document.body.dataset.loaded")
        page.click("#newer")
        page.wait_for_function("() => document.body.dataset.loaded !== undefined")
        # Back on the newest page (which now also lists this auditor's own reads).
        assert first[0]["seq"] in [r["seq"] for r in rows(page)]
        assert "1–50 of" in page.inner_text("#page-info")

        # Filters: event type; patient (resolved to the study by the server).
        search(page, type="instances-stored")
        stored = rows(page)
        assert {r["type"] for r in stored} == {"instances-stored"} and len(stored) == 2
        search(page, patient="PAGE-PID-2")
        mine = rows(page)
        assert mine and {r["study"] for r in mine} == {audited.studies["PAGE-PID-2"]}
        # The radiologist's refused reads are in the trail (outcome denied).
        search(page, outcome="denied")
        denied = rows(page)
        assert any("dr-zhou" in r["actor"] and "/api/v1/audit" in r["detail"]
                   for r in denied), denied
        shot(page, "audit-page-denied-filter")

        # CSV export of the current filter.
        search(page, type="instances-stored")
        with page.expect_download() as dl:
            page.click("#export-csv")
        path = tmp_path / "export.csv"
        dl.value.save_as(path)
        table = list(csv.DictReader(io.StringIO(path.read_text("utf-8-sig"))))
        assert sorted(r["study_uid"] for r in table) == sorted(audited.studies.values())
        with page.expect_download() as dl:
            page.click("#export-xlsx")
        assert dl.value.suggested_filename.endswith(".xlsx")
        # Both exports are themselves audited (written just after the last byte is sent).
        for _ in range(20):
            search(page, type="audit-export")
            if len(rows(page)) == 2:
                break
            time.sleep(0.1)
        assert len(rows(page)) == 2
        assert errors == []
    finally:
        ctx.close()
