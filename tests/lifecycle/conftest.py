"""Fixtures for the lifecycle tests (export R-A11, retention R-A7, versions R-A8): an
archive with three copies (two local directories and fsspec memory), real ingest through
the one ingest path, a real SQLite catalogue, and a controllable clock."""
from __future__ import annotations

import uuid

import pytest

from pacsd.config import Settings
from pacsd.services import Archive, IngestService, StagedFile
from pacsd.services.security import LOCAL


def lifecycle_settings(tmp_path) -> Settings:
    s = Settings()
    s.server.data_dir = str(tmp_path / "data")
    s.server.worker_threads = 4
    s.storage.copies = [{"url": str(tmp_path / "copy-a")}, {"url": str(tmp_path / "copy-b")},
                        {"url": f"memory://pacsd-life-{uuid.uuid4().hex}"}]
    return s


@pytest.fixture
def settings(tmp_path) -> Settings:
    return lifecycle_settings(tmp_path)


@pytest.fixture
def archive(settings):
    a = Archive.open(settings)
    try:
        yield a
    finally:
        a.close()


class Clock:
    """A clock tests move by hand (never sleep): POSIX seconds."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def ingest(archive: Archive, data: bytes) -> str:
    with archive.store.new_staging_file() as w:
        w.write(data)
        path, sha, size = w.finish()
    outcome = await IngestService(archive).ingest(StagedFile(path, sha, size), actor=LOCAL)
    assert outcome.created
    return sha
