"""Lossless compression at ingest (R-A5; reliability-matrix §3 target 4): ``[storage]
compress = "none" | "jpeg-ls-lossless" | "jpeg2000-lossless"``.

:func:`maybe_compress` runs on the ingest path between parsing and storing. An instance
received uncompressed (Explicit / Implicit VR Little Endian) with pixel data is
re-encoded with :func:`pacsd.dicom.transcode`, which decodes its own output and insists
on pixels identical to the received ones (and the same SOP Instance UID) before it
returns; a failure of any kind keeps the instance as received (never lossy, never
refused because of compression). The result replaces the staged file only when it is
smaller; it is then parsed again (frame offsets, bulk data) and stored and indexed like
any received object. Its sizes go to ``compressed_objects`` for the report
(:func:`compression_report`), counted only while an instance refers to the blob.

Idempotent re-sends (BI-25): when the SOP Instance UID is already stored with exactly
the received bytes (stored before compression was switched on), the instance is not
compressed, so the re-send stays the same instance instead of a conflicting duplicate.
"""
from __future__ import annotations

import logging
import os
import time

import sqlalchemy as sa

from ..dicom import parse_instance, transcode
from ..errors import PacsdError
from ..index.engine import translate_errors
from ..index.lifecycle_schema import compressed_objects
from ..index.schema import instances
from ..model import ParsedInstance
from ..store import hash_digests
from .archive import Archive

log = logging.getLogger(__name__)

TARGETS = {"jpeg-ls-lossless": "1.2.840.10008.1.2.4.80",
           "jpeg2000-lossless": "1.2.840.10008.1.2.4.90"}
NATIVE = frozenset({"1.2.840.10008.1.2.1", "1.2.840.10008.1.2"})


def maybe_compress(archive: Archive, staged, parsed: ParsedInstance):
    """(staged, parsed) to store: compressed in place when the policy says so and it
    saves space; otherwise the arguments unchanged. Blocking (ingest worker)."""
    target = TARGETS.get(archive.settings.storage.compress)
    if target is None or parsed.transfer_syntax_uid not in NATIVE or parsed.frames is None:
        return staged, parsed
    if _stored_as_received(archive, parsed.sop_instance_uid, staged.sha256):
        return staged, parsed
    try:
        out = transcode(staged.path, target,
                        max_pixels=archive.settings.dicomweb.render_max_pixels)
    except PacsdError as e:
        log.info("stored uncompressed: %s", e.reason)
        return staged, parsed
    if len(out) >= staged.size:
        return staged, parsed
    tmp = staged.path + ".z"
    try:
        with open(tmp, "wb") as fh:
            fh.write(out)
        del out
        os.replace(tmp, staged.path)  # same path: the caller's clean-up still applies
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    with open(staged.path, "rb") as fh:
        sha, size, digest = hash_digests(fh)
    new_parsed = parse_instance(staged.path)
    _record(archive, sha, staged.size, size, target)
    return type(staged)(staged.path, sha, size, digest), new_parsed


def _stored_as_received(archive: Archive, sop_uid: str, sha256: str) -> bool:
    with translate_errors("reading an instance"), archive.catalogue.engine.connect() as c:
        return c.scalar(sa.select(instances.c.sha256).where(
            instances.c.sop_instance_uid == sop_uid)) == sha256


def _record(archive: Archive, sha: str, received: int, stored: int, ts: str) -> None:
    def tx(conn: sa.Connection) -> None:
        if conn.scalar(sa.select(compressed_objects.c.pk)
                       .where(compressed_objects.c.sha256 == sha)) is None:
            conn.execute(sa.insert(compressed_objects).values(
                sha256=sha, received_size=received, stored_size=stored,
                transfer_syntax_uid=ts, created_at=time.time()))
    try:
        archive.catalogue.run_write("recording a compression", tx)
    except PacsdError:  # the report may miss it; the instance itself is unaffected
        log.warning("could not record a compressed object for the report")


def compression_report(archive: Archive) -> dict:
    """Space saved by compression over the instances currently stored (R-A5)."""
    c_o = compressed_objects
    stmt = (sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(c_o.c.received_size), 0),
                      sa.func.coalesce(sa.func.sum(c_o.c.stored_size), 0))
            .select_from(c_o.join(instances, instances.c.sha256 == c_o.c.sha256)))
    with translate_errors("reporting compression"), archive.catalogue.engine.connect() as c:
        n, received, stored = c.execute(stmt).one()
        total = c.execute(sa.select(sa.func.count(), sa.func.coalesce(
            sa.func.sum(instances.c.size), 0))).one()
    received, stored = int(received), int(stored)
    return {"policy": archive.settings.storage.compress, "instances_compressed": int(n),
            "bytes_received": received, "bytes_stored": stored,
            "bytes_saved": received - stored,
            "ratio": round(received / stored, 3) if stored else None,
            "instances_total": int(total[0]), "bytes_stored_total": int(total[1])}
