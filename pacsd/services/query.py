"""QIDO-RS (and later C-FIND): parse the query, run it on the index, add RetrieveURLs.

Matching and the response attributes come pre-built from the index (level JSON stored at
ingest); this layer only adds what depends on the request (RetrieveURL, R-A1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..index import parse_qido
from .archive import Archive

RETRIEVE_URL = "00081190"


@dataclass(frozen=True)
class QueryResult:
    items: list[dict]
    total: int
    offset: int
    limit: int
    unsupported: tuple[str, ...]
    #: False: ``total`` is a lower bound (the matches were counted up to a bound).
    exact: bool = True


@dataclass(frozen=True)
class QueryJson:
    """A QIDO-RS answer as its JSON body (an array of DICOM JSON objects)."""

    body: bytes
    count: int
    total: int
    offset: int
    limit: int
    unsupported: tuple[str, ...]
    #: False: ``total`` is a lower bound (the matches were counted up to a bound).
    exact: bool = True


_URL_HEAD = b',"' + RETRIEVE_URL.encode() + b'":{"vr":"UR","Value":['
_URL_TAIL = b']}}'


class QueryService:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        #: Standard keywords that name a worklist visit column (R-D2): the [worklist]
        #: source attributes that are plain (not sequence) attributes.
        self.aliases = worklist_aliases(archive.settings)

    async def search(self, level: str, params: list[tuple[str, str]], *, base_url: str,
                     actor: Any, study_uid: str | None = None,
                     series_uid: str | None = None) -> QueryResult:
        """``actor`` (required: no caller can forget it) limits the matches to its data
        scope (services/scoping.py, R-A12): QIDO-RS and C-FIND alike."""
        q = parse_qido(level, params, study_uid=study_uid, series_uid=series_uid,
                       max_limit=self.archive.settings.dicomweb.qido_max_limit,
                       aliases=self.aliases)
        scope = self.archive.scoping.scope_for(actor, "read")
        result = await self.archive.run(
            lambda: self.archive.catalogue.search(q, scope=scope))
        for item in result.items:
            url = _retrieve_url(level, item, base_url)
            if url:
                item[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
        return QueryResult(items=result.items, total=result.total, offset=q.offset,
                           limit=q.limit, unsupported=tuple(q.unsupported),
                           exact=result.exact)


    async def search_json(self, level: str, params: list[tuple[str, str]], *,
                          base_url: str, actor: Any, study_uid: str | None = None,
                          series_uid: str | None = None) -> QueryJson:
        """:meth:`search` answered as the JSON body QIDO-RS sends: the same bytes as
        ``orjson.dumps(search(...).items)`` (RetrieveURL last in each item), but items
        are spliced from the stored JSON where the index can (R-H1, issue 6)."""
        q = parse_qido(level, params, study_uid=study_uid, series_uid=series_uid,
                       max_limit=self.archive.settings.dicomweb.qido_max_limit,
                       aliases=self.aliases)
        scope = self.archive.scoping.scope_for(actor, "read")

        def work() -> tuple[bytes, int, int, bool]:
            result = self.archive.catalogue.search(q, scope=scope, raw=True)
            return (_body(level, result.items, base_url), len(result.items), result.total,
                    result.exact)
        body, count, total, exact = await self.archive.run(work)
        return QueryJson(body=body, count=count, total=total, offset=q.offset, limit=q.limit,
                         unsupported=tuple(q.unsupported), exact=exact)


def _body(level: str, items: list, base: str) -> bytes:
    """The JSON array of ``items`` (spliced pieces or dicts, qido_sql.raw_items) with
    each item's RetrieveURL added last, as :meth:`QueryService.search` does; joined once.
    JSON string escaping works character by character, so the escaped URL is the escaped
    parent prefix (kept while the parents repeat) plus the escaped SOP Instance UID."""
    out = [b"["]
    dumps = orjson.dumps
    prefix_of = None
    prefix = b""
    for item in items:
        if len(out) > 1:
            out.append(b",")
        if type(item) is dict:
            url = _retrieve_url(level, item, base)
            if url:
                item[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
            out.append(dumps(item))
            continue
        pieces, study, series, sop = item
        out += pieces
        if not study or (level != "study" and not series) or (level == "instance" and not sop):
            out.append(b"}")
            continue
        if prefix_of != (study, series):
            prefix_of = (study, series)
            url = f"{base}/studies/{study}" + (f"/series/{series}" if level != "study" else "")
            prefix = _URL_HEAD + dumps(url)[:-1]  # without its closing quote
        if level == "instance":
            out += (prefix, dumps("/instances/" + sop)[1:], _URL_TAIL)
        else:
            out += (prefix, b'"', _URL_TAIL)
    out.append(b"]")
    return b"".join(out)


def worklist_aliases(settings: Any) -> dict[str, str]:
    """{DICOM keyword: pacsd worklist key} of the [worklist] source attributes, e.g.
    AdmissionID -> visitnumber, RequestingService -> department (qido.PRIVATE_KEYS).
    A sequence source (OtherPatientIDsSequence) has none: sequences never match."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    conf = settings.worklist
    out = {}
    for kw, name in ((conf.visit_number_attribute, "visitnumber"),
                     (conf.card_number_attribute, "cardnumber"),
                     (conf.department_attribute, "department")):
        if kw and dictionary_VR(tag_for_keyword(kw)) != "SQ":
            out[kw] = name
    return out


def _uid(item: dict, tag: str) -> str | None:
    value = item.get(tag, {}).get("Value")
    return value[0] if value else None


def _retrieve_url(level: str, item: dict, base: str) -> str | None:
    study = _uid(item, "0020000D")
    if not study:
        return None
    url = f"{base}/studies/{study}"
    if level in ("series", "instance"):
        series = _uid(item, "0020000E")
        if not series:
            return None
        url += f"/series/{series}"
    if level == "instance":
        sop = _uid(item, "00080018")
        if not sop:
            return None
        url += f"/instances/{sop}"
    return url
