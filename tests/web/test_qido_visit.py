"""QIDO-RS worklist keys (R-D2, issue 8 item 1): visit / card numbers, ordering
department, visit type, study-level body part, server-side ``orderby`` with paging and
X-Total-Count, through the real HTTP adapter on a SQLite index (the SQL is also run on
PostgreSQL in tests/index/test_worklist_index.py)."""
from __future__ import annotations

import pytest
from dicomgen import make_dataset, to_part10, worklist_studies

pytestmark = pytest.mark.asyncio

VISIT_NUMBER, CARD, DEPT, VTYPE = "00771001", "00771002", "00771003", "00771004"


@pytest.fixture
async def visits(stow):
    data = worklist_studies()
    r = await stow([to_part10(d) for d in data.values()])
    assert r.status == 200, await r.text()
    return {k: d.StudyInstanceUID for k, d in data.items()}


async def get(client, query: str, status: int = 200):
    r = await client.get(f"/dicom-web/studies?{query}")
    body = await r.json() if r.status == 200 else await r.text()
    assert r.status == status, body
    return body, r.headers


def names_of(visits, items) -> list[str]:
    by_uid = {v: k for k, v in visits.items()}
    return [by_uid[i["0020000D"]["Value"][0]] for i in items]


async def test_RD2_visit_type_matching_and_total(client, visits):
    items, headers = await get(client, "visittype=inpatient")
    assert sorted(names_of(visits, items)) == ["li", "zhao"]
    assert headers["X-Total-Count"] == "2"
    assert {i[VTYPE]["Value"][0] for i in items} == {"inpatient"}
    assert items[0]["00770010"]["Value"] == ["PACSD WORKLIST"]  # private creator
    items, _ = await get(client, "visittype=emergency,outpatient")
    assert sorted(names_of(visits, items)) == ["wang", "zhang"]
    items, _ = await get(client, "visittype=PHYSICAL-EXAM")  # values are case-insensitive
    assert items == []


async def test_RD2_visit_card_department_keys(client, visits):
    items, _ = await get(client, "visitnumber=ZY2025001&includefield=department")
    assert names_of(visits, items) == ["li"]
    assert items[0][VISIT_NUMBER]["Value"] == ["ZY2025001"]
    assert items[0][DEPT]["Value"] == ["Cardiology"]
    # The standard keyword the [worklist] settings read is the same key (alias).
    items, headers = await get(client, "AdmissionID=ZY2025*")
    assert sorted(names_of(visits, items)) == ["li", "zhao"]
    assert "Warning" not in headers
    assert {i["00380010"]["Value"][0] for i in items} == {"ZY2025001", "ZY2025009"}
    items, _ = await get(client, "cardnumber=CARD-002&includefield=cardnumber")
    assert names_of(visits, items) == ["zhang"]
    assert items[0][CARD]["Value"] == ["CARD-002"]
    items, _ = await get(client, "department=Cardio*")
    assert sorted(names_of(visits, items)) == ["li", "zhao"]
    items, _ = await get(client, "RequestingService=Cardiology&PatientID=P4")
    assert names_of(visits, items) == ["zhao"]
    items, _ = await get(client, "department=cardiology")  # case-sensitive, as LO is
    assert items == []


async def test_RD2_study_level_body_part_and_orderby(client, visits):
    items, headers = await get(client, "BodyPartExamined=KNEE")
    assert names_of(visits, items) == ["zhang"] and "Warning" not in headers
    assert items[0]["00180015"]["Value"] == ["KNEE"]
    items, _ = await get(client, "orderby=BodyPartExamined&includefield=BodyPartExamined")
    assert names_of(visits, items) == ["zhao", "li", "wang", "zhang", "qian"]  # NULL last
    items, _ = await get(client, "orderby=-BodyPartExamined")
    assert names_of(visits, items) == ["zhang", "wang", "li", "zhao", "qian"]
    items, _ = await get(client, "orderby=PatientName")
    assert names_of(visits, items) == ["li", "qian", "wang", "zhang", "zhao"]
    items, _ = await get(client, "orderby=StudyDate")
    assert names_of(visits, items) == ["li", "zhang", "wang", "zhao", "qian"]
    items, _ = await get(client, "orderby=ModalitiesInStudy,-StudyDate")
    assert names_of(visits, items) == ["qian", "wang", "li", "zhao", "zhang"]
    items, _ = await get(client, "orderby=visittype,PatientName&includefield=visittype")
    assert names_of(visits, items) == ["wang", "li", "zhao", "zhang", "qian"]
    # PatientID lives on the patient row, not the study's: sorted through it (a 500 before)
    items, _ = await get(client, "orderby=-PatientID")
    assert names_of(visits, items) == ["qian", "zhao", "wang", "zhang", "li"]
    items, headers = await get(client, "orderby=PatientID,-StudyDate&limit=2&offset=1")
    assert names_of(visits, items) == ["zhang", "wang"] and headers["X-Total-Count"] == "5"


