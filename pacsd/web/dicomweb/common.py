"""Helpers shared by the DICOMweb handlers: path UIDs, base URL, multipart responses."""
from __future__ import annotations

import secrets
from typing import AsyncIterator

from aiohttp import web

from ... import errors
from ...dicom import is_valid_uid
from ..keys import ARCHIVE
from ..middleware import STREAMING


def path_uid(request: web.Request, name: str) -> str:
    """A UID from the URL path, validated (BI-6, BI-32: never used to build a file path,
    but refused early with a clear 400 so no query runs on garbage)."""
    value = request.match_info[name]
    if not is_valid_uid(value):
        raise errors.BadRequest(f"{name} in the URL is not a valid DICOM UID")
    return value


def uids(request: web.Request) -> tuple[str, str | None, str | None]:
    mi = request.match_info
    study = path_uid(request, "study")
    series = path_uid(request, "series") if "series" in mi else None
    sop = path_uid(request, "instance") if "instance" in mi else None
    return study, series, sop


def base_url(request: web.Request) -> str:
    """The DICOMweb root as the client sees it (for RetrieveURL / BulkDataURI)."""
    settings = request.app[ARCHIVE].settings
    root = settings.dicomweb.root.rstrip("/")
    if settings.server.public_url:
        return settings.server.public_url.rstrip("/") + root
    return f"{request.scheme}://{request.host}{root}"


def new_boundary() -> str:
    return "pacsd-" + secrets.token_hex(12)


def multipart_response(part_type: str, parts: list[tuple[str, bytes, dict[str, str]]], *,
                       extra_params: str = "") -> web.Response:
    """A ``multipart/related`` answer whose parts are already in memory (frames): one
    body with a Content-Length, written in one go (issue 6: a chunked stream of a few
    small writes cost more than the frame read)."""
    boundary = new_boundary()
    out = []
    for content_type, data, headers in parts:
        head = f"--{boundary}\r\nContent-Type: {content_type}\r\n"
        for k, v in headers.items():
            head += f"{k}: {v}\r\n"
        out += [(head + "\r\n").encode(), data, b"\r\n"]
    out.append(f"--{boundary}--\r\n".encode())
    resp = web.Response(body=b"".join(out))
    resp.headers["Content-Type"] = (
        f'multipart/related; type="{part_type}"{extra_params}; boundary={boundary}')
    return resp


class MultipartWriter:
    """Streams a ``multipart/related`` response one part at a time (never the whole
    study in memory, ARCHITECTURE "Retrieve")."""

    def __init__(self, request: web.Request, part_type: str, *,
                 extra_params: str = "", headers: dict[str, str] | None = None,
                 status: int = 200) -> None:
        self.request = request
        self.boundary = new_boundary()
        self.response = web.StreamResponse(status=status, headers=headers or {})
        self.response.content_type = "multipart/related"
        self.response.headers["Content-Type"] = (
            f'multipart/related; type="{part_type}"{extra_params}; boundary={self.boundary}')
        self.started = False

    async def _start(self) -> None:
        if not self.started:
            await self.response.prepare(self.request)
            # From here on an error cannot become a status code any more: the error
            # middleware aborts the connection instead, so a client never takes a
            # truncated body for a complete one (FT-8).
            self.request[STREAMING] = self.response
            self.started = True

    async def part(self, content_type: str, chunks: AsyncIterator[bytes] | list[bytes],
                   headers: dict[str, str] | None = None) -> None:
        # The first chunk is produced before anything is written: when it fails (a
        # transcode that is not lossless, a damaged object) and no part was sent yet, the
        # client still gets a proper status code instead of a cut connection.
        it = aiter(chunks) if not isinstance(chunks, list) else None
        first = chunks if isinstance(chunks, list) else [await anext(it, b"")]
        await self._start()
        await self.response.write(self._head(content_type, headers))
        for c in first:
            await self.response.write(c)
        if it is not None:
            async for c in it:
                await self.response.write(c)
        await self.response.write(b"\r\n")

    async def framed(self, chunks: AsyncIterator[bytes]) -> None:
        """Write one part whose chunks already carry its head and closing CRLF
        (:meth:`frame`; ``RetrieveService.objects_as_stored(frame=...)``), with
        :meth:`part`'s rule: nothing is written before the first chunk exists."""
        it = aiter(chunks)
        first = await anext(it, b"")
        await self._start()
        # A view: the transport slices what the socket did not take at once, and a
        # slice of a view copies nothing (of a bytes or bytearray it would).
        await self.response.write(memoryview(first))
        async for c in it:
            await self.response.write(memoryview(c))

    def frame(self, content_type: str) -> tuple[bytes, bytes]:
        """(head, tail) around a part's body, as :meth:`part` writes them."""
        return self._head(content_type), b"\r\n"

    def _head(self, content_type: str, headers: dict[str, str] | None = None) -> bytes:
        head = f"--{self.boundary}\r\nContent-Type: {content_type}\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        return (head + "\r\n").encode()

    def sized(self, parts: list[tuple[str, int]]) -> None:
        """Announce every part (content type, body length) before the first: the answer
        gets a Content-Length instead of chunked encoding, whose framing made aiohttp
        join each part into a new bytes object on Python < 3.12 (a copy of every byte
        sent; issue 6, WADO-RS study at c=8). The parts must then be written exactly."""
        self.response.content_length = sum(
            len(self._head(ct)) + size + 2 for ct, size in parts) + \
            len(f"--{self.boundary}--\r\n")

    async def finish(self) -> web.StreamResponse:
        await self._start()
        await self.response.write(f"--{self.boundary}--\r\n".encode())
        await self.response.write_eof()
        return self.response
