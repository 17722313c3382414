"""WADO-RS (PS3.18 §10.4): instances, metadata, frames, bulk data, rendered, thumbnail,
whole-study ZIP, and DELETE.

Content negotiation (§8.7.3): instances as ``multipart/related; type="application/dicom"``
with ``transfer-syntax=*`` (as stored) or a lossless target (default Explicit VR Little
Endian, configurable); frames as ``application/octet-stream`` parts cut from the stored file
by the byte ranges recorded at ingest, or in their stored compressed media type
(``image/jls``, ``image/jp2`` ...). 406 when nothing the client accepts can be produced.
"""
from __future__ import annotations

import sys
import zipfile
import zlib
from asyncio.selector_events import _SelectorSocketTransport
from contextlib import aclosing

from aiohttp import web

from ... import errors
from ...dicom import SUPPORTED_TRANSCODE_TARGETS
from ...model import InstanceRow
from ..accept import matches, parse_accept
from ..auth import current_actor, note_audit, requires
from ..keys import ARCHIVE, INGEST, RETRIEVE
from ..middleware import STREAMING
from .common import MultipartWriter, base_url, multipart_response, uids

#: Media type of frames stored in each compressed transfer syntax (PS3.18 Table 8.7.3-2).
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc", "1.2.840.10008.1.2.5": "image/dicom-rle",
}
OCTET = "application/octet-stream"


# --- instances ----------------------------------------------------------------------------

def _choose_instance_repr(request: web.Request, rows: list[InstanceRow]) -> tuple[str, str]:
    """(representation, transfer syntax): representation is 'multipart', 'single' or 'zip'."""
    default_ts = request.app[ARCHIVE].settings.dicomweb.default_transfer_syntax
    stored = {r.transfer_syntax_uid for r in rows}
    for rng in parse_accept(request.headers.get("Accept")):
        ts = rng.transfer_syntax or default_ts
        ok_ts = ts == "*" or ts in SUPPORTED_TRANSCODE_TARGETS or stored == {ts}
        if rng.type == "multipart/related" and rng.inner in ("", "application/dicom") \
                and ok_ts:
            return "multipart", ts
        if rng.type == "application/dicom" and len(rows) == 1 and ok_ts:
            return "single", ts
        if rng.type == "application/zip":
            return "zip", "*"
        if rng.type in ("*/*", "multipart/*") and ok_ts:
            return "multipart", ts
    raise errors.NotAcceptable(
        'retrieve as multipart/related; type="application/dicom" with transfer-syntax=* or '
        "one of " + ", ".join(sorted(SUPPORTED_TRANSCODE_TARGETS)) + ", or application/zip")


@requires("read", audit="study-read")
async def retrieve_instances(request: web.Request) -> web.StreamResponse:
    study, series, sop = uids(request)
    retrieve = request.app[RETRIEVE]
    # Whole objects only: rows without frame index / bulk offsets (cheaper to list).
    rows = await retrieve.instance_files(study, series, sop, actor=current_actor(request))
    note_audit(request, object_count=len(rows))
    kind, ts = _choose_instance_repr(request, rows)
    if kind == "zip":
        return await _zip(request, rows, study)
    if kind == "single":
        data = b"".join([c async for c in retrieve.object_chunks(rows[0], ts)])
        return web.Response(body=data, content_type="application/dicom",
                            headers={"Content-Disposition": "attachment"})
    params = "" if ts == "*" else f"; transfer-syntax={ts}"
    writer = MultipartWriter(request, "application/dicom", extra_params=params)
    if ts == "*":   # as stored: the next object is read and verified while this one is sent
        def part_type(row) -> str:
            return f"application/dicom; transfer-syntax={row.transfer_syntax_uid}"
        # Stored sizes are exact (every read checks size and digest): a Content-Length.
        writer.sized([(part_type(row), row.size) for row in rows])
        # Each part (head, object, CRLF) is read into one buffer: one socket write; the
        # same buffer for every part when the transport copies what it keeps.
        async with aclosing(retrieve.objects_as_stored(
                rows, frame=lambda row: writer.frame(part_type(row)),
                reuse=_transport_copies(request, writer.response))) as objects:
            async for _, chunks in objects:
                await writer.framed(chunks)
        return await writer.finish()
    for row in rows:
        await writer.part(f"application/dicom; transfer-syntax={ts}",
                          retrieve.object_chunks(row, ts))
    return await writer.finish()


