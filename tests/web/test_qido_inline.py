"""R-H1 (issue 6): QIDO-RS answers are the same bytes whether the SQL ran on the event
loop (SQLite, within its deadline), was interrupted there and ran on the worker pool, or
had too many rows to be built on the loop."""
from __future__ import annotations

import pytest
from dicomgen import make_dataset, to_part10

from pacsd.index import qido_dbapi
from pacsd.services import query

pytestmark = pytest.mark.asyncio


async def test_R_H1_inline_interrupted_and_pool_answers_agree(client, stow, monkeypatch):
    r = await stow([to_part10(make_dataset(PatientID="P7", StudyDate=f"2025020{d}",
                                           PatientName=f"Smith^N{d}")) for d in range(1, 4)])
    assert r.status == 200, await r.text()
    urls = ["/dicom-web/studies?PatientID=P7", "/dicom-web/studies?PatientName=Smi*&limit=2",
            "/dicom-web/series?PatientID=P7", "/dicom-web/instances?limit=1&offset=1"]

    async def answers():
        out = []
        for url in urls:
            resp = await client.get(url)
            assert resp.status == 200
            out.append((await resp.read(), resp.headers["X-Total-Count"],
                        resp.headers.getall("Warning", [])))
        return out

    seen = []
    real = qido_dbapi.fetch_inline
    monkeypatch.setattr(qido_dbapi, "fetch_inline", lambda *a, **k: seen.append(
        real(*a, **k)) or seen[-1])
    inline = await answers()
    assert all(f is not None for f in seen) and len(seen) == len(urls)  # on the loop
    monkeypatch.setattr(query, "INLINE_ROWS", 0)  # rows built on the pool
    assert await answers() == inline
    monkeypatch.setattr(qido_dbapi, "INLINE_BUDGET_S", 1e-9)  # interrupted: SQL on the pool
    monkeypatch.setattr(qido_dbapi, "PROGRESS_STEPS", 1)
    seen.clear()
    assert await answers() == inline
    assert seen == [None] * len(urls)
