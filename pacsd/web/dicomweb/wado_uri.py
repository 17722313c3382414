"""WADO-URI (PS3.18 §9): GET /wado and /dicom-web/wado?requestType=WADO&...

Parameters are URL-decoded by aiohttp. contentType application/dicom returns the object
(optionally in ``transferSyntax``); image/jpeg (the default for images), image/png and
image/gif return a rendered frame honouring frameNumber, windowCenter/windowWidth and
rows/columns (as a viewport that keeps the aspect ratio).
"""
from __future__ import annotations

from aiohttp import web

from ... import errors
from ...dicom import SUPPORTED_TRANSCODE_TARGETS, is_valid_uid
from ..auth import current_actor, requires
from ..keys import RETRIEVE
from .wado import RENDER_TYPES

_ALLOWED = {"requestType", "studyUID", "seriesUID", "objectUID", "contentType", "charset",
            "anonymize", "annotation", "rows", "columns", "region", "windowCenter",
            "windowWidth", "frameNumber", "imageQuality", "presentationUID",
            "presentationSeriesUID", "transferSyntax"}


def _int(query, name: str, lo: int, hi: int) -> int | None:
    if name not in query:
        return None
    v = query[name]
    if not v.isdigit() or not lo <= int(v) <= hi:
        raise errors.BadRequest(f"{name} must be an integer from {lo} to {hi}")
    return int(v)


@requires("read", audit="study-read")
async def wado_uri(request: web.Request) -> web.Response:
    q = request.query
    for key in q:
        if key not in _ALLOWED:
            raise errors.BadRequest(f"unknown WADO-URI parameter {key[:64]}")
    if len(q.getall("objectUID", [])) > 1:
        raise errors.BadRequest("objectUID given more than once")
    if q.get("requestType") != "WADO":
        raise errors.BadRequest("requestType must be WADO")
    uid = {}
    for name in ("studyUID", "seriesUID", "objectUID"):
        value = q.get(name, "")
        if not is_valid_uid(value):
            raise errors.BadRequest(f"{name} is missing or not a valid DICOM UID")
        uid[name] = value
    if "anonymize" in q or "annotation" in q or "region" in q or "presentationUID" in q:
        raise errors.BadRequest("anonymize, annotation, region and presentation states are "
                                "not supported")
    content_types = [c.strip() for c in q.get("contentType", "image/jpeg").split(",")]
    retrieve = request.app[RETRIEVE]
    row = await retrieve.instance(uid["studyUID"], uid["seriesUID"], uid["objectUID"],
                                  actor=current_actor(request))
    for ctype in content_types:
        if ctype in ("application/dicom", "*/*") and (ctype != "*/*" or row.frames is None):
            ts = q.get("transferSyntax", "*")
            if ts != "*" and ts != row.transfer_syntax_uid and \
                    ts not in SUPPORTED_TRANSCODE_TARGETS:
                raise errors.NotAcceptable("transferSyntax is not available losslessly")
            data = b"".join([c async for c in retrieve.object_chunks(row, ts)])
            return web.Response(body=data, content_type="application/dicom")
        if ctype in RENDER_TYPES or ctype == "*/*":
            media = "image/jpeg" if ctype == "*/*" else ctype
            frame = _int(q, "frameNumber", 1, 10**8) or 1
            window = None
            if "windowCenter" in q or "windowWidth" in q:
                try:
                    window = (float(q["windowCenter"]), float(q["windowWidth"]))
                except (KeyError, ValueError):
                    raise errors.BadRequest("windowCenter and windowWidth go together "
                                            "and are numbers") from None
                if window[1] <= 0:
                    raise errors.BadRequest("windowWidth must be positive")
            rows, cols = _int(q, "rows", 1, 8192), _int(q, "columns", 1, 8192)
            # rows / columns bound the output; the other dimension follows the aspect ratio.
            viewport = (cols or 8192, rows or 8192) if (rows or cols) else None
            quality = _int(q, "imageQuality", 1, 100) or 90
            data = await retrieve.rendered(row, frame, media_type=media, window=window,
                                           viewport=viewport, quality=quality)
            return web.Response(body=data, content_type=media)
    raise errors.NotAcceptable("contentType must be application/dicom, image/jpeg, "
                               "image/png or image/gif")