def _transport_copies(request: web.Request, response: web.StreamResponse) -> bool:
    """Whether a buffer written to this answer may be refilled as soon as the write
    returns: asyncio's plain socket transport up to Python 3.11 sends what the socket
    takes and copies the rest into its own buffer (3.12 keeps a reference instead; TLS
    keeps the data in its backlog), and aiohttp adds no framing or compression of its
    own to a sized answer."""
    return (sys.version_info < (3, 12)
            and type(request.transport) is _SelectorSocketTransport
            and not response.chunked and not response.compression)


class _ChunkSink:
    """A write-only, non-seekable file for zipfile: collects bytes to flush async."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pos = 0

    def write(self, b: bytes) -> int:
        self.buf += b
        self.pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out


async def _zip(request: web.Request, rows: list[InstanceRow], study: str) -> web.StreamResponse:
    """Whole study / series as a ZIP of the stored Part 10 files, streamed one instance
    at a time (ZIP_STORED: DICOM pixel data rarely deflates well and CPU is the limit)."""
    retrieve = request.app[RETRIEVE]
    resp = web.StreamResponse(headers={
        "Content-Type": "application/zip",
        "Content-Disposition": f'attachment; filename="{study}.zip"'})
    await resp.prepare(request)
    request[STREAMING] = resp
    sink = _ChunkSink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for row in rows:
            name = f"{row.series_instance_uid}/{row.sop_instance_uid}.dcm"
            with zf.open(zipfile.ZipInfo(name), "w", force_zip64=row.size > 2**31) as member:
                async for chunk in retrieve.object_chunks(row, "*"):
                    member.write(chunk)
                    await resp.write(sink.take())
            await resp.write(sink.take())
    await resp.write(sink.take())
    await resp.write_eof()
    return resp


# --- metadata -----------------------------------------------------------------------------

@requires("read", audit="study-read")
async def retrieve_metadata(request: web.Request) -> web.StreamResponse:
    study, series, sop = uids(request)
    if not any(matches(r, "application/dicom+json") or matches(r, "application/json")
               for r in parse_accept(request.headers.get("Accept"))):
        raise errors.NotAcceptable("metadata is served as application/dicom+json")
    retrieve = request.app[RETRIEVE]
    base = base_url(request)
    gzipped = accepts_gzip(request.headers.get("Accept-Encoding"))
    # The stored bytes get the base URL substituted, so it is part of the validator.
    base_crc = zlib.crc32(base.encode())
    if_none_match = request.headers.get("If-None-Match", "")
    token, body = await retrieve.metadata(
        study, series, sop, base, actor=current_actor(request), gzipped=gzipped,
        not_modified=lambda t: bool(if_none_match) and
        '"%s-%08x"' % (t, base_crc) in if_none_match)
    etag = '"%s-%08x"' % (token, base_crc)
    headers = {"ETag": etag, "Cache-Control": "private, no-cache", "Vary": "Accept-Encoding"}
    if body is None:
        return web.Response(status=304, headers=headers)
    if gzipped:   # compressed once per ETag and kept (services/retrieve.py)
        headers["Content-Encoding"] = "gzip"
    resp = web.Response(body=body, headers=headers, content_type="application/dicom+json")
    if not gzipped:
        resp.enable_compression()  # deflate when the client accepts only that
    return resp


def accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding header admits gzip: ``gzip``/``x-gzip`` with q > 0, or
    else ``*`` with q > 0 (RFC 9110 §12.5.3)."""
    found: dict[str, float] = {}
    for item in (header or "").split(",")[:32]:
        name, _, params = item.partition(";")
        name = name.strip().lower()
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v.strip())
                except ValueError:
                    q = 0.0
        found.setdefault("gzip" if name == "x-gzip" else name, q)
    q = found.get("gzip", found.get("*", 0.0))
    return q > 0