async def test_RD2_paging_with_sort_keeps_the_total(client, visits):
    items, headers = await get(client, "orderby=PatientName&limit=2&offset=2")
    assert names_of(visits, items) == ["wang", "zhang"]
    assert headers["X-Total-Count"] == "5"
    items, headers = await get(client, "visittype=inpatient,outpatient&orderby=-StudyDate"
                                       "&limit=1&offset=1")
    assert names_of(visits, items) == ["zhang"] and headers["X-Total-Count"] == "3"


@pytest.mark.parametrize("query,reason", [
    ("visittype=daycare", "visittype: visit type is"),
    ("orderby=Shoe", "orderby keys are"),
    ("orderby=PatientName,PatientName", "orderby names PatientName twice"),
    ("visittype=inpatient&visittype=outpatient", "visittype given more than once"),
    ("AdmissionID=1&visitnumber=2", "visitnumber given more than once"),
    ("orderby=StudyDate&orderby=PatientName", "orderby given more than once"),
])
async def test_RD2_bad_values_are_400_with_reason(client, visits, query, reason):
    text, _ = await get(client, query, 400)
    assert reason in text
    assert "daycare" not in text and "Shoe" not in text  # values never echoed (SEC-23)


async def test_RD2_orderby_only_at_study_level(client, visits):
    r = await client.get("/dicom-web/series?orderby=PatientName")
    assert r.status == 400 and "study level" in await r.text()
    r = await client.get("/dicom-web/series?visittype=inpatient")
    assert r.status == 200 and "visittype" in r.headers.get("Warning", "")


async def test_RD2_configured_source_attributes(aiohttp_client, settings, tmp_path):
    """[worklist] sources: department from InstitutionalDepartmentName, card number from
    an attribute the parser does not pre-read (read from the stored metadata), a custom
    visit type map; the standard alias follows the setting."""
    from dicomgen import multipart
    from pacsd.web import create_app
    settings.worklist.department_attribute = "InstitutionalDepartmentName"
    settings.worklist.card_number_attribute = "PatientComments"
    settings.worklist.visit_type_map = {"MZ": "outpatient", "TJ": "physical-exam"}
    settings.worklist.visit_number_means_inpatient = False
    client = await aiohttp_client(create_app(settings))
    a = make_dataset(PatientName="A^A", InstitutionalDepartmentName="Radiology East",
                     PatientComments="VIP card 77", RouteOfAdmissions="tj",
                     RequestingService="Cardiology", AdmissionID="X1")
    b = make_dataset(PatientName="B^B", RouteOfAdmissions="I", AdmissionID="X2")
    body, ctype = multipart([to_part10(a), to_part10(b)])
    r = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert r.status == 200, await r.text()
    items, _ = await get(client, "InstitutionalDepartmentName=Radiology*"
                                 "&includefield=cardnumber,visittype")
    assert len(items) == 1 and items[0][CARD]["Value"] == ["VIP card 77"]
    assert items[0][VTYPE]["Value"] == ["physical-exam"]
    items, _ = await get(client, "department=Cardiology")  # not the configured source
    assert items == []
    items, headers = await get(client, "RequestingService=Cardiology")
    assert "RequestingService" in headers.get("Warning", "")  # no longer a visit key
    items, _ = await get(client, "visittype=inpatient")  # "I" is not in the custom map
    assert items == []


async def test_RD2_correction_of_admission_id_updates_the_visit_columns(client, visits):
    """R-A8 corrections may change AdmissionID: the visit number and the visit type derived
    from it follow (R-D2)."""
    study = visits["qian"]  # no visit data: unknown type
    r = await client.post(f"/api/v1/studies/{study}/corrections",
                          json={"changes": {"AdmissionID": "ZY2025077"},
                                "reason": "registration error"})
    assert r.status == 201, await r.text()
    items, _ = await get(client, "visitnumber=ZY2025077&includefield=visittype")
    assert names_of(visits, items) == ["qian"]
    assert items[0][VTYPE]["Value"] == ["inpatient"]
    items, _ = await get(client, "visittype=inpatient")
    assert sorted(names_of(visits, items)) == ["li", "qian", "zhao"]
