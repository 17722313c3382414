"""The scrubber over a three-copy archive (R-A6; reliability-matrix §3 target 3, FT-5,
FT-6, FT-7, FT-8, FT-9, FT-13). Objects are ingested through the real ingest path into a
real SQLite index and real copies (two local directories + fsspec memory); damage is done
behind pacsd's back, the way a failing disk or an operator would."""
from __future__ import annotations

import hashlib
import os
from io import BytesIO

import pydicom
import pytest
from dicomgen import make_instance

from pacsd.errors import DataUnavailable
from pacsd.services import RetrieveService
from pacsd.services.scrub import ORPHAN, Scrubber
from pacsd.store.replicated import CopyState, check_copy

from .conftest import ingest

pytestmark = pytest.mark.asyncio

# Fixed UIDs: instances of equal size, so one can replace another (FT-6 "other valid DICOM").
STUDY, SERIES = "1.2.826.0.1.3680043.9.7.2", "1.2.826.0.1.3680043.9.7.3"


def put_raw(copy, sha: str, data: bytes | None) -> None:
    """Replace (or with None, delete) one copy's object without going through pacsd."""
    path = copy.local_path(sha)
    key = None if path else f"{copy.root}/objects/{sha[:2]}/{sha[2:4]}/{sha}"
    if data is None and path:
        os.unlink(path)
    elif data is None:
        copy.fs.rm_file(key)
    elif path:
        with open(path, "wb") as f:
            f.write(data)
    else:
        copy.fs.pipe_file(key, data)


def states(archive, sha: str, size: int) -> list[CopyState]:
    return [check_copy(c, sha, size) for c in archive.store.copies]


async def stored(archive, n: int = 3) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        data = make_instance(seed=i, study=STUDY, series=SERIES,
                             sop=f"1.2.826.0.1.3680043.9.7.1.{i}")
        out.append((await ingest(archive, data), data))
    return out


async def test_all_copies_ok(archive):
    await stored(archive, 4)
    report = Scrubber(archive.store, archive.catalogue, orphan_grace_s=0).run()
    assert report.ok and report.complete
    assert report.objects == 4 and report.counts == {"OK": 12}
    assert report.orphans == 0 and not report.findings


@pytest.mark.parametrize("copy", [0, 1, 2])
async def test_FT5_deleted_copy_reported_missing_and_repaired(archive, copy):
    (sha, data), *_ = await stored(archive)
    put_raw(archive.store.copies[copy], sha, None)
    # The read path serves another copy with the hash checked.
    archive.store.repair_on_read = False
    assert await RetrieveService(archive).read_verified(_row(archive, data)) == data
    report = Scrubber(archive.store, archive.catalogue).run()
    assert not report.ok and report.counts["MISSING"] == 1
    assert [(f.sha256, f.copy_url, f.state) for f in report.findings] == [
        (sha, archive.store.copies[copy].url, "MISSING")]
    report = Scrubber(archive.store, archive.catalogue, repair=True).run()
    assert report.ok and report.repairs == 1 and report.findings[0].repaired
    assert states(archive, sha, len(data)) == [CopyState.OK] * 3
    assert Scrubber(archive.store, archive.catalogue).run().counts == {"OK": 9}


async def _same_size_other_dicom(data: bytes) -> bytes:
    other = make_instance(seed=99, study=STUDY, series=SERIES,
                          sop="1.2.826.0.1.3680043.9.7.1.9")
    assert len(other) == len(data) and other != data
    return other


@pytest.mark.parametrize("damage", ["bitflip", "truncate", "other_valid_dicom"])
@pytest.mark.parametrize("copy", [0, 2])
async def test_FT6_damaged_copy_never_served_and_repaired(archive, damage, copy):
    (sha, data), *_ = await stored(archive, 1)
    bad = {"bitflip": data[:300] + bytes([data[300] ^ 0x10]) + data[301:],
           "truncate": data[:-100],
           "other_valid_dicom": await _same_size_other_dicom(data)}[damage]
    put_raw(archive.store.copies[copy], sha, bad)
    archive.store.repair_on_read = False
    # The read path (whole object, verified) serves the good bytes from another copy.
    got = b"".join([c async for c in RetrieveService(archive).object_chunks(
        _row(archive, data), "*")])
    assert got == data
    report = Scrubber(archive.store, archive.catalogue).run()
    expected = "DIFFERING_SIZE" if damage == "truncate" else "DIFFERING_CHECKSUM"
    assert report.counts[expected] == 1 and not report.ok
    assert report.findings[0].state == expected
    report = Scrubber(archive.store, archive.catalogue, repair=True).run()
    assert report.ok and report.repairs == 1
    assert states(archive, sha, len(data)) == [CopyState.OK] * 3


def _row(archive, data: bytes):
    ds = pydicom.dcmread(BytesIO(data))
    return archive.catalogue.get_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                          ds.SOPInstanceUID)


