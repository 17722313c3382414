"""C-FIND SCP: Patient Root and Study Root FIND over the QIDO-RS query path.

The identifier is translated into QIDO parameters (``identifier.parse_find``) and run
through ``QueryService.search`` — the same parser, SQL and stored level JSON as QIDO-RS
— page by page (``qido_max_limit`` rows at a time) until every match was sent, so
C-FIND has no result limit while no page is larger than a QIDO response. Each match goes
back as a Pending (0xFF00) response holding only the requested keys plus the unique keys
of the level and above (PS3.4 C.4.1.1.3.2), with SpecificCharacterSet ISO_IR 192 when a
value is not ASCII (the index holds decoded Unicode, BI-28). A C-CANCEL is honoured
between matches (0xFE00).
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

import orjson
from pydicom.dataset import Dataset

from .. import errors
from .context import ScpContext
from .contexts import QR_MODELS
from .identifier import (LOCAL_KEYS, PATIENT_KEYS, FindRequest, empty_json, parse_find,
                         tag_hex)
from . import status as st

log = logging.getLogger(__name__)

TAG_PATIENT_ID = tag_hex("PatientID")
TAG_ISSUER = tag_hex("IssuerOfPatientID")
TAG_STUDY_SERIES = tag_hex("NumberOfStudyRelatedSeries")
TAG_STUDY_INSTANCES = tag_hex("NumberOfStudyRelatedInstances")
TAG_PATIENT_STUDIES = tag_hex("NumberOfPatientRelatedStudies")
TAG_PATIENT_SERIES = tag_hex("NumberOfPatientRelatedSeries")
TAG_PATIENT_INSTANCES = tag_hex("NumberOfPatientRelatedInstances")
TAG_RETRIEVE_AET = tag_hex("RetrieveAETitle")
TAG_RETRIEVE_URL = tag_hex("RetrieveURL")
TAG_CHARSET = tag_hex("SpecificCharacterSet")
TAG_LEVEL = tag_hex("QueryRetrieveLevel")
_PATIENT_TAGS = frozenset(tag_hex(k) for k in PATIENT_KEYS | LOCAL_KEYS)


def handle_find(event, ctx: ScpContext) -> Iterator[tuple[Any, Dataset | None]]:
    """pynetdicom EVT_C_FIND handler."""
    root = QR_MODELS.get(str(event.request.AffectedSOPClassUID), ("", ""))[0]
    try:
        try:
            identifier = event.identifier
        except Exception:  # noqa: BLE001 - undecodable identifier
            raise errors.BadRequest("the identifier cannot be decoded") from None
        actor = ctx.access.authorize(event, "read", "C-FIND")  # SEC-18
        req = parse_find(identifier, root)
        matches = _patients(event, ctx, req, actor) if req.level == "PATIENT" \
            else _items(event, ctx, req, actor)
        sent = 0
        for item in matches:
            if item is None:  # cancelled
                yield st.CANCEL, None
                return
            sent += 1
            yield st.PENDING, _response(item, req, ctx)
        # R-E4: the keys asked for and the count, never the values (SEC-23).
        ctx.access.record(event, "query", actor, service="C-FIND", level=req.level,
                          keys=sorted({k for k, _ in req.params}), results=sent)
    except Exception as exc:  # noqa: BLE001 - mapped to a status in one place
        yield st.failure(exc, st.FIND), None


def _items(event, ctx: ScpContext, req: FindRequest, actor) -> Iterator[dict | None]:
    """Every match, one page of the index at a time; None once cancelled."""
    offset = 0
    while True:
        if event.is_cancelled:
            yield None
            return
        params = req.params + [("limit", str(ctx.page_size)), ("offset", str(offset))]
        result = ctx.bridge.call(ctx.query.search(req.qido_level, params, actor=actor,
                                                  base_url=ctx.dicomweb_base))
        for item in result.items:
            if event.is_cancelled:
                yield None
                return
            yield item
        offset += len(result.items)
        if not result.items or offset >= result.total:
            return


def _first(item: dict, tag: str) -> Any:
    value = item.get(tag, {}).get("Value")
    return value[0] if value else None


def _patients(event, ctx: ScpContext, req: FindRequest, actor) -> Iterator[dict | None]:
    """PATIENT level from study rows grouped by (PatientID, IssuerOfPatientID); the
    Patient-level counters are summed from the studies' counters."""
    groups: dict[tuple[Any, Any], dict] = {}
    for item in _items(event, ctx, req, actor):
        if item is None:
            yield None
            return
        key = (_first(item, TAG_PATIENT_ID), _first(item, TAG_ISSUER))
        group = groups.get(key)
        if group is None:
            group = groups[key] = {"item": item, "studies": 0, "series": 0, "instances": 0}
        group["studies"] += 1
        group["series"] += int(_first(item, TAG_STUDY_SERIES) or 0)
        group["instances"] += int(_first(item, TAG_STUDY_INSTANCES) or 0)
    for group in groups.values():
        if event.is_cancelled:
            yield None
            return
        item = dict(group["item"])
        item[TAG_PATIENT_STUDIES] = {"vr": "IS", "Value": [group["studies"]]}
        item[TAG_PATIENT_SERIES] = {"vr": "IS", "Value": [group["series"]]}
        item[TAG_PATIENT_INSTANCES] = {"vr": "IS", "Value": [group["instances"]]}
        yield item


def _response(item: dict, req: FindRequest, ctx: ScpContext) -> Dataset:
    """The requested keys + unique keys of ``item`` as a pydicom Dataset."""
    out: dict[str, dict] = {}
    for tag in dict.fromkeys(req.requested + req.unique):
        if tag in (TAG_CHARSET, TAG_LEVEL):
            continue
        if tag == TAG_RETRIEVE_AET:
            out[tag] = {"vr": "AE", "Value": [ctx.ae_title]}
            continue
        element = item.get(tag)
        if element is None or (req.level == "PATIENT" and tag not in _PATIENT_TAGS) or (
                tag == TAG_RETRIEVE_URL and not ctx.dicomweb_base):
            out[tag] = empty_json(tag)
        elif "BulkDataURI" in element:
            out[tag] = {"vr": element["vr"]}  # bulk data never travels in a C-FIND response
        else:
            out[tag] = element
    ds = Dataset()
    for tag, element in out.items():
        try:
            ds.update(Dataset.from_json({tag: element}, bulk_data_uri_handler=_no_bulk))
        except Exception:  # noqa: BLE001 - one odd stored value must not fail the query
            ds.update(Dataset.from_json({tag: empty_json(tag)}))
    ds.QueryRetrieveLevel = req.level
    if not orjson.dumps(out).isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"  # the index holds Unicode (BI-28)
    return ds


def _no_bulk(tag: str, vr: str, uri: str) -> None:
    """Bulk data inside a sequence item: sent empty (never fetched for a query)."""
    return None
