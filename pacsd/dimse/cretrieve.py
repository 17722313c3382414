"""C-GET and C-MOVE SCP (Patient Root, Study Root) over the one retrieve path.

Matching: the identifier's unique keys (PatientID / StudyInstanceUID / SeriesInstanceUID
/ SOPInstanceUID; UID lists allowed; upper-level keys optional, i.e. relational retrieve
is accepted) are resolved through ``QueryService.search`` where an upper-level UID is
missing, then ``RetrieveService.instances`` lists the instances — the same index rows
WADO-RS serves. Unknown UIDs simply match nothing.

Sending: each instance is one C-STORE sub-operation. The object is read through
``RetrieveService.object_chunks`` (sha256-verified, FT-6/FT-8; ``net.load_instance``) and
its data set bytes are sent unchanged, as pre-framed PDUs (``pdata.py``), when the peer
accepted the stored transfer syntax;
otherwise it is transcoded losslessly (``pacsd.dicom.transcode``, pixels verified) to a
transfer syntax the peer accepted, and when that is impossible the sub-operation fails
(counted; the instance is listed in Failed SOP Instance UID List). pynetdicom keeps the
remaining/completed/failed/warning counts: 0xB000 when some sub-operations failed,
0xA702 when all did, 0xFE00 on C-CANCEL (checked before each sub-operation).

C-MOVE destinations are the ``[dimse] peers`` table only: any other AE title answers
0xA801 before anything is looked up (SEC-18).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Iterator

from pydicom.dataset import Dataset

from .. import errors
from ..dicom import is_valid_uid
from ..model import InstanceRow
from ..services.audit import store_location
from . import status as st
from .context import ScpContext
from .contexts import QR_MODELS, move_contexts
from .identifier import query_level, uid_values
from .net import Outgoing, ReadAhead

log = logging.getLogger(__name__)

#: QIDO values are at most 1024 characters: long UID lists are looked up in slices.
UID_LIST_CHARS = 1000


def handle_get(event, ctx: ScpContext) -> Iterator[Any]:
    """pynetdicom EVT_C_GET handler: count, then one (status, dataset) per instance."""
    try:
        actor = ctx.access.authorize(event, "read", "C-GET")  # SEC-18
        rows = _resolve(event, ctx, actor)
    except Exception as exc:  # noqa: BLE001 - mapped to a status in one place
        yield 1  # pynetdicom needs a count before it accepts a failure status
        yield st.failure(exc, st.GET), None
        return
    _audit_read(event, ctx, actor, rows, "C-GET")
    yield len(rows)
    yield from _suboperations(event, ctx, rows, None)


def handle_move(event, ctx: ScpContext) -> Iterator[Any]:
    """pynetdicom EVT_C_MOVE handler: destination, count, then one item per instance."""
    destination = ctx.peers.get((event.move_destination or "").strip())
    if destination is None:
        log.info("C-MOVE to an unknown destination refused (0xA801)")
        yield None, None
        return
    host, port = destination
    options = {"max_pdu": ctx.settings.dimse.max_pdu}
    try:
        actor = ctx.access.authorize(event, "read", "C-MOVE")  # SEC-18
        rows = _resolve(event, ctx, actor)
    except Exception as exc:  # noqa: BLE001 - mapped to a status in one place
        # pynetdicom only sends a failure status after the count, and associates with
        # the destination in between (Verification only): its flow, not a choice.
        yield host, port, {**options, "contexts": move_contexts([])}
        yield 1
        yield st.failure(exc, st.MOVE), None
        return
    _audit_read(event, ctx, actor, rows, "C-MOVE",
                destination=(event.move_destination or "").strip())
    yield host, port, {**options, "contexts": move_contexts(rows)}
    yield len(rows)
    originator = ((event.assoc.requestor.ae_title or "").strip(), int(event.request.MessageID))
    yield from _suboperations(event, ctx, rows, originator)


def _audit_read(event, ctx: ScpContext, actor, rows: list[InstanceRow], service: str,
                **detail) -> None:
    """R-E4 access audit: one ``study-read`` event per study, with the objects sent."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.study_instance_uid] = counts.get(row.study_instance_uid, 0) + 1
    location = store_location(ctx.retrieve.archive.store)
    for study, count in counts.items():
        ctx.access.record(event, "study-read", actor, study_uid=study, object_count=count,
                          location=location, service=service, **detail)


def _suboperations(event, ctx: ScpContext, rows: list[InstanceRow],
                   originator: tuple[str, int] | None) -> Iterator[tuple[int, Dataset | None]]:
    reader = ReadAhead(ctx.retrieve, ctx.bridge, rows)
    for index, row in enumerate(rows):
        if event.is_cancelled:
            yield st.CANCEL, None
            return
        stage = functools.partial(reader.stage, index)
        yield st.PENDING, Outgoing(row.sop_class_uid, row.sop_instance_uid, stage, originator,
                                   functools.partial(reader.after_send, index))


# --- matching ---------------------------------------------------------------------------

