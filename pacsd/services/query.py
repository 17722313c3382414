"""QIDO-RS (and later C-FIND): parse the query, run it on the index, add RetrieveURLs.

Matching and the response attributes come pre-built from the index (level JSON stored at
ingest); this layer only adds what depends on the request (RetrieveURL, R-A1).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable

import orjson

from ..index import parse_qido, qido_dbapi
from ..index.qido_sql import needs_upper
from .archive import Archive

RETRIEVE_URL = "00081190"
#: Study attributes computed from the study row (qido_sql.COMPUTED["study"]).
_STUDY_COMPUTED = frozenset({"00080061", "00080062", "00201206", "00201208", "00080056"})


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


#: Bytes of answers kept per process (:class:`Answers`): ~20 series of 300 CT instances.
ANSWER_CACHE_BYTES = 8 * 1024 * 1024


class Answers:
    """QIDO-RS answers below one series (instances) or one study (series), kept with the
    version of that series / study they were built from (R-H1: the 300 instances of a
    CT series were re-read and re-spliced, ~2 ms of a worker's CPU, for every request;
    the series of a study cost a page query and a splice where a one-row read of the
    version now does).

    An answer is served only when the version read in the request's own transaction is
    the one it was filed under (``qido_dbapi.SERIES_VERSION`` / ``STUDY_VERSION``: every
    ingest, delete and correction below changes it), so it is never staler than a fresh
    query; several worker processes each keep their own. Only unscoped queries whose
    answer reads nothing above the versioned level are kept (:meth:`QueryService.
    _versioned`). Bounded by total size, least recently used first out: an entry costs
    its body, its key's text (the query parameters and base URL a client sent) and
    :data:`ENTRY_OVERHEAD` (so many tiny answers, e.g. ``[]`` under long parameters,
    cannot grow the memory past the bound); an entry over a quarter of the bound is not
    kept."""

    #: Bytes charged per entry besides its body and key text (dict, tuples, objects).
    ENTRY_OVERHEAD = 512

    def __init__(self, max_bytes: int = ANSWER_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[tuple, "QueryJson", int]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    @classmethod
    def cost(cls, key: Hashable, answer: "QueryJson") -> int:
        """What an entry is charged: body, key text, overhead."""
        return len(answer.body) + cls.ENTRY_OVERHEAD + _text_size(key)

    def get(self, key: Hashable, version: tuple) -> "QueryJson | None":
        with self._lock:
            held = self._items.get(key)
            if held is None or held[0] != version:
                return None
            self._items.move_to_end(key)
            return held[1]

    def put(self, key: Hashable, version: tuple, answer: "QueryJson") -> None:
        n = self.cost(key, answer)
        if n > self.max_bytes // 4:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= old[2]
            self._items[key] = (version, answer, n)
            self._size += n
            while self._size > self.max_bytes:
                _, (_, _, dropped) = self._items.popitem(last=False)
                self._size -= dropped

    def __len__(self) -> int:
        return len(self._items)


def _text_size(key: Any) -> int:
    """Characters of the strings in ``key`` (nested tuples of str / None)."""
    if isinstance(key, str):
        return len(key)
    if isinstance(key, tuple):
        return sum(_text_size(k) for k in key)
    return 8


_URL_HEAD = b',"' + RETRIEVE_URL.encode() + b'":{"vr":"UR","Value":['
_URL_TAIL = b']}}'


class QueryService:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        #: Standard keywords that name a worklist visit column (R-D2): the [worklist]
        #: source attributes that are plain (not sequence) attributes.
        self.aliases = worklist_aliases(archive.settings)
        self.answers = Answers()

    async def search(self, level: str, params: list[tuple[str, str]], *, base_url: str,
                     actor: Any, study_uid: str | None = None,
                     series_uid: str | None = None) -> QueryResult:
        """``actor`` (required: no caller can forget it) limits the matches to its data
        scope (services/scoping.py, R-A12): QIDO-RS and C-FIND alike."""
        q = parse_qido(level, params, study_uid=study_uid, series_uid=series_uid,
                       max_limit=self.archive.settings.dicomweb.qido_max_limit,
                       aliases=self.aliases)
        scope = self.archive.scoping.scope_for(actor, "read")
        result = await self.archive.run_light(self.archive.catalogue.search, q, scope=scope)
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
        unsupported = tuple(q.unsupported)
        versioned = self._versioned(q, scope)
        if versioned is not None:
            version_stmt, version_params = versioned
            key = (level, study_uid, series_uid, tuple(params), base_url)
            answers = self.answers
            engine = self.archive.catalogue.engine

            def cached() -> QueryJson:
                held: list[QueryJson] = []

                def known(version: tuple) -> bool:
                    hit = answers.get(key, version)
                    if hit is not None:
                        held.append(hit)
                    return hit is not None
                version, result = qido_dbapi.search_versioned(
                    engine, q, version_stmt, version_params, known, raw=True)
                if result is None:
                    return held[0]
                answer = QueryJson(body=_body(level, result.items, base_url),
                                   count=len(result.items), total=result.total,
                                   offset=q.offset, limit=q.limit, unsupported=unsupported,
                                   exact=result.exact)
                if version is not None:
                    answers.put(key, version, answer)
                return answer
            return await self.archive.run_light(cached)

        def work() -> tuple[bytes, int, int, bool]:
            result = self.archive.catalogue.search(q, scope=scope, raw=True)
            return (_body(level, result.items, base_url), len(result.items), result.total,
                    result.exact)
        body, count, total, exact = await self.archive.run_light(work)
        return QueryJson(body=body, count=count, total=total, offset=q.offset, limit=q.limit,
                         unsupported=unsupported, exact=exact)

    @staticmethod
    def _versioned(q: Any, scope: Any) -> tuple[Any, dict[str, str]] | None:
        """(version statement, its parameters) when the answer of ``q`` may be kept
        (:class:`Answers`): the instances of one series (series version) or the series
        of one study (study version: bumped by every change below the study too),
        unscoped, reading nothing the version does not cover (upper-level JSON, the
        study's counters and lists: ``includefield`` of them)."""
        if scope or q.study_uid is None or needs_upper(q) or q.include_all or \
                not q.includefields.isdisjoint(_STUDY_COMPUTED):
            return None
        if q.level == "instance" and q.series_uid is not None:
            return qido_dbapi.SERIES_VERSION, {"b_study": q.study_uid,
                                               "b_series": q.series_uid}
        if q.level == "series" and q.series_uid is None:
            return qido_dbapi.STUDY_VERSION, {"b_study": q.study_uid}
        return None


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
