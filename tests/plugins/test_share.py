"""pacsd-share against a real ``pacsd serve`` (security enabled, plugin pip-installed):
links, QR codes, the token-for-cookie exchange, the second factor, scope, expiry,
revocation and the audit trail (R-C3, R-C5, R-C6, R-E5; SEC-1..SEC-12, SEC-17)."""
from __future__ import annotations

import base64
import io
import sqlite3
import time

import pytest
import requests
from PIL import Image

from sharehelpers import create_link, open_link, setup_site, without_link_tokens


@pytest.fixture(scope="module")
def site(plugin_site, tmp_path_factory):
    srv, site = setup_site(tmp_path_factory.mktemp("share"), plugin_site)
    try:
        yield site
    finally:
        srv.stop()


def test_R_C3_R_E5_link_is_opaque_and_comes_with_a_qr_code(site):
    A = site.studies["A"][0]
    link = create_link(site, [A], days=7)
    url = link["url"]
    assert "/plugins/share/s/" in url
    token = url.rsplit("/", 1)[1]
    assert len(base64.urlsafe_b64decode(token + "==")) >= 16   # >= 128 bits (SEC-8)
    for secret in ("P1", "19800131", "Zhang", A):                # SEC-11: no PHI in it
        assert secret not in without_link_tokens(url)
    png = Image.open(io.BytesIO(base64.b64decode(link["qr_png_base64"])))
    assert png.format == "PNG" and png.size[0] == png.size[1] >= 21 * 8
    assert link["qr_svg"].lstrip().startswith("<svg")
    assert link["studies"] == [A] and link["kind"] == "exam"
    listed = site.staff.get(site.url + "/api/v1/plugins/share/links",
                            params={"study": A}).json()["links"]
    assert link["id"] in [x["id"] for x in listed]
    assert all("token" not in x and "url" not in x for x in listed)  # stored hashed only