async def test_FT7_two_bad_one_good_hash_decides(archive):
    (sha, data), *_ = await stored(archive, 1)
    other = await _same_size_other_dicom(data)
    put_raw(archive.store.copies[0], sha, other)  # two copies agree on the wrong bytes
    put_raw(archive.store.copies[1], sha, other)
    report = Scrubber(archive.store, archive.catalogue, repair=True).run()
    assert report.counts == {"OK": 1, "DIFFERING_CHECKSUM": 2}
    assert report.ok and report.repairs == 2
    for c in archive.store.copies:
        assert hashlib.sha256(c.read(sha)).hexdigest() == sha
    assert all("rewritten from memory://" in f.detail for f in report.findings)


async def test_FT8_all_copies_bad_unrepairable(archive):
    (sha, data), *_ = await stored(archive)
    put_raw(archive.store.copies[0], sha, data[:-1] + b"X")
    put_raw(archive.store.copies[1], sha, None)
    put_raw(archive.store.copies[2], sha, data[:10])
    with pytest.raises(DataUnavailable):
        await RetrieveService(archive).read_verified(_row(archive, data))
    report = Scrubber(archive.store, archive.catalogue, repair=True).run()
    assert report.unrepairable == 1 and report.repairs == 0 and report.remaining == 3
    assert not report.ok
    assert {f.state for f in report.findings} == {"DIFFERING_CHECKSUM", "MISSING",
                                                  "DIFFERING_SIZE"}
    assert all(f.detail == "no valid copy to repair from" for f in report.findings)
    assert "objects without any valid copy: 1" in report.summary()


async def test_FT9_orphans_and_missing_objects(archive):
    (sha, data), *_ = await stored(archive, 2)
    orphan = archive.store.put_bytes(b"bytes no instance row refers to")
    for c in archive.store.copies:  # index row whose object is gone everywhere
        put_raw(c, sha, None)
    report = Scrubber(archive.store, archive.catalogue, repair=True,
                      orphan_grace_s=0).run()
    assert report.counts["MISSING"] == 3 and report.unrepairable == 1
    orphans = [f for f in report.findings if f.state == ORPHAN]
    assert report.orphans == 3
    assert {(f.sha256, f.copy_url) for f in orphans} == {
        (orphan, c.url) for c in archive.store.copies}
    assert archive.store.exists(orphan)  # reported, never deleted (FT-9)
    # Inside the grace period an unreferenced object may be an upload about to commit.
    report = Scrubber(archive.store, archive.catalogue, orphan_grace_s=3600).run()
    assert report.orphans == 0 and report.orphans_recent == 3


async def test_orphans_do_not_fail_the_run(archive):
    await stored(archive, 1)
    archive.store.put_bytes(b"left over by a failed write")
    report = Scrubber(archive.store, archive.catalogue, orphan_grace_s=0).run()
    assert report.orphans == 3 and report.ok


async def test_FT13_resumable_with_checkpoints(archive):
    objs = await stored(archive, 5)
    put_raw(archive.store.copies[1], objs[4][0], None)
    seen = []
    first = Scrubber(archive.store, archive.catalogue).run(checkpoint=seen.append, limit=2)
    assert not first.complete and first.objects == 2 and seen[-1] == first.last_pk
    rest = Scrubber(archive.store, archive.catalogue).run(first.last_pk)
    assert rest.complete and rest.objects == 3 and rest.counts["MISSING"] == 1
    progress = []
    Scrubber(archive.store, archive.catalogue,
             progress=lambda *a: progress.append(a)).run()
    assert ("objects", 5, 5) in progress and progress[-1][0] == "orphans"


async def test_FT13_cli_resume_from_checkpoint(archive, settings, capsys):
    """``pacsd verify --resume`` continues after the pk saved by an interrupted run; a
    checkpoint written for other copies is ignored."""
    import json

    from pacsd.cli import main

    objs = await stored(archive, 4)
    put_raw(archive.store.copies[2], objs[0][0], None)  # before the checkpoint: not seen
    pks = [pk for pk, _, _ in archive.catalogue.iter_blobs()]
    argv = ["verify", "--data-dir", settings.server.data_dir, "--no-orphans"]
    argv += [x for c in settings.storage.copies for x in ("--store", c["url"])]
    state = settings.data_path / "verify.progress"
    state.write_text(json.dumps({"after_pk": pks[1],
                                 "copies": [c.url for c in archive.store.copies]}))
    assert main(argv + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert "objects checked: 2 on 3 copies" in out and not state.exists()
    state.write_text(json.dumps({"after_pk": pks[1], "copies": ["elsewhere"]}))
    assert main(argv + ["--resume"]) == 1  # other copies: starts over, finds the loss
    assert "objects checked: 4 on 3 copies" in capsys.readouterr().out
