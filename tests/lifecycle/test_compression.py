"""Lossless compression at ingest (R-A5; reliability-matrix §3 target 4): applied only to
uncompressed images, only when it saves space, verified pixel-identical; frames decode
to the received pixels; transfer-syntax=* returns the stored form; re-sends stay
idempotent (BI-25); the space saved is reported."""
from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from pacsd.dicom.testing import make_instance
from pacsd.services.security import LOCAL
from pacsd.services import IngestService, RetrieveService, StagedFile
from pacsd.services.compression import compression_report

pytestmark = pytest.mark.asyncio
EXPLICIT = "1.2.840.10008.1.2.1"


async def put(archive, data: bytes):
    with archive.store.new_staging_file() as w:
        w.write(data)
        path, sha, size = w.finish()
    return await IngestService(archive).ingest(StagedFile(path, sha, size), actor=LOCAL)


def pixels(data: bytes) -> np.ndarray:
    return pydicom.dcmread(io.BytesIO(data)).pixel_array


@pytest.mark.parametrize("policy,ts", [("jpeg-ls-lossless", "1.2.840.10008.1.2.4.80"),
                                       ("jpeg2000-lossless", "1.2.840.10008.1.2.4.90")])
async def test_R_A5_compressed_when_smaller_pixels_identical(archive, policy, ts):
    archive.settings.storage.compress = policy
    data = make_instance(rows=64, columns=64, frames=2)   # a smooth ramp: compresses well
    out = await put(archive, data)
    assert out.created
    retrieve = RetrieveService(archive)
    row = (await retrieve.instances(out.study_instance_uid, actor=LOCAL))[0]
    assert row.transfer_syntax_uid == ts and row.size < len(data)
    stored = b"".join([c async for c in retrieve.object_chunks(row, "*")])
    assert pydicom.dcmread(io.BytesIO(stored)).file_meta.TransferSyntaxUID == ts
    assert np.array_equal(pixels(stored), pixels(data))             # bit-exact
    served_ts, frames = await retrieve.frames(row, [1, 2], EXPLICIT)
    original = pydicom.dcmread(io.BytesIO(data)).PixelData
    assert served_ts == EXPLICIT and b"".join(frames) == original
    as_le = b"".join([c async for c in retrieve.object_chunks(row, EXPLICIT)])
    assert pydicom.dcmread(io.BytesIO(as_le)).PixelData == original
    report = compression_report(archive)
    assert report["instances_compressed"] == 1 and report["bytes_received"] == len(data)
    assert report["bytes_saved"] == len(data) - row.size > 0
    # Re-sending the received bytes is idempotent (same compressed object).
    again = await put(archive, data)
    assert not again.created
    assert archive.catalogue.counts()["instances"] == 1


async def test_R_A5_kept_as_received_when_not_smaller_or_not_native(archive):
    archive.settings.storage.compress = "jpeg-ls-lossless"
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 65536, size=(8, 8), dtype="<u2").tobytes()
    tiny = make_instance(rows=8, columns=8, pixel_bytes=noise)       # incompressible
    no_pixels = make_instance(pixels=False)
    for data in (tiny, no_pixels):
        out = await put(archive, data)
        row = (await RetrieveService(archive).instances(out.study_instance_uid, actor=LOCAL))[0]
        assert row.transfer_syntax_uid == EXPLICIT
        assert await RetrieveService(archive).read_verified(row) == data
    assert compression_report(archive)["instances_compressed"] == 0


async def test_BI25_resend_of_an_instance_stored_before_compression_was_on(archive):
    data = make_instance(rows=64, columns=64)
    assert (await put(archive, data)).created                        # policy "none"
    archive.settings.storage.compress = "jpeg2000-lossless"
    again = await put(archive, data)
    assert not again.created                                         # no duplicate 409
    row = (await RetrieveService(archive).instances(again.study_instance_uid, actor=LOCAL))[0]
    assert row.transfer_syntax_uid == EXPLICIT


async def test_compress_setting_is_validated(tmp_path):
    from pacsd.config import ConfigError, load_settings
    f = tmp_path / "c.toml"
    f.write_text('[storage]\ncompress = "jpeg-lossy"\n')
    with pytest.raises(ConfigError):
        load_settings(f)
