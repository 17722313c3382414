"""Writes are scoped like reads (R-A12, SEC-1, SEC-9, MLPS 7, 8): STOW-RS through the real
application on SQLite and PostgreSQL (C-STORE: tests/security/test_dimse_security.py).

An actor may store an instance only when the study — an existing study as recorded (its
institution, its labels), a new study as it would be (the institution computed from the
data, labels set in advance) — is inside the actor's scope. A refusal is per instance:
FailedSOPSequence item with FailureReason 0x0124 (Refused: Not authorized), 409 when
nothing was stored, 202 when some was; the answer is the same whether the study existed
(no existence leak); nothing of the refused instance stays (index row or blob); the
denial is audited as ``permission-denied``. Cross-hospital history
(``cross_institution_roles``) lets a radiologist read another hospital's priors but never
write into them.
"""
from __future__ import annotations

import orjson
import pytest
from dicomgen import make_dataset, multipart, to_part10
from sechelpers import make_settings, start_api

from pacsd.web.keys import ARCHIVE

ST = "/dicom-web/studies"
JSON = {"Accept": "application/dicom+json"}
MAP = {"Hospital A": "A", "Hospital B": "B"}
ROOT = "1.2.826.0.1.3680043.10.543.7"
FAILED, REFERENCED, REASON = "00081198", "00081199", "00081197"


def inst(study: int, n: int, institution: str, patient: str = "P1") -> bytes:
    return to_part10(make_dataset(study=f"{ROOT}.{study}", series=f"{ROOT}.{study}.1",
                                  sop=f"{ROOT}.{study}.1.{n}", InstitutionName=institution,
                                  PatientID=patient, seed=study * 100 + n))


async def stow(api, headers, *parts: bytes, study: str | None = None):
    body, ctype = multipart(list(parts))
    url = f"{ST}/{study}" if study else ST
    r = await api.client.post(url, data=body, headers={**headers, "Content-Type": ctype,
                                                       "Accept": "application/dicom+json"})
    return r.status, await r.json(), r.headers.getall("Warning", [])


def failed_reasons(body: dict) -> list[int]:
    return [i[REASON]["Value"][0] for i in body.get(FAILED, {}).get("Value", [])]


async def count(api, headers, study: int) -> int | None:
    r = await api.client.get(f"{ST}?StudyInstanceUID={ROOT}.{study}",
                             headers={**headers, **JSON})
    items = await r.json() if r.status == 200 else []
    return items[0]["00201208"]["Value"][0] if items else None


@pytest.fixture
async def api(aiohttp_client, tmp_path, clock, db_url):
    settings = make_settings(tmp_path, db_url, institution_map=dict(MAP),
                             cross_institution_roles=["radiologist"])
    return await start_api(aiohttp_client, settings, clock)


