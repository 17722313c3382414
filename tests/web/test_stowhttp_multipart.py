"""The streaming multipart reader of STOW-RS (pacsd/web/multipart_stream.py, issue 6):
the same parts whatever the pieces the body arrives in, and precise errors for bad bodies
(reliability-matrix BI-14, BI-17, BI-19, BI-20)."""
from __future__ import annotations

import random

import pytest

from pacsd import errors
from pacsd.web.multipart_stream import MAX_HEADER_BYTES, MultipartError, MultipartStream

pytestmark = pytest.mark.asyncio
B = "pacsd-test-bnd"


class Pieces:
    """A stand-in for aiohttp's StreamReader.readchunk: the body in the given pieces."""

    def __init__(self, body: bytes, cuts: list[int], chunked: bool = False) -> None:
        edges = [0, *sorted(set(c for c in cuts if 0 < c < len(body))), len(body)]
        self.pieces = [body[a:b] for a, b in zip(edges, edges[1:])]
        self.chunked = chunked

    async def readchunk(self):
        if self.chunked and random.random() < 0.2:
            return b"", True  # an HTTP chunk end without data
        if self.pieces:
            return self.pieces.pop(0), False
        return b"", False


def body_of(parts: list[tuple[dict, bytes]], preamble: bytes = b"",
            epilogue: bytes = b"") -> bytes:
    out = preamble + (b"\r\n" if preamble else b"")
    for headers, data in parts:
        out += f"--{B}\r\n".encode()
        out += b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{B}--\r\n".encode() + epilogue


async def read_all(stream: MultipartStream) -> list[tuple[dict, bytes]]:
    out = []
    while (h := await stream.next_part()) is not None:
        data = b""
        while piece := await stream.read_chunk():
            data += bytes(piece)
        out.append((h, data))
    return out


def sample_parts(rng: random.Random) -> list[tuple[dict, bytes]]:
    parts = []
    for _ in range(rng.randint(1, 5)):
        n = rng.choice([0, 1, 2, 17, 100, 5000, 70000])
        data = bytes(rng.getrandbits(8) for _ in range(min(n, 300))) * (n // 300 + 1)
        data = data[:n]
        # bytes that look like the start of a delimiter, but are not one
        if n > 40 and rng.random() < 0.5:
            k = rng.randint(0, n - 20)
            data = data[:k] + f"\r\n--{B}"[:rng.randint(1, len(B) + 3)].encode() + data[k:]
        parts.append(({"content-type": "application/dicom"}, data))
    return parts


@pytest.mark.parametrize("seed", range(40))
async def test_same_parts_whatever_the_pieces(seed):
    rng = random.Random(seed)
    parts = sample_parts(rng)
    body = body_of(parts, preamble=b"ignored preamble" if seed % 5 == 0 else b"",
                   epilogue=b"epilogue" if seed % 3 == 0 else b"")
    cuts = rng.choice([[], [rng.randint(0, len(body)) for _ in range(rng.randint(1, 30))],
                       list(range(0, len(body), rng.choice([1, 3, 19, 64])))])
    s = MultipartStream(Pieces(body, cuts, chunked=seed % 2 == 1), B, max_bytes=10**9)
    assert await read_all(s) == parts
    assert len(body) - 12 <= s.consumed <= len(body)  # the epilogue may stay unread


async def test_body_starting_with_crlf_delimiter_and_no_part_headers():
    body = f"\r\n--{B}\r\n\r\nabc\r\n--{B}  \r\nContent-Type: x\r\n\r\n\r\n--{B}--".encode()
    s = MultipartStream(Pieces(body, [5, 9]), B, max_bytes=10**6)
    assert await read_all(s) == [({}, b"abc"), ({"content-type": "x"}, b"")]


async def test_part_not_read_is_skipped():
    parts = [({"a": "1"}, b"x" * 1000), ({"b": "2"}, b"y")]
    s = MultipartStream(Pieces(body_of(parts), [100, 500]), B, max_bytes=10**6)
    assert await s.next_part() == {"a": "1"}
    assert await s.next_part() == {"b": "2"}
    assert bytes(await s.read_chunk()) == b"y"


@pytest.mark.parametrize("cut", [3, 40, 60, -10, -5, -3])
async def test_truncated_body_raises(cut):
    body = body_of([({"content-type": "application/dicom"}, b"z" * 50)])
    s = MultipartStream(Pieces(body[:cut], [7]), B, max_bytes=10**6)
    with pytest.raises(MultipartError):
        await read_all(s)


async def test_over_the_byte_limit_while_streaming():
    body = body_of([({}, b"z" * 5000)])
    s = MultipartStream(Pieces(body, list(range(0, len(body), 1000))), B, max_bytes=3000)
    with pytest.raises(errors.PayloadTooLarge):
        await read_all(s)


@pytest.mark.parametrize("bad", [
    f"--{B}junk\r\n\r\nx\r\n--{B}--".encode(),                # garbage after the delimiter
    f"--{B}\r\nno colon here\r\n\r\nx\r\n--{B}--".encode(),    # malformed header
    f"--{B}\r\nX: " .encode() + b"a" * (MAX_HEADER_BYTES + 10) + f"\r\n\r\nx\r\n--{B}--".encode(),
    f"--{B}\r\n".encode() + b"X: 1\r\n" * 200 + f"\r\nx\r\n--{B}--".encode(),
])
async def test_malformed_bodies_raise(bad):
    s = MultipartStream(Pieces(bad, list(range(0, len(bad), 4096))), B, max_bytes=10**7)
    with pytest.raises(MultipartError):
        await read_all(s)


async def test_no_delimiter_at_all_is_malformed():
    s = MultipartStream(Pieces(b"just some bytes", []), B, max_bytes=10**6)
    with pytest.raises(MultipartError):
        await s.next_part()
