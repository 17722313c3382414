"""STOW-RS parts made durable one by one and indexed together (issue 6, R-H1): a
request's parts go to the index in one group commit, and still each part is stored or
refused on its own: a refused part (bad DICOM, BI-26 other content, BI-27 moved
instance) loses nothing of the parts before or after it, leaves no blob, and the
counters count exactly what was stored (reliability-matrix §6.1, §7.2)."""
from __future__ import annotations

import os

import pytest
from dicomgen import make_dataset, make_instance, to_part10
from pydicom.uid import generate_uid

from pacsd.web.keys import ARCHIVE

pytestmark = pytest.mark.asyncio

REF_SEQ, FAILED_SEQ, FAILURE_REASON = "00081199", "00081198", "00081197"


def referenced(body: dict) -> list[str]:
    return [item["00081155"]["Value"][0] for item in body.get(REF_SEQ, {}).get("Value", [])]


def failed(body: dict) -> list[tuple[str | None, int]]:
    return [(item.get("00081155", {}).get("Value", [None])[0],
             item[FAILURE_REASON]["Value"][0])
            for item in body.get(FAILED_SEQ, {}).get("Value", [])]


def blobs(client) -> set[str]:
    a = client.server.app[ARCHIVE]
    root = os.path.join(a.settings.data_path, "blobs", "objects")
    return {f for _, _, fs in os.walk(root) for f in fs if len(f) == 64}


async def study_counts(client, study: str) -> tuple[int, int]:
    r = await client.get(f"/dicom-web/studies?StudyInstanceUID={study}")
    item = (await r.json())[0]
    return item["00201206"]["Value"][0], item["00201208"]["Value"][0]


async def test_RH1_refused_parts_lose_nothing_before_or_after(stow, client):
    study = generate_uid()
    series = [generate_uid(), generate_uid()]
    first = make_dataset(study=study, series=series[0], seed=1)
    r = await stow([to_part10(first)])
    assert r.status == 200
    other = make_dataset(study=generate_uid(), seed=2)
    assert (await stow([to_part10(other)])).status == 200
    before = blobs(client)
    good = [make_instance(study=study, series=series[k % 2], InstanceNumber=k + 2,
                          seed=10 + k) for k in range(4)]
    changed = make_dataset(study=study, series=series[0], seed=1)
    changed.SOPInstanceUID = first.SOPInstanceUID
    changed.PatientComments = "other content"  # BI-26: same UID, other bytes
    moved = make_dataset(study=study, series=series[1], seed=3)
    moved.SOPInstanceUID = other.SOPInstanceUID  # BI-27: stored under another study
    parts = [good[0], b"not dicom", good[1], to_part10(changed), good[2],
             to_part10(moved), good[3]]
    r = await stow(parts)
    assert r.status == 202, await r.text()
    body = await r.json()
    assert len(referenced(body)) == 4
    assert failed(body) == [(None, 0xC000),  # unparsable: no UIDs to name
                            (first.SOPInstanceUID, 0x0111),  # BI-26
                            (other.SOPInstanceUID, 0xC410)]  # BI-27
    warnings = r.headers.getall("Warning")
    assert [w.split(":")[0].split()[-1] for w in warnings] == ["2", "4", "6"]
    # Exactly the good parts were added: counters and blobs.
    assert await study_counts(client, study) == (2, 5)
    after = blobs(client)
    assert len(after - before) == 4  # no blob of a refused part stays behind
    # The earlier instances are unchanged and the re-send of the first is idempotent.
    r = await stow([to_part10(first)] + good[:2])
    assert r.status == 200
    assert await study_counts(client, study) == (2, 5)


async def test_RH1_many_parts_committed_in_batches(stow, client):
    """More parts than one group takes (COMMIT_BATCH): all stored, counters exact."""
    from pacsd.web.dicomweb import stow as stow_mod

    study, series = generate_uid(), generate_uid()
    n = stow_mod.COMMIT_BATCH + 7
    datas = [make_instance(study=study, series=series, InstanceNumber=i, seed=i,
                           rows=4, columns=4) for i in range(1, n + 1)]
    r = await stow(datas, study=study)
    assert r.status == 200, await r.text()
    assert len(referenced(await r.json())) == n
    assert await study_counts(client, study) == (1, n)


@pytest.mark.parametrize("n", [1, 3])
async def test_RH1_staged_parts_alone_or_together(stow, client, monkeypatch, n):
    """Parts spilled to staging files (over SMALL_PART) take the same two ways: the only
    part ingested whole, several prepared and indexed together; no staging file stays."""
    from pacsd.web.dicomweb import stow as stow_mod

    monkeypatch.setattr(stow_mod, "SMALL_PART", 1024)
    study, series = generate_uid(), generate_uid()
    datas = [make_instance(study=study, series=series, InstanceNumber=i, seed=i,
                           rows=32, columns=32) for i in range(1, n + 1)]
    assert all(len(d) > 1024 for d in datas)
    bad = [b"not dicom" * 200] if n > 1 else []  # refused, the others stored
    r = await stow(datas + bad)
    assert r.status == (202 if bad else 200), await r.text()
    assert len(referenced(await r.json())) == n
    assert await study_counts(client, study) == (1, n)
    a = client.server.app[ARCHIVE]
    assert os.listdir(a.store.staging_dir()) == []