def _resolve(event, ctx: ScpContext, actor) -> list[InstanceRow]:
    root = QR_MODELS.get(str(event.request.AffectedSOPClassUID), ("STUDY", ""))[0]
    try:
        identifier = event.identifier
    except Exception:  # noqa: BLE001 - undecodable identifier
        raise errors.BadRequest("the identifier cannot be decoded") from None
    return resolve(identifier, root, ctx, actor)


def _uids(identifier: Dataset, keyword: str, required: bool) -> list[str]:
    values = uid_values(identifier, keyword)
    if required and not values:
        raise st.IdentifierMismatch(f"{keyword} is required at this QueryRetrieveLevel")
    for uid in values:
        if not is_valid_uid(uid):
            raise errors.BadRequest(f"{keyword}: not a valid UID (no wildcards in a retrieve)")
    return values


def _slices(uids: list[str]) -> Iterator[str]:
    chunk: list[str] = []
    for uid in uids:
        if chunk and len("\\".join(chunk + [uid])) > UID_LIST_CHARS:
            yield "\\".join(chunk)
            chunk = []
        chunk.append(uid)
    if chunk:
        yield "\\".join(chunk)


def _search_all(ctx: ScpContext, level: str, params: list[tuple[str, str]], actor
                ) -> Iterator[dict]:
    offset = 0
    while True:
        page = params + [("limit", str(ctx.page_size)), ("offset", str(offset))]
        result = ctx.bridge.call(ctx.query.search(level, page, base_url="", actor=actor))
        yield from result.items
        offset += len(result.items)
        if not result.items or offset >= result.total:
            return


def _first(item: dict, tag: str) -> str | None:
    value = item.get(tag, {}).get("Value")
    return str(value[0]) if value else None


def resolve(identifier: Dataset, root: str, ctx: ScpContext, actor) -> list[InstanceRow]:
    """The instances a C-GET/C-MOVE identifier names (module docstring), within the data
    scope of ``actor`` (R-A12: outside it, a UID matches nothing)."""
    level = query_level(identifier, root)
    targets: list[tuple[str, str | None]] = []   # (study, series or None)
    only: set[str] | None = None                 # SOP Instance UIDs at IMAGE level
    if level == "PATIENT":
        pid = str(identifier.get("PatientID", "") or "").strip()
        if not pid:
            raise st.IdentifierMismatch("PatientID is required at PATIENT level")
        if "*" in pid or "?" in pid or "\\" in pid:
            raise errors.BadRequest("PatientID: a retrieve names one patient (no wildcards)")
        params = [("PatientID", pid)]
        issuer = str(identifier.get("IssuerOfPatientID", "") or "").strip()
        if issuer and "*" not in issuer and "?" not in issuer:
            params.append(("IssuerOfPatientID", issuer))
        targets = [(s, None) for s in dict.fromkeys(
            _first(item, "0020000D") for item in _search_all(ctx, "study", params, actor))
            if s]
    elif level == "STUDY":
        targets = [(s, None) for s in _uids(identifier, "StudyInstanceUID", True)]
    else:
        studies = _uids(identifier, "StudyInstanceUID", False)
        if level == "SERIES":
            values = _uids(identifier, "SeriesInstanceUID", True)
            if len(studies) == 1:
                targets = [(studies[0], se) for se in values]
            else:
                targets = _parents(ctx, "series", "SeriesInstanceUID", values, studies, actor)
        else:
            values = _uids(identifier, "SOPInstanceUID", True)
            series = _uids(identifier, "SeriesInstanceUID", False)
            only = set(values)
            if len(studies) == 1 and len(series) == 1:
                targets = [(studies[0], series[0])]
            else:
                targets = _parents(ctx, "instance", "SOPInstanceUID", values, studies,
                                   actor)
    return _rows(ctx, targets, only, actor)


def _parents(ctx: ScpContext, qido_level: str, key: str, values: list[str],
             studies: list[str], actor) -> list[tuple[str, str | None]]:
    """Relational retrieve: the (study, series) holding each UID, through the index."""
    pairs: dict[tuple[str, str | None], None] = {}
    for chunk in _slices(values):
        params = [(key, chunk)]
        if studies:
            params.append(("StudyInstanceUID", "\\".join(studies)))
        for item in _search_all(ctx, qido_level, params, actor):
            study, series = _first(item, "0020000D"), _first(item, "0020000E")
            if study and series:
                pairs[(study, series)] = None
    return list(pairs)


def _rows(ctx: ScpContext, targets: list[tuple[str, str | None]], only: set[str] | None,
          actor) -> list[InstanceRow]:
    rows: list[InstanceRow] = []
    seen: set[str] = set()
    for study, series in targets:
        try:
            batch = ctx.bridge.call(ctx.retrieve.instance_files(study, series,
                                                                 actor=actor))
        except errors.NotFound:
            continue
        for row in batch:
            if (only is not None and row.sop_instance_uid not in only) \
                    or row.sop_instance_uid in seen:
                continue
            seen.add(row.sop_instance_uid)
            rows.append(row)
    return rows
