"""Fixtures for the DICOMweb adapter tests: a real pacsd app on an ephemeral port
(aiohttp's test server), a SQLite index and a local blob store in tmp_path."""
from __future__ import annotations

import pytest

from pacsd.config import Settings
from pacsd.web import create_app


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings()
    s.server.data_dir = str(tmp_path / "data")
    s.server.worker_threads = 4
    # These tests exercise DELETE itself; the retention veto (R-A7) has its own tests
    # in tests/lifecycle/.
    s.retention.enabled = False
    return s


@pytest.fixture
async def client(aiohttp_client, settings):
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def stow(client):
    """POST parts to /dicom-web/studies[/study]; returns the response."""
    from dicomgen import multipart

    async def _stow(parts: list[bytes], study: str | None = None, **kw):
        body, ctype = multipart(parts)
        url = "/dicom-web/studies" + (f"/{study}" if study else "")
        headers = {"Content-Type": ctype, "Accept": "application/dicom+json"}
        headers.update(kw.pop("headers", {}))
        return await client.post(url, data=body, headers=headers, **kw)

    return _stow