# --- frames -------------------------------------------------------------------------------

def parse_frame_list(text: str, limit: int) -> list[int]:
    items = text.split(",")
    if len(items) > limit:
        raise errors.BadRequest(f"at most {limit} frames per request")  # BI-31
    out = []
    for item in items:
        item = item.strip()
        if not item.isdigit() or len(item) > 9:
            raise errors.BadRequest("frame numbers must be positive integers")
        n = int(item)
        if n < 1:
            raise errors.BadRequest("frame numbers start at 1")
        out.append(n)
    return out


def _choose_frame_repr(request: web.Request, row: InstanceRow) -> tuple[str, str]:
    """(part media type, transfer syntax or '*') for a frames request."""
    stored_ts = row.frames.transfer_syntax_uid if row.frames else row.transfer_syntax_uid
    native_type = FRAME_MEDIA_TYPES.get(stored_ts)
    for rng in parse_accept(request.headers.get("Accept")):
        inner = rng.inner if rng.type == "multipart/related" else (
            rng.type if rng.type != "*/*" else "")
        ts = rng.transfer_syntax
        if inner in ("", OCTET) or rng.type == "*/*":
            if ts in (None, "1.2.840.10008.1.2.1"):
                return OCTET, "1.2.840.10008.1.2.1"
            if ts == "*" or ts == stored_ts:
                return OCTET, "*"
            continue
        if native_type and inner == native_type and ts in (None, "*", stored_ts):
            return native_type, "*"
    raise errors.NotAcceptable(
        f"frames are available as {OCTET} with transfer-syntax=* (stored "
        f"{stored_ts}) or 1.2.840.10008.1.2.1" +
        (f", or as {native_type}" if native_type else ""))


@requires("read", audit="study-read")
async def retrieve_frames(request: web.Request) -> web.StreamResponse:
    study, series, sop = uids(request)
    settings = request.app[ARCHIVE].settings.dicomweb
    numbers = parse_frame_list(request.match_info["frames"], settings.max_frames_per_request)
    retrieve = request.app[RETRIEVE]
    # Instance lookup, representation and the frame reads in one worker call (issue 6).
    media, served_ts, frames = await retrieve.instance_frames(
        study, series, sop, numbers, lambda row: _choose_frame_repr(request, row),
        actor=current_actor(request))
    base = base_url(request)
    where = f"{base}/studies/{study}/series/{series}/instances/{sop}/frames/"
    # Frames are at most max_frames_per_request parts of one instance, already in memory.
    return multipart_response(media, [
        (f"{media}; transfer-syntax={served_ts}", data, {"Content-Location": f"{where}{n}"})
        for n, data in zip(numbers, frames)], extra_params=f"; transfer-syntax={served_ts}")


# --- bulk data ----------------------------------------------------------------------------

def _parse_range(header: str, size: int) -> tuple[int, int]:
    """One ``bytes=a-b`` range → (start, end exclusive); 416 when unsatisfiable."""
    if not header.startswith("bytes=") or "," in header:
        raise errors.BadRequest("only a single bytes=start-end range is supported")
    start_s, _, end_s = header[6:].strip().partition("-")
    try:
        if start_s == "":
            n = int(end_s)
            start, end = max(size - n, 0), size
        else:
            start = int(start_s)
            end = int(end_s) + 1 if end_s else size
    except ValueError:
        raise errors.BadRequest("malformed Range header") from None
    end = min(end, size)
    if start < 0 or start >= end:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, end


