"""The HTTP side of the driver: aiohttp sessions, a streaming multipart parser and a
closed-loop concurrency runner that times every request.

Latency is measured from sending the request to the last byte of the body; verification
(:mod:`benchmarks.verify`) runs after the clock stops, in the same task, so at high
concurrency the client's own CPU cost still shows up in throughput — which is why
:func:`benchmarks.phases.client_ceiling` measures the driver against a stub server once.
The client's CPU time is recorded for every measured phase as well.
"""
from __future__ import annotations

import asyncio
import gc
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp

from .verify import VerificationError


def new_session(concurrency: int) -> aiohttp.ClientSession:
    """A keep-alive session with room for ``concurrency`` connections and no cookies
    (each request sets its own Accept-Encoding). Idle connections are dropped after
    0.5 s, before a server's own keep-alive timeout (Orthanc: 1 s) can close one just
    as the next phase reuses it."""
    connector = aiohttp.TCPConnector(limit=max(concurrency, 1) + 4, limit_per_host=0,
                                     ttl_dns_cache=300, keepalive_timeout=0.5)
    timeout = aiohttp.ClientTimeout(total=600, sock_connect=10)
    return aiohttp.ClientSession(connector=connector, timeout=timeout,
                                 cookie_jar=aiohttp.DummyCookieJar(),
                                 skip_auto_headers=("User-Agent",))


def boundary_of(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        k, _, v = param.strip().partition("=")
        if k.strip().lower() == "boundary":
            return v.strip().strip('"')
    raise VerificationError(f"multipart response without boundary: {content_type!r}")


@dataclass
class Part:
    """One received part. ``expected`` is the key the lookup identified the part by
    (e.g. its SOP Instance UID) and ``exact`` whether its bytes equal the expected bytes;
    parts nobody identified carry their sha256 instead."""

    headers: dict[str, str]
    size: int = 0
    sha256: str = ""
    body: bytes | None = None
    expected: str | None = None
    exact: bool = False


#: lookup(first bytes of a part) -> (key, expected bytes) or None
Lookup = Callable[[bytes], "tuple[str, bytes] | None"]
PROBE = 1024


class MultipartStream:
    """Incremental ``multipart/related`` parser: feed chunks, collect :class:`Part` s.

    Two ways to check a part's body while it streams (never the whole response in
    memory unless ``keep_bodies``):

    * with ``lookup``: the first bytes identify the part (say, the SOP Instance UID in its
      File Meta), after which the body is compared with the expected bytes (memcmp speed,
      ~10 GB/s) and the delimiter must follow exactly where the expected object ends;
    * otherwise the body is searched for the delimiter and hashed with sha256.

    Strict: the closing delimiter must be seen (:meth:`close` raises otherwise), so a
    truncated response is an error, not a shorter answer."""

    def __init__(self, boundary: str, *, keep_bodies: bool = False,
                 lookup: Lookup | None = None) -> None:
        self.delim = b"\r\n--" + boundary.encode("latin-1")
        self.first = b"--" + boundary.encode("latin-1")
        self.keep = keep_bodies
        self.lookup = lookup
        self.parts: list[Part] = []
        self.buf = bytearray()
        self.state = "preamble"
        self.done = False
        self._hash: Any = None
        self._body: list[bytes] | None = None
        self._cur: Part | None = None
        self._probed = False
        self._expect: bytes = b""
        self._off = 0
        self._same = True

    def feed(self, chunk: bytes) -> None:
        if self.done:
            return  # epilogue is ignored (RFC 2046)
        if self.state == "compare":
            self._compare(memoryview(chunk))
        else:
            self.buf += chunk
        while self._step():
            pass

    def _compare(self, mv: memoryview) -> None:
        """Consume up to the expected end of the current part from ``mv``; the rest goes
        to the buffer, where the delimiter must come next."""
        cur = self._cur
        assert cur is not None
        n = min(len(mv), len(self._expect) - self._off)
        if n:
            if self._same and not self._expect.startswith(mv[:n], self._off):
                self._same = False
            if self._body is not None:
                self._body.append(bytes(mv[:n]))
            self._off += n
            cur.size += n
        if self._off == len(self._expect):
            self.buf += mv[n:]
            self.state = "after"

    def _step(self) -> bool:
        buf = self.buf
        if self.state == "compare":
            if buf:
                data = bytes(buf)
                buf.clear()
                self._compare(memoryview(data))
                return True
            return False
        if self.state == "after":
            need = len(self.delim) + 2
            if len(buf) < need:
                return False
            if not buf.startswith(self.delim):
                # Longer than the expected object: a wrong answer. Keep parsing by search
                # so the response is still consumed to its end.
                self._same = False
                self.state = "body"
                return True
            tail = bytes(buf[len(self.delim):need])
            del buf[:need]
            self._finish_part()
            return self._after_delimiter(tail)
        if self.state == "preamble":
            # Tolerate a preamble: the first delimiter may lack the leading CRLF.
            if buf.startswith(self.first):
                idx = 0
            else:
                idx = buf.find(self.delim)
                if idx < 0:
                    return False
                idx += 2
            end = idx + len(self.first)
            if len(buf) < end + 2:
                return False
            tail = bytes(buf[end:end + 2])
            del buf[:end + 2]
            return self._after_delimiter(tail)
        if self.state == "headers":
            idx = buf.find(b"\r\n\r\n")
            if idx < 0:
                if len(buf) > 64 * 1024:
                    raise VerificationError("multipart part headers too long")
                return False
            headers: dict[str, str] = {}
            for line in bytes(buf[:idx]).decode("latin-1").split("\r\n"):
                if line:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
            del buf[:idx + 4]
            self._cur = Part(headers)
            self._hash = hashlib.sha256()
            self._body = [] if self.keep else None
            self._probed = self.lookup is None
            self._same = True
            self.state = "body"
            return True
        # body, searched for the delimiter
        idx = buf.find(self.delim)
        if not self._probed:
            if idx < 0 and len(buf) < PROBE:
                return False
            self._probed = True
            head = bytes(buf[:PROBE if idx < 0 else min(idx, PROBE)])
            found = self.lookup(head) if self.lookup else None
            if found is not None:
                assert self._cur is not None
                self._cur.expected, self._expect = found
                self._off = 0
                self.state = "compare"
                return True
        if idx < 0:
            keep = len(self.delim) + 1
            if len(buf) > keep:
                n = len(buf) - keep
                self._consume(memoryview(buf)[:n])
                del buf[:n]
            return False
        if len(buf) < idx + len(self.delim) + 2:
            if idx:
                self._consume(memoryview(buf)[:idx])
                del buf[:idx]
            return False
        self._consume(memoryview(buf)[:idx])
        tail = bytes(buf[idx + len(self.delim): idx + len(self.delim) + 2])
        del buf[:idx + len(self.delim) + 2]
        self._same = self._cur is not None and self._cur.expected is None and self._same
        self._finish_part()
        return self._after_delimiter(tail)

    def _after_delimiter(self, tail: bytes) -> bool:
        if tail == b"--":
            self.done = True
            self.buf = bytearray()
            return False
        if tail != b"\r\n":
            raise VerificationError("malformed multipart delimiter line")
        self.state = "headers"
        return True

    def _consume(self, mv: memoryview) -> None:
        assert self._cur is not None
        self._hash.update(mv)
        self._cur.size += len(mv)
        if self._body is not None:
            self._body.append(bytes(mv))

    def _finish_part(self) -> None:
        cur = self._cur
        assert cur is not None
        if cur.expected is None:
            cur.sha256 = self._hash.hexdigest()
        else:
            cur.exact = self._same and cur.size == len(self._expect)
        if self._body is not None:
            cur.body = b"".join(self._body)
        self.parts.append(cur)
        self._cur = None

    def close(self) -> list[Part]:
        if not self.done:
            raise VerificationError("multipart response ended before its closing delimiter")
        return self.parts


@dataclass
class Sample:
    latency_s: float
    nbytes: int  # payload bytes moved (request body for STOW, response body otherwise)
    ok: bool
    error: str = ""


@dataclass
class Measurement:
    """Result of one closed-loop run: samples plus wall time and client CPU seconds."""

    concurrency: int
    wall_s: float
    cpu_s: float
    samples: list[Sample] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.samples if not s.ok]


