"""R-H1 (issue 6 item 3): the Warning 299 and X-Total-Count of a QIDO-RS page whose total
was counted up to a bound (``qido_sql.COUNT_AHEAD``, set to 1 here), through the HTTP
adapter. The bound itself is tested on SQLite and PostgreSQL in
tests/index/test_qido_count_bound.py."""
from __future__ import annotations

import pytest
from dicomgen import make_dataset, to_part10

from pacsd.index import qido_sql

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def five(stow, monkeypatch):
    monkeypatch.setattr(qido_sql, "COUNT_AHEAD", 1)
    r = await stow([to_part10(make_dataset(PatientID="P9", StudyDate=f"2025010{d}"))
                    for d in range(1, 6)])
    assert r.status == 200, await r.text()


@pytest.mark.parametrize("query,total,warning", [
    ("limit=5", "5", None),                                   # exactly at the limit
    ("limit=4", "5", "There are 1 additional results"),       # one more: exact
    ("limit=3", "5", "There are more than 1 additional results"),  # reached 3 + 1 + 1
    ("limit=2", "4", "There are more than 1 additional results"),  # many more
    ("limit=1&offset=2", "5", "There are more than 1 additional results"),
    ("limit=2&offset=2", "5", "There are 1 additional results"),   # offset: exact
    ("limit=2&offset=4", "5", None),                          # the last page
    ("limit=0", "5", None),                                   # the number alone: exact
])
async def test_R_H1_warning_says_exact_or_more_than(client, five, query, total, warning):
    r = await client.get(f"/dicom-web/studies?PatientID=P9&{query}")
    assert r.status == 200
    assert r.headers["X-Total-Count"] == total
    got = [w for w in r.headers.getall("Warning", []) if "additional" in w]
    if warning is None:
        assert got == []
    else:
        assert got == [f'299 pacsd "{warning} that can be requested"']
