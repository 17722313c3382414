"""C-ECHO and C-STORE SCP: C-STORE goes through the one ingest path (same as STOW-RS).

The received data set is never decoded and re-encoded (R-A2, R-A5): pacsd writes a
Part 10 file into a staging file — 128 zero bytes, ``DICM``, File Meta Information built
from the command (Media Storage SOP Class/Instance UID = Affected SOP Class/Instance UID,
Transfer Syntax = the presentation context's, Source AE = the calling AE) and then the
data set bytes exactly as they arrived — and hands it to ``IngestService.ingest``. The
response is 0x0000 only after ingest returned, i.e. the blob is durable and the index row
committed; every refusal maps to a status in ``status.py``.

BI-35: before anything is written, the data set's SOP Class and Instance UID (read from
the first bytes of the data set only) must equal the command's Affected SOP Class and
Instance UID, else 0xA900.
"""
from __future__ import annotations

import io
import logging
import zlib
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from .. import errors, failpoints
from ..services import StagedFile
from . import status as st
from .context import ScpContext

log = logging.getLogger(__name__)

PREAMBLE = b"\0" * 128 + b"DICM"
#: Bytes of an inflated (deflate transfer syntax) data set read for the BI-35 check.
UID_PREFIX_BYTES = 1024 * 1024
#: Data sets up to this size are handed to ingest in memory (one worker call, parsed
#: before anything is written); larger ones go through a staging file, so a big object
#: is not held twice in memory.
SMALL_OBJECT = 2 * 1024 * 1024
_SOP_INSTANCE_UID = 0x00080018


def handle_echo(event) -> int:
    """EVT_C_ECHO: Verification always succeeds once associated."""
    return st.SUCCESS


def handle_store(event, ctx: ScpContext) -> Any:
    """EVT_C_STORE handler: returns 0x0000 or a failure status dataset."""
    actor = None
    try:
        actor = ctx.access.authorize(event, "write", "C-STORE")  # SEC-18, R-E3
        outcome = _store(event, ctx, actor)
    except Exception as exc:  # noqa: BLE001 - mapped to a status in one place
        status = st.failure(exc, st.STORE)
        if actor is not None:  # a refused instance is audited; a denial already was
            ctx.access.record(event, "instances-stored", actor, outcome="failure",
                              object_count=0, service="C-STORE",
                              status=f"0x{int(status.Status):04X}")
            if isinstance(exc, errors.WriteDenied):  # R-A12: outside the data scope
                ctx.access.record(event, "permission-denied", actor, outcome="denied",
                                  study_uid=exc.study_instance_uid, object_count=1,
                                  action="write", route="dimse:C-STORE", method="C-STORE",
                                  reason="outside data scope")
        return status
    ctx.access.stored(event, outcome.study_instance_uid)
    failpoints.hit("dimse.before_status")
    return st.SUCCESS


def _store(event, ctx: ScpContext, actor):
    request = event.request
    ts = UID(event.context.transfer_syntax)
    raw = request.DataSet.getvalue() if request.DataSet is not None else b""
    cmd_class = str(request.AffectedSOPClassUID or "").strip()
    cmd_instance = str(request.AffectedSOPInstanceUID or "").strip()
    _check_uids(raw, ts, cmd_class, cmd_instance)

    meta = event.file_meta  # built by pynetdicom from the command and the context
    meta.MediaStorageSOPClassUID = cmd_class
    meta.MediaStorageSOPInstanceUID = cmd_instance
    meta.TransferSyntaxUID = ts
    calling = (event.assoc.requestor.ae_title or "").strip()
    if calling:
        meta.SourceApplicationEntityTitle = calling
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta, enforce_standard=True)

    if len(raw) <= SMALL_OBJECT:
        # Durable (blob fsynced and hash-checked, index committed) once this returns.
        return ctx.bridge.call(ctx.ingest.ingest_bytes(PREAMBLE + buf.getvalue() + raw,
                                                      actor=actor))
    archive = ctx.ingest.archive
    writer = archive.store.new_staging_file(
        max_size=archive.settings.dicomweb.max_instance_bytes)
    try:
        writer.write(PREAMBLE + buf.getvalue())
        writer.write(raw)  # the data set bytes exactly as received
        path, sha256, size = writer.finish()
    except BaseException:
        writer.abort()
        raise
    # Durable (blob fsynced and hash-checked, index committed) once this returns; the
    # staged file is consumed either way.
    return ctx.bridge.call(ctx.ingest.ingest(StagedFile(path, sha256, size), actor=actor))


def _check_uids(raw: bytes, ts: UID, cmd_class: str, cmd_instance: str) -> None:
    """BI-35: the data set's SOP Class/Instance UID must match the command's. A data set
    too broken to read them is left to the parser, which answers 0xC000 / 0xA900."""
    data = raw
    if ts.is_deflated:
        try:
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw, UID_PREFIX_BYTES)
        except zlib.error:
            return
    try:
        ds: Dataset = read_dataset(
            io.BytesIO(data), ts.is_implicit_VR, ts.is_little_endian,
            stop_when=lambda tag, vr, length: tag > _SOP_INSTANCE_UID)
        sop_class = ds.get("SOPClassUID")
        sop_instance = ds.get("SOPInstanceUID")
    except Exception:  # noqa: BLE001 - the ingest parser reports what is wrong
        return
    mismatch = []
    if sop_class is not None and str(sop_class).strip("\0 ") != cmd_class:
        mismatch.append("Class")
    if sop_instance is not None and str(sop_instance).strip("\0 ") != cmd_instance:
        mismatch.append("Instance")
    if mismatch:
        raise st.DatasetMismatch(
            f"data set SOP {'/'.join(mismatch)} UID differs from the command")
