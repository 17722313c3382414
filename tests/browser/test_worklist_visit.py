"""The worklist's visit search in a real browser (R-D2, issue 8 item 1): visit number,
card number, ordering department, visit type, body part sorted by pacsd (``orderby``),
paging over X-Total-Count, thumbnails. Headless chromium against a real ``pacsd serve``
holding the five studies of ``dicomgen.worklist_studies`` (HL7 patient classes in
RouteOfAdmissions, AdmissionID, RequestingService, OtherPatientIDsSequence)."""
from __future__ import annotations

import pytest
from pacsd_server import Server

from dicomgen import to_part10, worklist_studies
from viewerdata import shot, stow

ALL = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory, viewer_dist):
    """This module's pacsd (overrides conftest's): only the five worklist studies."""
    data = tmp_path_factory.mktemp("pacsd-worklist")
    conf = data / "pacsd.toml"
    conf.write_text(f'[server]\nviewer_dir = "{viewer_dist}"\n')
    srv = Server(str(data), "--config", str(conf))
    try:
        stow(srv.url, [to_part10(ds) for ds in worklist_studies().values()])
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def wpage(page, server):
    """conftest's chromium page on the worklist, once all five studies are listed."""
    page.goto(server.url + "/viewer/")
    page.wait_for_function(f"document.querySelector('#status').dataset.total === '{ALL}'")
    return page


def _wait_search(page, action) -> tuple[int, list[str]]:
    """Run ``action`` and wait for the answer of the search it starts (a sort change first
    re-sorts the page shown, then shows pacsd's answer: wait for that one)."""
    before = page.get_attribute("#status", "data-search")
    action()
    page.wait_for_function("b => document.querySelector('#status').dataset.search !== b",
                           arg=before)
    return (int(page.get_attribute("#status", "data-total")),
            page.locator("#studies tbody td.name").all_inner_texts())


def search(page, **fields) -> tuple[int, list[str]]:
    _wait_search(page, lambda: page.click('#search button[type="reset"]'))
    for name, v in fields.items():
        if name == "visitType":
            page.select_option('#search select[name="visitType"]', v)
        else:
            page.fill(f'#search [name="{name}"]', v)
    return _wait_search(page, lambda: page.click('#search button[type="submit"]'))


def test_RD2_worklist_visit_fields_find_the_right_studies(wpage):
    assert search(wpage, visitType="inpatient") == (2, ["Zhao, Liu", "Li, Lei"])
    assert wpage.locator("#studies tbody td.visit .vtype").all_inner_texts() \
        == ["inpatient", "inpatient"]
    assert search(wpage, visitType="emergency") == (1, ["Wang, Wu"])
    assert search(wpage, visitNumber="ZY2025001") == (1, ["Li, Lei"])
    assert wpage.inner_text("#studies tbody td.visit .vno") == "ZY2025001"
    assert search(wpage, cardNumber="CARD-002") == (1, ["Zhang, San"])
    # Department: contains (*text*), case-sensitive as QIDO-RS matches LO values.
    assert search(wpage, department="cardio") == (0, [])
    assert search(wpage, department="Cardio") == (2, ["Zhao, Liu", "Li, Lei"])
    assert wpage.locator("#studies tbody td.dept").all_inner_texts() == ["Cardiology"] * 2
    assert search(wpage, department="Cardio", visitType="inpatient",
                  dateFrom="2025-03-01") == (1, ["Zhao, Liu"])
    assert search(wpage, bodyPart="knee") == (1, ["Zhang, San"])
    shot(wpage, "worklist-visit-search")
    assert wpage.errors == []


def test_RD2_worklist_server_sort_by_body_part_with_paging(wpage):
    wpage.select_option("#pagesize", "10")
    wpage.wait_for_function(f"document.querySelector('#status').dataset.total === '{ALL}'")
    total, names = _wait_search(wpage, lambda: wpage.select_option("#sort", "bodyPart:asc"))
    assert total == ALL
    assert wpage.locator("#studies tbody td.bodypart").all_inner_texts() \
        == ["ABDOMEN", "CHEST", "HEAD", "KNEE", ""]
    # Paging keeps pacsd's order across pages: two per page (the page size select has
    # 10 as its smallest choice, so add a 2 for the test).
    wpage.evaluate("""() => { const s = document.getElementById('pagesize');
        s.add(new Option('2', '2')); }""")
    _wait_search(wpage, lambda: wpage.select_option("#pagesize", "2"))
    assert wpage.inner_text("#status") == f"1–2 of {ALL} studies"
    assert wpage.locator("#studies tbody td.bodypart").all_inner_texts() == ["ABDOMEN", "CHEST"]
    _wait_search(wpage, lambda: wpage.click("#next"))
    assert wpage.locator("#studies tbody td.bodypart").all_inner_texts() == ["HEAD", "KNEE"]
    assert wpage.inner_text("#status") == f"3–4 of {ALL} studies"
    total, names = _wait_search(wpage, lambda: wpage.select_option("#sort", "visitType:asc"))
    assert (total, names) == (ALL, ["Wang, Wu", "Zhao, Liu"])  # emergency, then inpatients
    assert wpage.inner_text("#pageno") == "page 1 / 3"
    total, names = _wait_search(wpage, lambda: wpage.select_option("#sort", "name:asc"))
    assert names == ["Li, Lei", "Qian, Qi"]
    assert wpage.errors == []


def test_RD2_worklist_rows_show_thumbnails(wpage):
    wpage.wait_for_function(
        "() => [...document.querySelectorAll('#studies tbody tr')].every(tr => {"
        " const i = tr.querySelector('img.thumb'); return i && i.complete && i.naturalWidth > 0; })",
        timeout=30000)
    assert wpage.locator("#studies tbody img.thumb").count() == ALL
    shot(wpage, "worklist-visit")
