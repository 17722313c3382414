"""QIDO-RS (PS3.18 §10.6): /studies, /series, /instances and their scoped forms.

Query strings are URL-decoded by aiohttp before they reach the parser (issue 2 item 6).
The total number of matches is exposed as ``X-Total-Count``; when the page is cut short a
``Warning: 299`` says how many more there are (PS3.18 §8.3.4.4 "additional results"):
exactly up to ``qido_sql.COUNT_AHEAD`` beyond the page, "more than N" past it (then
X-Total-Count is the lower bound offset + returned + N + 1; docs/conformance.md).
"""
from __future__ import annotations

import functools

from aiohttp import web

from ... import errors
from ..accept import matches, parse_accept
from ..auth import current_actor, note_audit, requires
from ..keys import QUERY
from .common import base_url, path_uid

#: Query parameters that belong to the HTTP adapter, not to matching.
ADAPTER_PARAMS = {"charset"}


@functools.lru_cache(maxsize=64)
def _accepts_json(accept: str | None) -> bool:
    """Whether an Accept header admits DICOM JSON (clients send one header over and
    over: decided once per header; a malformed one raises every time, uncached)."""
    return any(matches(r, "application/dicom+json") or matches(r, "application/json")
               for r in parse_accept(accept))


def make_qido(level: str):
    """The handler for one QIDO level ('study' | 'series' | 'instance')."""

    @requires("read", audit="query")
    async def qido(request: web.Request) -> web.Response:
        return await _qido(request, level)

    return qido


async def _qido(request: web.Request, level: str) -> web.Response:
    mi = request.match_info
    study = path_uid(request, "study") if "study" in mi else None
    series = path_uid(request, "series") if "series" in mi else None
    if not _accepts_json(request.headers.get("Accept")):
        raise errors.NotAcceptable("QIDO-RS answers application/dicom+json")
    params = [(k, v) for k, v in request.query.items() if k not in ADAPTER_PARAMS]
    result = await request.app[QUERY].search_json(
        level, params, base_url=base_url(request), actor=current_actor(request),
        study_uid=study, series_uid=series)
    # R-E4: the audit names the query keys and counts, never the values (PHI, SEC-23).
    note_audit(request, level=level, keys=sorted({k for k, _ in params}),
               results=result.count)
    # No match: 200 with an empty array (what OHIF, dicomweb-client and Orthanc expect).
    resp = web.Response(body=result.body, content_type="application/dicom+json")
    resp.headers["X-Total-Count"] = str(result.total)
    remaining = result.total - result.offset - result.count
    if remaining > 0 and result.count:
        # Counted up to a bound (issue 6 item 3): past it, total is a lower bound.
        more = f"{remaining}" if result.exact else f"more than {remaining - 1}"
        resp.headers.add("Warning", f'299 pacsd "There are {more} additional results '
                                    'that can be requested"')
    for name in result.unsupported:
        resp.headers.add("Warning", f'299 pacsd "{name} is not supported for matching '
                                    'and was ignored"')
    return resp
