"""QIDO-RS (and later C-FIND): parse the query, run it on the index, add RetrieveURLs.

Matching and the response attributes come pre-built from the index (level JSON stored at
ingest); this layer only adds what depends on the request (RetrieveURL, R-A1).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Hashable

import orjson

from ..index import parse_qido, qido_dbapi
from ..index.qido_sql import needs_upper, stampable
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


#: Bytes of answers kept per process (:class:`Answers`): ~40 series of 300 CT instances,
#: or three years of month-long StudyDate pages at 50k instances (~290 kB each).
ANSWER_CACHE_BYTES = 16 * 1024 * 1024
#: The fewest items of a study / series page kept under its stamp (:meth:`QueryService.
#: _kept`).
STAMPED_MIN_ITEMS = 8
#: The fewest items of a kept answer also written to the workers' shared cache: a file
#: per answer of a few items (every one-instance series a recount asks for) costs about
#: what building it again does, and each file written brings the cache's prune scan
#: (services/cache.py) nearer, on the QIDO lane.
SHARED_MIN_ITEMS = 8


class Answers:
    """QIDO-RS answers kept with the version of what they were built from (R-H1): the
    instances of one series and the series of one study under that series' / study's
    version (the 300 instances of a CT series were re-read and re-spliced, ~2 ms of a
    worker's CPU, for every request; the series of a study cost a page query and a splice
    where a one-row read of the version now does), other pages of studies or series of
    at least :data:`STAMPED_MIN_ITEMS` items under the generation of the studies and
    series rows (SQLite: ``schema.qido_generation``, a one-row read) and their page's
    stamp (the page's pks, revisions and total, read without the JSON when the
    generation moved: a ``PatientName=Wang*`` answer of 336 studies took 8 ms to fetch
    and splice at 50k instances, its stamp 1 ms).

    An answer is served only when the version read in the request's own transaction is
    the one it was filed under (``qido_dbapi.SERIES_VERSION`` / ``STUDY_VERSION``; the
    generation, or else the stamp: ``qido_dbapi.search_stamped``; every ingest, delete
    and correction at or below a row changes them), so it is never staler than a fresh
    query; each worker process keeps its own, and shares what it built through the
    workers' shared cache (:attr:`QueryService.shared`), where another worker finds it
    and checks its version the same way. Only unscoped queries whose answer reads
    nothing the version does not cover are kept (:meth:`QueryService._kept`). Bounded
    by total size, least recently used first out: an entry costs its body, its key's
    text (the query parameters and base URL a client sent), a stamp's rows and
    :data:`ENTRY_OVERHEAD` (so many tiny answers, e.g. ``[]`` under long parameters,
    cannot grow the memory past the bound); an entry over a quarter of the bound is not
    kept."""

    #: Bytes charged per entry besides its body and key text (dict, tuples, objects).
    ENTRY_OVERHEAD = 512

    def __init__(self, max_bytes: int = ANSWER_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        #: key -> (version, answer, bytes charged, stamp rows)
        self._items: OrderedDict[Hashable, tuple[tuple, "QueryJson", int, int]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    #: Bytes charged per row of a version that is a page's stamp (a tuple of a few ints
    #: and strings per row: ``qido_sql.stamp_of``).
    STAMP_ROW = 200

    @classmethod
    def cost(cls, key: Hashable, answer: "QueryJson", rows: int = 0) -> int:
        """What an entry is charged: body, key text, overhead, a stamp's ``rows``."""
        return len(answer.body) + cls.ENTRY_OVERHEAD + _text_size(key) + cls.STAMP_ROW * rows

    def peek(self, key: Hashable) -> "tuple[tuple, QueryJson, int] | None":
        """(version, answer, stamp rows) kept under ``key``, whatever its version."""
        with self._lock:
            held = self._items.get(key)
            if held is None:
                return None
            self._items.move_to_end(key)
            return held[0], held[1], held[3]

    def get(self, key: Hashable, version: tuple) -> "QueryJson | None":
        """The answer kept under ``key`` for ``version``, or None."""
        held = self.peek(key)
        return held[1] if held is not None and held[0] == version else None

    def put(self, key: Hashable, version: tuple, answer: "QueryJson", rows: int = 0) -> None:
        """Keep ``answer`` under ``key`` for ``version`` (``rows``: of its stamp)."""
        n = self.cost(key, answer, rows)
        if n > self.max_bytes // 4:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= old[2]
            self._items[key] = (version, answer, n, rows)
            self._size += n
            while self._size > self.max_bytes:
                _, (_, _, dropped, _) = self._items.popitem(last=False)
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
        #: The workers' shared cache (services/cache.py SharedFileCache; server.py sets
        #: it in worker processes): a kept answer one worker built is checked (its
        #: version, as every kept answer) and served by the others instead of built
        #: again by each (R-H1).
        self.shared: Any = None

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
        kept = self._kept(q, scope)
        if kept is not None:
            search, min_items, stamped = kept
            key = (level, study_uid, series_uid, tuple(params), base_url)
            answers, shared = self.answers, self.shared

            def cached() -> QueryJson:
                held = answers.peek(key)
                local = held is not None
                if not local and shared is not None:  # another worker's, if any
                    held = _unshare(shared.get(("qido", *key)))
                version, result = search(held[0] if held is not None else None)
                if result is None:  # the held answer is still the answer
                    if version != held[0] or not local:  # checked by its stamp / shared
                        answers.put(key, version, held[1], held[2])
                    return held[1]
                answer = QueryJson(body=_body(level, result.items, base_url),
                                   count=len(result.items), total=result.total,
                                   offset=q.offset, limit=q.limit, unsupported=unsupported,
                                   exact=result.exact)
                if version is not None and answer.count >= min_items:
                    rows = answer.count if stamped else 0
                    answers.put(key, version, answer, rows)
                    if shared is not None and answer.count >= SHARED_MIN_ITEMS:
                        shared.put(("qido", *key), _share(version, answer, rows))
                return answer
            return await self.archive.run_light(cached)

        def work() -> tuple[bytes, int, int, bool]:
            result = self.archive.catalogue.search(q, scope=scope, raw=True)
            return (_body(level, result.items, base_url), len(result.items), result.total,
                    result.exact)
        body, count, total, exact = await self.archive.run_light(work)
        return QueryJson(body=body, count=count, total=total, offset=q.offset, limit=q.limit,
                         unsupported=unsupported, exact=exact)

    def _kept(self, q: Any, scope: Any) -> tuple[Callable[[tuple | None],
                                               tuple[tuple | None, Any]], int, bool] | None:
        """How an unscoped query's answer may be kept (:class:`Answers`): (a function of
        the version of the answer held, or None, that returns (version, result; None when
        the held answer is still the answer); the fewest items an answer worth keeping
        has; whether its version is a page's stamp). The instances of one series and the
        series of one study are filed under that series' / study's version (a one-row
        read: every change below it changes it), other pages of studies and series under
        the generation of those tables (SQLite) and their page's stamp (``qido_sql.
        stamp_of``: its rows' pks and revisions and the total, read without the JSON;
        ``qido_dbapi.search_stamped``). Queries that read more than the version covers
        (upper-level JSON, the study's counters and lists under ``includefield``) are
        not kept, nor those of a scoped actor (``scope``)."""
        if scope:
            return None
        engine = self.archive.catalogue.engine
        if q.study_uid is not None and not needs_upper(q) and not q.include_all and \
                q.includefields.isdisjoint(_STUDY_COMPUTED):
            version = None
            if q.level == "instance" and q.series_uid is not None:
                version = qido_dbapi.SERIES_VERSION
                params = {"b_study": q.study_uid, "b_series": q.series_uid}
            elif q.level == "series" and q.series_uid is None:
                version = qido_dbapi.STUDY_VERSION
                params = {"b_study": q.study_uid}
            if version is not None:
                return (lambda held: qido_dbapi.search_versioned(
                    engine, q, version, params, (lambda v: v == held) if held else _never,
                    raw=True),
                        0, False)
        if stampable(q):
            # A page of a few items costs about what its stamp does: not kept.
            return (lambda held: qido_dbapi.search_stamped(engine, q, held, raw=True),
                    STAMPED_MIN_ITEMS, True)
        return None


