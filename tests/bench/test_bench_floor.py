"""The STOW floor server (benchmarks/floor.py, issue 6): it must really do the durable
minimum it claims (every part stored under its SHA-256, one index row per instance) and
answer what the driver verifies, or its numbers would be a floor of nothing."""
from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

from benchmarks import phases as P
from benchmarks.client import new_session
from benchmarks.dataset import DataSet
from benchmarks.floor import FloorProcess


def test_floor_stores_every_part_durably_and_answers_the_driver():
    ds = DataSet(1, ct_studies=1, ct_slices=1, tiny=12, stow_ct_batch=2)
    tiny = [(i, ds.build(i)) for i in ds.tiny_all()]
    ct = [(i, ds.build(i)) for i in ds.stow_ct("t")]
    floor = FloorProcess(workers=2)
    try:
        target = P.Target("floor", floor.url, pid=floor.pid)

        async def run():
            target.session = new_session(4)
            try:
                a = await P.stow(target, P.batched(tiny, 5), 3)
                b = await P.stow(target, P.batched(ct, 1), 2)
            finally:
                await target.session.close()
            return a, b

        for m in asyncio.run(run()):
            assert m.samples and not m.errors, m.errors[:1]
        data = Path(floor.tmp.name) / "data"
        with sqlite3.connect(data / "index.db") as db:
            rows = dict((sop, (sha, size)) for sop, sha, size in
                        db.execute("SELECT sop, sha256, size FROM instances"))
        assert set(rows) == {i.sop for i, _ in tiny + ct}
        for inst, body in tiny + ct:
            sha = hashlib.sha256(body).hexdigest()
            assert rows[inst.sop] == (sha, len(body))
            assert (data / "objects" / sha[:2] / sha).read_bytes() == body
        assert not list((data / "tmp").iterdir())
    finally:
        floor.stop()
