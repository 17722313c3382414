"""Fixtures for the durability tests (R-A6; reliability-matrix FT-3..FT-9, FT-13): an
archive whose store has three copies (two local directories and one more), real ingest
through the service layer, and ways to damage one copy behind pacsd's back."""
from __future__ import annotations

import uuid

import pytest

from pacsd.config import Settings
from pacsd.services import Archive, IngestService, StagedFile
from pacsd.services.security import LOCAL
from pacsd.store.local import LocalBlobStore


def three_copy_settings(tmp_path, third: dict | None = None) -> Settings:
    s = Settings()
    s.server.data_dir = str(tmp_path / "data")
    s.server.worker_threads = 4
    s.storage.copies = [{"url": str(tmp_path / "copy-a")}, {"url": str(tmp_path / "copy-b")},
                        third or {"url": f"memory://pacsd-dur-{uuid.uuid4().hex}"}]
    return s


@pytest.fixture
def settings(tmp_path) -> Settings:
    return three_copy_settings(tmp_path)


@pytest.fixture
def archive(settings):
    a = Archive.open(settings)
    try:
        yield a
    finally:
        a.close()


async def ingest(archive: Archive, data: bytes) -> str:
    """Store ``data`` through the one ingest path; return its sha256."""
    with archive.store.new_staging_file() as w:
        w.write(data)
        path, sha, size = w.finish()
    outcome = await IngestService(archive).ingest(StagedFile(path, sha, size), actor=LOCAL)
    assert outcome.created
    return sha


def object_path(root, sha: str) -> str:
    return LocalBlobStore(str(root)).local_path(sha)  # the store's own layout
