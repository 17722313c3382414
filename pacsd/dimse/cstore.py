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
import struct
import zlib
from typing import Any, Callable

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from .. import errors, failpoints
from ..services import StagedFile
from . import receive
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
_UID_CHARS = frozenset("0123456789.")


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
    cmd_class = str(request.AffectedSOPClassUID or "").strip()
    cmd_instance = str(request.AffectedSOPInstanceUID or "").strip()
    calling = (event.assoc.requestor.ae_title or "").strip()
    meta_bytes = file_meta_bytes(cmd_class, cmd_instance, str(ts), calling)
    received = request.DataSet
    whole: bytes | None = None
    if (isinstance(received, receive.Part10Data) and meta_bytes is not None
            and received.offset == len(PREAMBLE) + len(meta_bytes)
            and received.part10[:received.offset] == PREAMBLE + meta_bytes):
        # Joined behind this very prefix on arrival (receive.py): stored as it is.
        whole, offset = received.part10, received.offset
        _check_uids(whole, ts, cmd_class, cmd_instance, start=offset)
    else:
        raw = received.getvalue() if received is not None else b""
        _check_uids(raw, ts, cmd_class, cmd_instance)
        if meta_bytes is None:  # values outside what file_meta_bytes encodes: pydicom's way
            meta = event.file_meta  # built by pynetdicom from the command and the context
            meta.MediaStorageSOPClassUID = cmd_class
            meta.MediaStorageSOPInstanceUID = cmd_instance
            meta.TransferSyntaxUID = ts
            if calling:
                meta.SourceApplicationEntityTitle = calling
            buf = DicomBytesIO()
            write_file_meta_info(buf, meta, enforce_standard=True)
            meta_bytes = buf.getvalue()
        offset = len(PREAMBLE) + len(meta_bytes)
        if len(raw) <= SMALL_OBJECT:
            whole = PREAMBLE + meta_bytes + raw
        else:
            whole = None

    if whole is not None and len(whole) - offset <= SMALL_OBJECT:
        # Durable (blob fsynced and hash-checked, index committed) once this returns.
        # Run in this association thread (it waits for the result anyway): no hop
        # through the event loop and the worker pool (issue 6).
        return ctx.ingest.ingest_bytes_sync(whole, actor=actor)
    archive = ctx.ingest.archive
    writer = archive.store.new_staging_file(
        max_size=archive.settings.dicomweb.max_instance_bytes)
    try:
        if whole is not None:
            writer.write(whole)  # prefix + the data set bytes exactly as received
        else:
            writer.write(PREAMBLE + meta_bytes)
            writer.write(raw)  # the data set bytes exactly as received
        path, sha256, size = writer.finish()
    except BaseException:
        writer.abort()
        raise
    # Durable (blob fsynced and hash-checked, index committed) once this returns; the
    # staged file is consumed either way.
    return ctx.ingest.ingest_sync(StagedFile(path, sha256, size, writer.digest), actor=actor)


def part10_prefix(assoc: Any) -> Callable[[dict, int], bytes | None]:
    """For ``receive.install``: the preamble and File Meta Information :func:`_store`
    will put in front of a C-STORE-RQ's data set on ``assoc`` (from the command's
    elements, the presentation context's transfer syntax and the calling AE), so the
    data set is copied once, behind it, on arrival. None when it cannot tell (the
    handler then builds the object as before); the handler checks the prefix anyway."""

    def prefix(fields: dict, context_id: int) -> bytes | None:
        context = assoc._accepted_cx.get(context_id)
        if context is None:
            return None
        calling = (assoc.requestor.ae_title or "").strip()
        meta = file_meta_bytes(str(fields[0x0002]).strip(), str(fields[0x1000]).strip(),
                               str(context.transfer_syntax[0]), calling)
        return None if meta is None else PREAMBLE + meta

    return prefix


