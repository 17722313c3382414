"""The one ingest path run in the caller's thread (``IngestService.ingest_bytes_sync`` /
``ingest_sync``: what a DIMSE association thread calls, issue 6): same bytes stored bit
for bit, same index rows, durable before it returns, a refused instance leaves nothing
(no blob, no row, no staging file), and many threads at once lose nothing."""
from __future__ import annotations

import hashlib
import os
import threading

import pytest

from pacsd import errors
from pacsd.config import Settings
from pacsd.services import Archive, IngestService, StagedFile
from pacsd.services.security import LOCAL
from tests.dicomgen import make_dataset, make_instance, to_part10


@pytest.fixture
def archive(tmp_path):
    s = Settings()
    s.server.data_dir = str(tmp_path / "data")
    s.server.worker_threads = 4
    a = Archive.open(s)
    try:
        yield a
    finally:
        a.close()


def blob_files(a: Archive) -> list[str]:
    root = os.path.join(a.settings.data_path, "blobs", "objects")
    return sorted(f for _, _, fs in os.walk(root) for f in fs if len(f) == 64)


def staging_files(a: Archive) -> list[str]:
    return os.listdir(a.store.staging_dir())


def test_bytes_round_trip_bit_exact_and_rows_right(archive):
    svc = IngestService(archive)
    data = make_instance(study="1.2.3.1", series="1.2.3.1.1", sop="1.2.3.1.1.1")
    out = svc.ingest_bytes_sync(data, actor=LOCAL)
    assert out.created and out.sop_instance_uid == "1.2.3.1.1.1"
    sha = hashlib.sha256(data).hexdigest()
    assert archive.store.read(sha) == data  # verified read, bit for bit
    row = archive.catalogue.get_instance("1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.1")
    assert row is not None and row.sha256 == sha and row.size == len(data)
    assert row.digest and row.digest.startswith("xxh3-128:")
    assert archive.catalogue.counts() == {"patients": 1, "studies": 1, "series": 1,
                                          "instances": 1}
    again = svc.ingest_bytes_sync(data, actor=LOCAL)  # BI-25: idempotent
    assert not again.created
    assert blob_files(archive) == [sha] and staging_files(archive) == []


def test_staged_file_in_thread(archive):
    svc = IngestService(archive)
    data = make_instance(study="1.2.3.2", series="1.2.3.2.1", sop="1.2.3.2.1.1")
    with archive.store.new_staging_file() as w:
        w.write(data)
        path, sha, size = w.finish()
    out = svc.ingest_sync(StagedFile(path, sha, size, w.digest), actor=LOCAL)
    assert out.created and archive.store.read(sha) == data
    assert not os.path.exists(path)


@pytest.mark.parametrize("bad,error", [
    (b"not dicom at all", errors.InvalidDicom),
    (to_part10(make_dataset(study="1.2.3.3", sop="1.2.3.3.1.x")), errors.InvalidUID),
])
def test_refused_leaves_nothing(archive, bad, error):
    svc = IngestService(archive)
    with pytest.raises(error):
        svc.ingest_bytes_sync(bad, actor=LOCAL)
    assert blob_files(archive) == [] and staging_files(archive) == []
    assert archive.catalogue.counts()["instances"] == 0


def test_duplicate_with_other_content_keeps_the_original(archive):
    svc = IngestService(archive)
    first = make_instance(study="1.2.3.4", series="1.2.3.4.1", sop="1.2.3.4.1.1", seed=1)
    other = make_instance(study="1.2.3.4", series="1.2.3.4.1", sop="1.2.3.4.1.1", seed=2)
    svc.ingest_bytes_sync(first, actor=LOCAL)
    with pytest.raises(errors.DuplicateInstance):
        svc.ingest_bytes_sync(other, actor=LOCAL)
    assert blob_files(archive) == [hashlib.sha256(first).hexdigest()]
    assert staging_files(archive) == []


@pytest.mark.timeout(120)
def test_many_threads_at_once_lose_nothing(archive):
    svc = IngestService(archive)
    items = [make_instance(study=f"1.2.4.{i % 3}", series=f"1.2.4.{i % 3}.1",
                           sop=f"1.2.4.{i % 3}.1.{i}", seed=i) for i in range(48)]
    errs: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(k: int) -> None:
        barrier.wait()
        for data in items[k::8]:
            try:
                assert svc.ingest_bytes_sync(data, actor=LOCAL).created
            except BaseException as e:  # noqa: BLE001
                errs.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errs == []
    assert archive.catalogue.counts() == {"patients": 1, "studies": 3, "series": 3,
                                          "instances": 48}
    for data in items:
        assert archive.store.read(hashlib.sha256(data).hexdigest()) == data