@requires("read", audit="study-read")
async def retrieve_bulkdata(request: web.Request) -> web.StreamResponse:
    study, series, sop = uids(request)
    tag = request.match_info["tag"]
    if len(tag) != 8 or any(c not in "0123456789abcdefABCDEF" for c in tag):
        raise errors.BadRequest("bulk data is addressed by an 8-hex-digit tag")
    retrieve = request.app[RETRIEVE]
    row = await retrieve.instance(study, series, sop, actor=current_actor(request))
    ranges = parse_accept(request.headers.get("Accept"))
    single = any(r.type == OCTET for r in ranges) and not any(
        r.type == "multipart/related" for r in ranges[:1])
    if not single and not any(r.type in ("multipart/related", "*/*", "multipart/*")
                              for r in ranges):
        raise errors.NotAcceptable(f"bulk data is served as {OCTET}, single or multipart")
    data = await retrieve.bulk(row, tag)
    if single:
        headers = {"Accept-Ranges": "bytes"}
        if "Range" in request.headers:
            start, end = _parse_range(request.headers["Range"], len(data))
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
            return web.Response(status=206, body=data[start:end], content_type=OCTET,
                                headers=headers)
        return web.Response(body=data, content_type=OCTET, headers=headers)
    writer = MultipartWriter(request, OCTET)
    await writer.part(OCTET, [data])
    return await writer.finish()


# --- rendered and thumbnail ---------------------------------------------------------------

RENDER_TYPES = ("image/jpeg", "image/png", "image/gif")
#: Longest side of a thumbnail without a viewport parameter, in pixels.
THUMBNAIL_SIZE = 128


def choose_render_type(accept: str | None, preferred: str | None = None) -> str:
    if preferred:
        if preferred not in RENDER_TYPES:
            raise errors.NotAcceptable("rendered images are image/jpeg, image/png or image/gif")
        return preferred
    for rng in parse_accept(accept):
        for t in RENDER_TYPES:
            if matches(rng, t):
                return t
    raise errors.NotAcceptable("rendered images are image/jpeg, image/png or image/gif")


def parse_render_params(query) -> dict:
    out: dict = {"window": None, "viewport": None, "quality": 90}
    if "window" in query:
        parts = query["window"].split(",")
        try:
            center, width = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise errors.BadRequest("window is center,width[,function]") from None
        if width <= 0:
            raise errors.BadRequest("window width must be positive")
        out["window"] = (center, width)
    if "viewport" in query:
        parts = query["viewport"].split(",")
        try:
            vw, vh = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            raise errors.BadRequest("viewport is width,height") from None
        if not (0 < vw <= 8192 and 0 < vh <= 8192):
            raise errors.BadRequest("viewport must be between 1 and 8192 pixels")
        out["viewport"] = (vw, vh)
    if "quality" in query:
        q = query["quality"]
        if not q.isdigit() or not 1 <= int(q) <= 100:
            raise errors.BadRequest("quality is an integer from 1 to 100")
        out["quality"] = int(q)
    return out


@requires("read", audit="study-read")
async def retrieve_rendered(request: web.Request) -> web.Response:
    study, series, sop = uids(request)
    frame = 1
    if "frames" in request.match_info:
        numbers = parse_frame_list(request.match_info["frames"], 1)
        frame = numbers[0]
    media = choose_render_type(request.headers.get("Accept"))
    params = parse_render_params(request.query)
    if request.path.endswith("/thumbnail") and params["viewport"] is None:
        params["viewport"] = (THUMBNAIL_SIZE, THUMBNAIL_SIZE)  # frame-level thumbnail
    retrieve = request.app[RETRIEVE]
    row = await retrieve.instance(study, series, sop, actor=current_actor(request))
    data = await retrieve.rendered(row, frame, media_type=media, **params)
    return web.Response(body=data, content_type=media)


@requires("read", audit="study-read")
async def retrieve_thumbnail(request: web.Request) -> web.Response:
    study, series, sop = uids(request)
    choose_render_type(request.headers.get("Accept"), None)
    retrieve = request.app[RETRIEVE]
    size = THUMBNAIL_SIZE
    if "viewport" in request.query:
        vp = parse_render_params(request.query)["viewport"]
        size = max(vp)
    data = await retrieve.level_thumbnail(study, series, sop, size,
                                          actor=current_actor(request))
    return web.Response(body=data, content_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=300"})


# --- delete -------------------------------------------------------------------------------

@requires("delete", audit="delete")
async def delete(request: web.Request) -> web.Response:
    study, series, sop = uids(request)
    count = await request.app[INGEST].delete(study, series, sop,
                                            actor=current_actor(request))
    note_audit(request, object_count=count)
    return web.Response(status=204)