def _meta_element(tag: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHL", 2, tag, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, tag, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes | None:
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        return None
    return raw + pad if len(raw) % 2 else raw


def file_meta_bytes(sop_class: str, sop_instance: str, ts: str, calling: str
                    ) -> bytes | None:
    """The File Meta Information (group 0002, Explicit VR Little Endian) of a received
    instance, byte-identical to what pydicom's ``write_file_meta_info`` makes of
    pynetdicom's ``event.file_meta`` with these values (issue 6: a third of the
    handler's CPU per instance went to building and validating that data set). None when
    a value is not plain ASCII within its VR's length: the caller uses pydicom then."""
    values = [(0x0002, b"UI", sop_class, b"\0", 64), (0x0003, b"UI", sop_instance, b"\0", 64),
              (0x0010, b"UI", ts, b"\0", 64),
              (0x0012, b"UI", PYNETDICOM_IMPLEMENTATION_UID, b"\0", 64),
              (0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION, b" ", 16)]
    if calling:
        values.append((0x0016, b"AE", calling, b" ", 16))
    body = [_meta_element(0x0001, b"OB", b"\0\1")]
    for tag, vr, text, pad, limit in values:
        raw = _padded(str(text), pad)
        if raw is None or not text or len(raw) > limit or (vr == b"UI" and not all(
                c in _UID_CHARS for c in str(text))):
            return None
        body.append(_meta_element(tag, vr, raw))
    rest = b"".join(body)
    return _meta_element(0x0000, b"UL", struct.pack("<L", len(rest))) + rest


#: Explicit VR value representations with a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"))
_SOP_CLASS_UID = 0x00080016


def _sop_uids_fast(data: bytes, implicit: bool, start: int = 0
                   ) -> tuple[str | None, str | None] | None:
    """(SOP Class UID, SOP Instance UID) of a little-endian data set, read from its first
    elements without pydicom (issue 6: pydicom's read was a third of the C-STORE
    handler's time); absent ones are None. None when anything is unusual (undefined
    length, truncated, non-ASCII or multi-valued UID): the caller reads with pydicom."""
    found: dict[int, str] = {}
    pos, end = start, len(data)
    unpack = struct.unpack_from
    while pos + 8 <= end:
        group, elem = unpack("<HH", data, pos)
        tag = (group << 16) | elem
        if tag > _SOP_INSTANCE_UID:
            break
        if implicit:
            length = unpack("<L", data, pos + 4)[0]
            pos += 8
        else:
            vr = data[pos + 4:pos + 6]
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    return None
                length = unpack("<L", data, pos + 8)[0]
                pos += 12
            else:
                length = unpack("<H", data, pos + 6)[0]
                pos += 8
        if length == 0xFFFFFFFF or pos + length > end:
            return None
        if tag in (_SOP_CLASS_UID, _SOP_INSTANCE_UID):
            value = data[pos:pos + length]
            if b"\\" in value or not value.isascii():
                return None
            found[tag] = value.decode("ascii")
        pos += length
    else:
        if pos != end:
            return None
    return found.get(_SOP_CLASS_UID), found.get(_SOP_INSTANCE_UID)


def _check_uids(raw: bytes, ts: UID, cmd_class: str, cmd_instance: str,
                start: int = 0) -> None:
    """BI-35: the data set's SOP Class/Instance UID must match the command's. A data set
    too broken to read them is left to the parser, which answers 0xC000 / 0xA900.
    ``start``: where the data set begins in ``raw``."""
    if start and ts.is_little_endian and not ts.is_deflated:
        fast = _sop_uids_fast(raw, ts.is_implicit_VR, start)
        if fast is not None:
            _compare_uids(fast[0], fast[1], cmd_class, cmd_instance)
            return
    if start:
        raw = raw[start:]
    data = raw
    if ts.is_deflated:
        try:
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw, UID_PREFIX_BYTES)
        except zlib.error:
            return
    fast = (_sop_uids_fast(data, ts.is_implicit_VR)
            if ts.is_little_endian else None)
    if fast is not None:
        _compare_uids(fast[0], fast[1], cmd_class, cmd_instance)
        return
    try:
        ds: Dataset = read_dataset(
            io.BytesIO(data), ts.is_implicit_VR, ts.is_little_endian,
            stop_when=lambda tag, vr, length: tag > _SOP_INSTANCE_UID)
        sop_class = ds.get("SOPClassUID")
        sop_instance = ds.get("SOPInstanceUID")
    except Exception:  # noqa: BLE001 - the ingest parser reports what is wrong
        return
    _compare_uids(sop_class, sop_instance, cmd_class, cmd_instance)


def _compare_uids(sop_class: Any, sop_instance: Any, cmd_class: str, cmd_instance: str
                  ) -> None:
    mismatch = []
    if sop_class is not None and str(sop_class).strip("\0 ") != cmd_class:
        mismatch.append("Class")
    if sop_instance is not None and str(sop_instance).strip("\0 ") != cmd_instance:
        mismatch.append("Instance")
    if mismatch:
        raise st.DatasetMismatch(
            f"data set SOP {'/'.join(mismatch)} UID differs from the command")