def test_SEC_10_landing_exchanges_the_token_for_a_cookie_and_redirects(site):
    link = create_link(site, [site.studies["A"][0]])
    phone = requests.Session()
    r = phone.get(link["url"], allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/plugins/share/"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Path=/plugins/share/" in cookie and "Secure" not in cookie  # plain HTTP here
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["Cache-Control"] == "no-store"
    token = link["url"].rsplit("/", 1)[1]
    assert token not in cookie
    # The cookie alone, before the second factor, shows no patient data.
    r = phone.get(site.url + "/plugins/share/exams", allow_redirects=False)
    assert r.status_code == 401
    form = phone.get(site.url + "/plugins/share/")
    assert form.status_code == 200 and "出生日期" in form.text and "Chest CT" not in form.text


def test_R_C3_second_factor_then_exam_list_thumbnails_and_images(site):
    A, seriesA, sopA = site.studies["A"]
    phone = open_link(site, create_link(site, [A])["url"], answer="1980-01-31")
    r = phone.get(site.url + "/plugins/share/exams")
    assert r.status_code == 200 and "Chest CT" in r.text and "City Hospital" in r.text
    assert "Knee MR" not in r.text and "Other CT" not in r.text
    assert "Zhang" not in r.text and "Z***" in r.text          # masked name
    r = phone.get(site.url + f"/plugins/share/exams/{A}")
    assert r.status_code == 200 and f"/plugins/share/img/{A}/{seriesA}/" in r.text
    r = phone.get(site.url + f"/plugins/share/img/{A}/{seriesA}/{sopA}/thumbnail")
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size[0] <= 256
    r = phone.get(site.url + f"/plugins/share/img/{A}/{seriesA}/{sopA}/rendered")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (128, 128)
    r = phone.get(site.url + f"/plugins/share/exams/{A}/series/{seriesA}?i=2")
    assert r.status_code == 200 and "第 3 / 3 张" in r.text


def test_R_C5_patient_space_hides_sensitive_studies_and_phone_factor(site):
    A, B = site.studies["A"][0], site.studies["B"][0]
    link = create_link(site, [A], kind="patient", hide=[B], factor="phone",
                       phone="+86 138 0013 4321")
    assert link["studies"] == [A] and link["hidden"] == [B]
    phone = open_link(site, link["url"], answer="4321")
    r = phone.get(site.url + "/plugins/share/exams")
    assert "Chest CT" in r.text and "Knee MR" not in r.text
    assert phone.get(site.url + f"/plugins/share/exams/{B}").status_code == 403
    both = create_link(site, [A], kind="patient", factor="phone", phone="13800134321")
    r = open_link(site, both["url"], answer="4321").get(site.url + "/plugins/share/exams")
    assert "Chest CT" in r.text and "Knee MR" in r.text and "Other CT" not in r.text


def test_SEC_1_SEC_3_SEC_9_SEC_12_share_for_A_cannot_read_B(site):
    A, seriesA, sopA = site.studies["A"]
    B, seriesB, sopB = site.studies["B"]
    C, seriesC, sopC = site.studies["C"]
    phone = open_link(site, create_link(site, [A])["url"])
    u = site.url + "/plugins/share"
    forbidden = [f"/exams/{B}", f"/exams/{C}", f"/exams/{B}/series/{seriesB}",
                 f"/img/{B}/{seriesB}/{sopB}/thumbnail", f"/img/{C}/{seriesC}/{sopC}/rendered",
                 f"/img/{A}/{seriesB}/{sopB}/thumbnail",        # SEC-3: B's child under A
                 f"/img/{A}/{seriesA}/{sopB}/rendered",
                 f"/doc/{B}/{seriesB}/{sopB}/report.pdf",
                 f"/doc/{A}/{seriesA}/{sopA}/report.pdf"]             # not a document
    bodies = set()
    for path in forbidden:
        r = phone.get(u + path)
        assert r.status_code == 403, path
        bodies.add(r.text)
    r = phone.get(u + "/exams/1.2.3.4.5.6.7.8.9")                # does not exist (SEC-9)
    assert len(bodies) == 1 and r.status_code == 403 and r.text in bodies
    # SEC-12: the other study of the same patient is not listed as a prior.
    assert "Knee MR" not in phone.get(u + "/exams").text
    # The share cookie is not a credential anywhere else (DICOMweb, staff API).
    for path in (f"/dicom-web/studies/{A}/metadata", "/dicom-web/studies",
                 f"/dicom-web/studies/{A}/series/{seriesA}/instances/{sopA}/rendered"):
        assert phone.get(site.url + path).status_code == 401, path
    r = phone.post(site.url + "/api/v1/plugins/share/links", json={"studies": [B]})
    assert r.status_code == 401                                   # SEC-5


def test_SEC_6_revoked_and_expired_links_and_sessions_are_refused(site):
    A = site.studies["A"][0]
    link = create_link(site, [A])
    phone = open_link(site, link["url"])
    assert phone.get(site.url + "/plugins/share/exams").status_code == 200
    r = site.staff.delete(site.url + f"/api/v1/plugins/share/links/{link['id']}")
    assert r.status_code == 204
    r = phone.get(site.url + "/plugins/share/exams", allow_redirects=False)
    assert r.status_code == 401                                  # session dies with it
    r = requests.get(link["url"], allow_redirects=False)
    assert r.status_code == 401 and 'error="revoked"' in r.headers["WWW-Authenticate"]
    assert "撤销" in r.text
    expiring = create_link(site, [A])
    db = sqlite3.connect(site.data / "index.db")
    with db:
        db.execute("UPDATE share_links SET expires_at = ? WHERE id = ?",
                   (time.time() - 1, expiring["id"]))
    db.close()
    r = requests.get(expiring["url"], allow_redirects=False)
    assert r.status_code == 401 and 'error="expired"' in r.headers["WWW-Authenticate"]
    r = requests.get(site.url + "/plugins/share/s/" + "x" * 43, allow_redirects=False)
    assert r.status_code == 401 and 'error="unknown"' in r.headers["WWW-Authenticate"]


def test_SEC_8_wrong_answers_lock_the_link(site):
    link = create_link(site, [site.studies["A"][0]])
    phone = open_link(site, link["url"], answer=None)
    verify = site.url + "/plugins/share/verify"
    for _ in range(2):
        r = phone.post(verify, data={"answer": "19990101"}, headers={"Origin": site.url},
                       allow_redirects=False)
        assert r.status_code == 303 and r.headers["Location"] == "/plugins/share/?e=1"
    r = phone.post(verify, data={"answer": "19990101"}, headers={"Origin": site.url})
    assert r.status_code == 401 and "锁定" in r.text               # max_attempts = 3
    r = phone.post(verify, data={"answer": "19800131"}, headers={"Origin": site.url})
    assert r.status_code == 401                                    # right answer too late
    r = requests.get(link["url"], allow_redirects=False)           # a new session too
    assert 'error="locked"' in r.headers["WWW-Authenticate"]


def test_SEC_17_cross_site_post_is_refused(site):
    phone = open_link(site, create_link(site, [site.studies["A"][0]])["url"], answer=None)
    verify = site.url + "/plugins/share/verify"
    for headers in ({"Origin": "https://evil.example"},
                    {"Sec-Fetch-Site": "cross-site", "Origin": "null"},
                    {"Sec-Fetch-Site": "same-site", "Origin": site.url}):
        r = phone.post(verify, data={"answer": "19800131"}, headers=headers,
                       allow_redirects=False)
        assert r.status_code == 403, headers
    assert phone.get(site.url + "/plugins/share/exams").status_code == 401


def test_R_C6_SEC_10_every_grant_access_and_denial_is_audited_without_the_token(site):
    A, seriesA, sopA = site.studies["A"]
    link = create_link(site, [A])
    phone = open_link(site, link["url"])
    phone.get(site.url + f"/plugins/share/img/{A}/{seriesA}/{sopA}/thumbnail")
    phone.get(site.url + f"/plugins/share/exams/{site.studies['B'][0]}")
    requests.get(site.url + "/plugins/share/s/" + "y" * 43)
    events = site.auditor.get(site.url + "/api/v1/audit", params={"limit": 1000}).json()
    events = events["events"]
    mine = [e for e in events if e["detail"].get("link") == link["id"]
            or e["actor"] == f"share:{link['id']}"]
    types = {(e["event_type"], e["outcome"]) for e in mine}
    assert {("share.created", "success"), ("share.opened", "success"),
            ("share.verified", "success"), ("study-read", "success"),
            ("study-read", "failure"), ("share.denied", "denied")} <= types
    reads = [e for e in mine if e["event_type"] == "study-read"]
    assert {e["study_uid"] for e in reads if e["outcome"] == "success"} == {A}
    refused = [e for e in reads if e["outcome"] == "failure"]
    assert [(e["study_uid"], e["detail"]["status"]) for e in refused] == \
        [(site.studies["B"][0], 403)]
    assert any(e["event_type"] == "share.denied" and e["detail"].get("reason") == "unknown"
               for e in events)
    token = link["url"].rsplit("/", 1)[1]
    assert token not in str(events)


def test_R_C3_R_E6_cli_creates_a_link_with_qr_files_and_lists_plugins(site, plugin_site,
                                                                        tmp_path):
    import json
    import os

    from sharehelpers import ROOT, pacsd

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(ROOT)])}
    conf = site.data.parent / "pacsd.toml"
    common = ("--data-dir", str(site.data), "--config", str(conf))
    listed = pacsd(env, "plugins", "--json")
    names = {r["name"]: r for r in json.loads(listed.stdout)}
    assert {"share", "efilm"} <= set(names)
    assert "register_tables" in names["share"]["hooks"]
    png, svg = tmp_path / "qr.png", tmp_path / "qr.svg"
    made = pacsd(env, "share", "create", "--study", site.studies["A"][0], "--days", "2",
                 "--base-url", site.url, "--qr-png", str(png), "--qr-svg", str(svg), *common)
    assert made.returncode == 0, made.stderr
    out = json.loads(made.stdout)
    assert out["url"].startswith(site.url + "/plugins/share/s/")
    assert Image.open(png).format == "PNG" and svg.read_text().lstrip().startswith("<svg")
    phone = open_link(site, out["url"])
    assert "Chest CT" in phone.get(site.url + "/plugins/share/exams").text
    gone = pacsd(env, "share", "revoke", str(out["id"]), *common)
    assert gone.returncode == 0 and gone.stdout.strip() == "revoked"
    r = requests.get(out["url"], allow_redirects=False)
    assert 'error="revoked"' in r.headers["WWW-Authenticate"]


