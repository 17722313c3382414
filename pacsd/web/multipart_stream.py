"""A streaming reader of multipart bodies (RFC 2046 §5.1) over aiohttp's request stream,
for STOW-RS (issue 6: server CPU per stored instance).

aiohttp's ``MultipartReader`` copies each byte of a part several times (``read(n)``
joins, a ``prev + chunk`` window per chunk, ``unread_data`` of the rest, slices); for a
0.5 MB CT part that was 4-6 copies. This reader takes the pieces the connection received
as they are (``StreamReader.readchunk``: no join), finds the delimiter once per piece
(``bytes.find`` from an offset) and hands the part's bytes on as ``memoryview`` slices of
those pieces: the caller's copy (``b"".join`` or a file write) is the only one.

Limits are enforced while reading, before anything is buffered (reliability-matrix
BI-17, BI-20): the whole body (``max_bytes``, raw bytes including headers and
delimiters), and the header block of each part (``MAX_HEADER_BYTES``, ``MAX_HEADERS``).
A body that ends before the close delimiter, a delimiter line with trailing garbage or a
malformed header raises :class:`MultipartError` (BI-19: the caller keeps what it received
whole and reports the rest).
"""
from __future__ import annotations

from aiohttp import StreamReader

from .. import errors

#: The header block of one part at most (aiohttp's limit for one header line is 8190).
MAX_HEADER_BYTES = 16 * 1024
#: Header lines of one part at most (aiohttp's ``max_headers``).
MAX_HEADERS = 128

_LWSP = b" \t"


class MultipartError(ValueError):
    """The body is not a well-formed multipart body (truncated, bad delimiter line,
    malformed or oversized part headers)."""


class MultipartStream:
    """``async for``-free reader: ``await next_part()`` -> the part's headers (names
    lower-cased) or None after the close delimiter; then ``await read_chunk()`` until it
    returns ``b""`` (the part's end). A part not read to its end is skipped by the next
    ``next_part``."""

    __slots__ = ("_content", "_delim", "_dash", "_buf", "_pos", "_in_part", "_done",
                 "_started", "consumed", "max_bytes")

    def __init__(self, content: StreamReader, boundary: str, *, max_bytes: int) -> None:
        b = boundary.encode("latin-1")
        self._content = content
        self._delim = b"\r\n--" + b  # what ends a part's body
        self._dash = b"--" + b  # the first delimiter may open the body without CRLF
        self._buf: bytes = b""
        self._pos = 0
        self._in_part = False
        self._done = False
        self._started = False
        #: Raw bytes read from the request body so far.
        self.consumed = 0
        self.max_bytes = max_bytes

    async def _more(self) -> bytes:
        """The next piece the connection received (b"" at the body's end)."""
        content = self._content
        while True:
            data, end_of_http_chunk = await content.readchunk()
            if data:
                self.consumed += len(data)
                if self.consumed > self.max_bytes:
                    raise errors.PayloadTooLarge(   # BI-17: while streaming
                        f"request body larger than {self.max_bytes} bytes")
                return data
            if not end_of_http_chunk:
                return b""

    async def _fill(self, need: int) -> None:
        """At least ``need`` unread bytes in the buffer (small ``need`` only: copies)."""
        while len(self._buf) - self._pos < need:
            more = await self._more()
            if not more:
                raise MultipartError("the multipart body ends early")
            self._buf = self._buf[self._pos:] + more
            self._pos = 0

    async def next_part(self) -> dict[str, str] | None:
        """Skip to the next part; its headers, or None when the close delimiter came."""
        if self._done:
            return None
        if self._in_part:
            while await self.read_chunk():
                pass
        if not self._started:
            self._started = True
            await self._fill(len(self._dash))
            if self._buf.startswith(self._dash, self._pos):
                self._pos += len(self._dash)
            else:  # a preamble (RFC 2046): ignored up to the first delimiter
                self._in_part = True
                while await self.read_chunk():
                    pass
        # After a delimiter: "--" closes the body; else optional white space, then CRLF.
        await self._fill(2)
        if self._buf.startswith(b"--", self._pos):
            self._done = True
            return None
        buf, pos = self._buf, self._pos
        while True:
            end = buf.find(b"\r\n\r\n", pos)
            if end >= 0:
                break
            if len(buf) - pos > MAX_HEADER_BYTES:
                raise MultipartError("part headers too large")
            more = await self._more()
            if not more:
                raise MultipartError("the multipart body ends inside part headers")
            buf, pos = buf[pos:] + more, 0
            self._buf, self._pos = buf, pos
        if end - pos > MAX_HEADER_BYTES:
            raise MultipartError("part headers too large")
        first = buf.find(b"\r\n", pos)  # the rest of the delimiter line
        if buf[pos:first].strip(_LWSP):
            raise MultipartError("garbage after a multipart delimiter")
        headers = _parse_headers(buf[first + 2:end]) if end > first else {}
        self._pos = end + 4
        self._in_part = True
        return headers

    async def read_chunk(self) -> memoryview | bytes:
        """The next piece of the current part's body (a view of the received bytes:
        copy or write it before the next call's data is needed); ``b""`` at its end."""
        if not self._in_part:
            return b""
        delim = self._delim
        keep = len(delim) - 1  # bytes at the end that might begin a delimiter
        while True:
            buf, pos = self._buf, self._pos
            i = buf.find(delim, pos)
            if i >= 0:
                self._pos = i + len(delim)
                self._in_part = False
                return memoryview(buf)[pos:i] if i > pos else b""
            safe = len(buf) - keep
            if safe > pos:
                self._pos = safe
                return memoryview(buf)[pos:safe]
            more = await self._more()
            if not more:
                raise MultipartError("the multipart body ends inside a part")
            tail = buf[pos:]
            if len(more) < keep:  # too short to settle the seam: join (small copies)
                self._buf, self._pos = tail + more, 0
                continue
            # Every delimiter that begins in the tail ends within the seam.
            j = (tail + more[:keep]).find(delim) if tail else -1
            if 0 <= j < len(tail):
                self._buf, self._pos = more, j + len(delim) - len(tail)
                self._in_part = False
                return tail[:j]
            self._buf, self._pos = more, 0
            if tail:
                return tail


def _parse_headers(block: bytes) -> dict[str, str]:
    """``Name: value`` lines (CRLF-separated, obsolete folding joined), names lower-cased;
    a repeated name keeps its first value."""
    headers: dict[str, str] = {}
    lines = block.split(b"\r\n")
    if len(lines) > MAX_HEADERS:
        raise MultipartError("too many part headers")
    name = None
    for line in lines:
        if line[:1] in (b" ", b"\t") and name is not None:  # obsolete line folding
            headers[name] = (headers[name] + " " + line.strip().decode("latin-1")).strip()
            continue
        k, sep, v = line.partition(b":")
        k = k.strip()
        if not sep or not k or any(c <= 32 or c >= 127 for c in k):
            raise MultipartError("malformed part header")
        name = k.decode("ascii").lower()
        if name not in headers:
            headers[name] = v.strip(b" \t").decode("latin-1")
        else:
            name = None
    return headers