RequestFn = Callable[[int], Awaitable[tuple[int, Callable[[], None] | None]]]


async def run_closed_loop(n: int, concurrency: int, request: RequestFn) -> Measurement:
    """Issue ``n`` requests with ``concurrency`` workers. ``request(i)`` performs request i
    and returns (payload bytes, verify callback or None); the latency stops before the
    callback runs. Any exception or failed verification marks the sample failed."""
    counter = iter(range(n))
    samples: list[Sample] = []

    async def worker() -> None:
        for i in counter:
            t0 = time.perf_counter()
            try:
                nbytes, check = await request(i)
                dt = time.perf_counter() - t0
                if check is not None:
                    check()
                samples.append(Sample(dt, nbytes, True))
            except VerificationError as exc:
                samples.append(Sample(time.perf_counter() - t0, 0, False, f"wrong answer: {exc}"))
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                samples.append(Sample(time.perf_counter() - t0, 0, False,
                                      f"{type(exc).__name__}: {exc}"))

    # The driver's long-lived heap (data-set manifests and expected answers, many tracked
    # objects) is moved out of the collector's reach before measuring: otherwise every
    # parse of a large answer (a 300-instance QIDO answer is ~400 kB of JSON, ~25k
    # objects) triggers collections that walk it, 12.8 vs 3.5 ms per parse measured, and
    # the driver's CPU, not the server, sets the number (issue 6, session 8).
    gc.collect()
    gc.freeze()
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, n)))))
    finally:
        gc.unfreeze()  # later cycles in the driver's heap stay collectable
    return Measurement(concurrency, time.perf_counter() - t0, time.process_time() - cpu0,
                       samples)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]