async def test_RA12_SEC1_stow_only_into_the_actors_institutions(api):
    ops = await api.session("ops", "sysadmin")           # default_institutions ["*"]
    assert (await stow(api, ops, inst(1, 1, "Hospital A"), inst(2, 1, "Hospital B")))[0] == 200
    api.user("dr-a", "radiologist")
    api.security.set_user_scope("dr-a", ["A"], [])
    a = {"Authorization": f"Bearer {await api.login('dr-a')}"}
    # Cross-hospital history: dr-a reads B's study of the same patient (R-A12) ...
    assert await count(api, a, 2) == 1
    store = api.app[ARCHIVE].store
    blobs = set(store.iter_keys())

    # In scope: a new instance of A's study, and a new study computed to be A's.
    assert (await stow(api, a, inst(1, 2, "Hospital A")))[0] == 200
    assert (await stow(api, a, inst(3, 1, "Hospital A")))[0] == 200
    blobs = set(store.iter_keys())
    # ... but cannot append to it: 409, FailureReason 0x0124, nothing written.
    existing = await stow(api, a, inst(2, 2, "Hospital A"))  # data says A: the study is B's
    assert existing[0] == 409 and failed_reasons(existing[1]) == [0x0124]
    assert REFERENCED not in existing[1]
    # A new study whose data makes it B's: refused with the very same answer, so the
    # refusal does not tell whether a study exists (SEC-9).
    new = await stow(api, a, inst(4, 1, "Hospital B"))
    assert new[0] == 409 and failed_reasons(new[1]) == [0x0124]
    strip = [w.replace(f"{ROOT}.2", "X").replace(f"{ROOT}.4", "X") for w in existing[2]]
    assert strip == [w.replace(f"{ROOT}.4", "X") for w in new[2]]
    assert "outside" in existing[2][0]
    # The URL form of STOW behaves the same.
    url_form = await stow(api, a, inst(2, 3, "Hospital B"), study=f"{ROOT}.2")
    assert url_form[0] == 409 and failed_reasons(url_form[1]) == [0x0124]
    assert await count(api, ops, 2) == 1 and await count(api, ops, 4) is None
    assert set(store.iter_keys()) == blobs  # no blob left behind

    # Mixed request: the part in scope is stored, the other refused: 202.
    status, body, _ = await stow(api, a, inst(1, 3, "Hospital A"), inst(2, 4, "Hospital B"))
    assert status == 202 and failed_reasons(body) == [0x0124]
    assert len(body[REFERENCED]["Value"]) == 1
    assert await count(api, ops, 1) == 3 and await count(api, ops, 2) == 1

    # An unscoped actor ("*") stores anywhere, as before.
    assert (await stow(api, ops, inst(2, 5, "Hospital B")))[0] == 200
    assert await count(api, ops, 2) == 2

    # Every denial is audited with the study (for the auditor; never in the answer).
    denied = await api.events(event_type="permission-denied", actor_name="dr-a")
    assert sorted((e["study_uid"], e["object_count"]) for e in denied) == [
        (f"{ROOT}.2", 1), (f"{ROOT}.2", 1), (f"{ROOT}.2", 1), (f"{ROOT}.4", 1)]
    for e in denied:
        detail = orjson.loads(e["detail"])
        assert (detail["action"], detail["reason"], e["outcome"]) == (
            "write", "outside data scope", "denied")


async def test_RA12_MLPS8_labelled_study_cannot_be_appended_without_clearance(api):
    ops = await api.session("ops", "sysadmin")
    assert (await stow(api, ops, inst(5, 1, "Hospital A")))[0] == 200
    api.security.set_study_labels(f"{ROOT}.5", ["VIP"])
    api.security.set_study_labels(f"{ROOT}.6", ["VIP"])  # labelled before it arrives
    api.user("dr-a", "radiologist")
    api.security.set_user_scope("dr-a", ["A"], [])
    api.user("dr-vip", "radiologist")
    api.security.set_user_scope("dr-vip", ["A"], ["VIP"])
    a = {"Authorization": f"Bearer {await api.login('dr-a')}"}
    vip = {"Authorization": f"Bearer {await api.login('dr-vip')}"}
    for study in (5, 6):  # existing labelled study, and a new one labelled in advance
        status, body, _ = await stow(api, a, inst(study, 2, "Hospital A"))
        assert status == 409 and failed_reasons(body) == [0x0124], study
        assert (await stow(api, vip, inst(study, 3, "Hospital A")))[0] == 200
    assert await count(api, vip, 5) == 2 and await count(api, vip, 6) == 1
    # The sysadmin has no clearance either (MLPS 8): labels bind writes too.
    status, body, _ = await stow(api, ops, inst(5, 4, "Hospital A"))
    assert status == 409 and failed_reasons(body) == [0x0124]


async def test_RA12_local_operator_unscoped_without_security(aiohttp_client, tmp_path, clock):
    settings = make_settings(tmp_path, enabled=False, institution_map=dict(MAP),
                             default_institutions=[])
    api = await start_api(aiohttp_client, settings, clock)
    status, _, _ = await stow(api, {}, inst(7, 1, "Hospital A"), inst(8, 1, "Hospital B"))
    assert status == 200