def _share(version: tuple, answer: QueryJson, rows: int) -> bytes:
    """A kept answer as the bytes of a shared cache file: the length of a JSON head
    (version, counts, flags), the head, the body."""
    head = orjson.dumps([version, answer.count, answer.total, answer.offset, answer.limit,
                         answer.unsupported, answer.exact, rows])
    return len(head).to_bytes(4, "big") + head + answer.body


def _unshare(data: bytes | None) -> tuple[tuple, QueryJson, int] | None:
    """(version, answer, stamp rows) of :func:`_share`'s bytes; None for none. The
    version comes back as tuples of what it held (ints, strings, None, booleans: the
    index's values, updated_at read as text), so it equals a version read afresh exactly
    when the answer's own did; anything else is a miss."""
    if data is None or len(data) < 4:
        return None
    n = int.from_bytes(data[:4], "big")
    try:
        version, count, total, offset, limit, unsupported, exact, rows = orjson.loads(
            data[4:4 + n])
    except (orjson.JSONDecodeError, ValueError, TypeError):
        return None
    answer = QueryJson(body=data[4 + n:], count=count, total=total, offset=offset,
                       limit=limit, unsupported=tuple(unsupported), exact=exact)
    return _tuples(version), answer, rows


def _tuples(value: Any) -> Any:
    """JSON arrays back to the tuples they were."""
    return tuple(map(_tuples, value)) if isinstance(value, list) else value


def _never(version: tuple) -> bool:
    return False


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