def test_R_C5_doctor_shares_the_image_being_viewed_and_R_C4_keyword_search(site):
    A, seriesA, _ = site.studies["A"]
    r = site.staff.get(site.url + f"/dicom-web/studies/{A}/series/{seriesA}/instances")
    sops = sorted((i["00200013"]["Value"][0], i["00080018"]["Value"][0]) for i in r.json())
    second = sops[1][1]
    link = create_link(site, [A], series=seriesA, sop=second)
    assert link["focus"] == {"series": seriesA, "sop": second}
    phone = requests.Session()
    phone.get(link["url"])
    r = phone.post(site.url + "/plugins/share/verify", data={"answer": "19800131"},
                   headers={"Origin": site.url}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"].endswith(f"?sop={second}")
    r = phone.get(site.url + r.headers["Location"])
    assert "第 2 / 3 张" in r.text and f"/{second}/rendered" in r.text
    B, seriesB, sopB = site.studies["B"]
    r = site.staff.post(site.url + "/api/v1/plugins/share/links",
                        json={"studies": [A], "series": seriesB, "sop": sopB})
    assert r.status_code == 400                            # not an image of that study
    space = create_link(site, [A], kind="patient")
    phone = open_link(site, space["url"])
    r = phone.get(site.url + "/plugins/share/exams", params={"q": "knee"})
    assert "Knee MR" in r.text and "Chest CT" not in r.text
    r = phone.get(site.url + "/plugins/share/exams", params={"q": "city 2026"})
    assert "Chest CT" in r.text and "Knee MR" not in r.text
    r = phone.get(site.url + "/plugins/share/exams", params={"q": "<script>"})
    assert "<script>" not in r.text and "&lt;script&gt;" in r.text   # SEC-24


def test_R_C4_R_D1_SEC_1_phone_viewer_dicomweb_is_scoped_to_the_share(site):
    """The phone image view's DICOMweb root (/plugins/share/dicom-web): the share cookie
    reads the shared study's series metadata and frames through pacsd's own WADO-RS
    handlers; another study's frames or metadata answer 404 (query_filter + the link
    check, SEC-1, SEC-9: the same answer as a study that does not exist), the audit trail
    records the denial, and the cookie never opens the main DICOMweb root."""
    A, SA, IA = site.studies["A"]
    C, SC, IC = site.studies["C"]
    link = create_link(site, [A])
    root = site.url + "/plugins/share/dicom-web"
    # Before the second factor the cookie reads nothing.
    pending = open_link(site, link["url"], answer=None)
    r = pending.get(f"{root}/studies/{A}/series/{SA}/metadata",
                    headers={"Accept": "application/dicom+json"})
    assert r.status_code == 401
    phone = open_link(site, link["url"])
    r = phone.get(f"{root}/studies/{A}/series/{SA}/metadata",
                  headers={"Accept": "application/dicom+json"})
    assert r.status_code == 200, r.text
    meta = r.json()
    assert len(meta) == 3 and {m["0020000D"]["Value"][0] for m in meta} == {A}
    r = phone.get(f"{root}/studies/{A}/series/{SA}/instances/{IA}/frames/1",
                  headers={"Accept": "multipart/related; type=application/octet-stream; "
                                     "transfer-syntax=*"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("multipart/related")
    assert len(r.content) > 128 * 128 * 2                       # the 16-bit frame
    # Another patient's study, with the patient's verified cookie: not found.
    for url in (f"{root}/studies/{C}/series/{SC}/instances/{IC}/frames/1",
                f"{root}/studies/{C}/series/{SC}/metadata",
                f"{root}/studies/{A}/series/{SC}/instances/{IC}/frames/1",  # SEC-3 mix
                f"{root}/studies/{A}/series/{SA}/instances/{IC}/frames/1"):
        r = phone.get(url, headers={"Accept": "multipart/related; "
                                              "type=application/octet-stream; "
                                              "transfer-syntax=*, application/dicom+json"})
        assert r.status_code == 404, (url, r.status_code, r.text)
        assert C not in r.text
    # The share cookie is confined to /plugins/share/: the main DICOMweb root refuses.
    r = phone.get(f"{site.url}/dicom-web/studies/{A}/series/{SA}/metadata",
                  headers={"Accept": "application/dicom+json"})
    assert r.status_code == 401
    events = site.auditor.get(site.url + "/api/v1/audit", params={
        "type": "share.denied"}).json()["events"]
    assert any((e.get("detail") or {}).get("reason") == "out-of-scope"
               and "dicom-web" in str((e.get("detail") or {}).get("route"))
               for e in events), events


def test_R_C4_query_filter_confines_a_share_actor_to_its_link():
    """The hook itself: a share actor sees its link's studies, a bare share: id none."""
    import pacsd_share
    from pacsd.plugin_api import Actor
    from pacsd.services.scoping import OneOf

    a = pacsd_share.ShareActor(id="share:1", roles=frozenset({"guest"}), studies=("1.2.3",))
    assert pacsd_share.query_filter(a, "read") == OneOf("study_instance_uid", ["1.2.3"])
    assert pacsd_share.query_filter(Actor(id="share:9"), "read") == \
        OneOf("study_instance_uid", [])
    assert pacsd_share.query_filter(Actor(id="user:1"), "read") is None


def test_SEC_8_link_guessing_from_one_address_is_rate_limited(site):
    """Last in this module: it exhausts the loopback address's budget (rate_limit 20)."""
    import secrets

    statuses = []
    for _ in range(25):
        r = requests.get(site.url + "/plugins/share/s/" + secrets.token_urlsafe(32),
                         allow_redirects=False)
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
    assert statuses[0] == 401 and statuses[-1] == 429
    assert statuses == sorted(statuses)                  # once limited, stays limited
    valid = create_link(site, [site.studies["A"][0]])    # even a good link waits now
    assert requests.get(valid["url"], allow_redirects=False).status_code == 429
    events = site.auditor.get(site.url + "/api/v1/audit",
                              params={"type": "share.denied", "limit": 1000}).json()["events"]
    assert any(e["detail"].get("reason") == "rate-limited" for e in events)


def test_R_E6_share_tables_upgrade_from_version_1(tmp_path, with_plugin_site):
    import sqlalchemy as sa

    from pacsd.index.plugin_tables import migrate_plugin, plugin_versions
    from pacsd.plugin_api import Migration, PluginSchema
    from pacsd_share import links as L

    v1 = sa.MetaData()
    for table in (L.links, L.sessions):                   # version 1: no focus column
        table.to_metadata(v1)
    v1.tables["share_links"]._columns.remove(v1.tables["share_links"].c.focus)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'v1.db'}")
    migrate_plugin(engine, PluginSchema("share", v1, (Migration(1, "v1", v1.create_all),)))
    assert "focus" not in {c["name"] for c in sa.inspect(engine).get_columns("share_links")}
    assert migrate_plugin(engine, L.SCHEMA) == 3
    assert "focus" in {c["name"] for c in sa.inspect(engine).get_columns("share_links")}
    assert {"share_enrolments", "share_service", "share_feedback"} <= set(
        sa.inspect(engine).get_table_names())                 # version 3 (R-C3, R-C9)
    assert plugin_versions(engine) == {"share": 3}
    with engine.begin() as conn:
        token, link = L.create_link(conn, kind="exam", patient_id="P", studies=["1.2"],
                                    hidden=[], factor_kind="phone", factor_value="1234",
                                    created_by="t", ttl_s=60, focus={"series": "1", "sop": "2"})
    with engine.connect() as conn:
        assert L.link_by_token(conn, token).focus == {"series": "1", "sop": "2"}

