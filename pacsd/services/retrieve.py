"""The one retrieve path (WADO-RS, WADO-URI, ZIP download; later C-GET / C-MOVE / export).

Never a whole study in memory: callers iterate instances one at a time. Every byte served
is checked: whole objects against the fast digest recorded at ingest (XXH3-128, R-H1;
rows from before migration 10: their sha256), via the store, frames against the CRC32
recorded at ingest ("hash is the arbiter", reliability-matrix §3.2). A mismatch raises
:class:`pacsd.errors.DataUnavailable` and nothing of the bad bytes is sent (FT-6, FT-8).
Transcoding happens only when the client asks for another transfer syntax (R-A5:
lossless only; ``dicom.transcode`` verifies pixels bit-exact).
"""
from __future__ import annotations

import asyncio
import gzip
import os
import zlib
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

from .. import errors
from ..dicom import decode_frame, parse_instance, render, thumbnail, transcode
from ..model import BULK_BASE, InstanceRow
from ..store.base import object_ok
from .archive import Archive
from .cache import BytesLRU, SharedFileCache

#: Objects up to this size are read whole, verified, then sent (one read). Larger ones are
#: streamed in chunks with the hash checked at the end (the connection is aborted on a
#: mismatch, so a client never receives a complete-looking bad object).
WHOLE_READ_LIMIT = 64 * 1024**2
CHUNK = 1024**2
#: Objects up to this size are read on the event loop when every byte is in the page
#: cache (``BlobStore.read_framed_nowait``: a copy and the XXH3 check, ~0.05 ms per
#: 0.5 MB); a worker-pool hop per object cost more than that (issue 6, WADO-RS c=8).
INLINE_READ_LIMIT = 4 * 1024**2

#: Room for a part's head and tail in the answer's reused buffer (objects_as_stored
#: ``reuse``): a multipart head is ~130 bytes.
FRAME_ROOM = 1024
#: preadv flag "answer EAGAIN rather than wait for the device" (None where missing: the
#: store's own ``read_framed_nowait`` is used).
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
#: Transfer syntaxes whose frames are the stored bytes, unchanged, in Explicit VR LE form.
NATIVE_LE = {EXPLICIT_LE, IMPLICIT_LE}

#: Series/study metadata answers kept in memory, keyed by their ETag (issue 6: a viewer
#: asks for a series' metadata first; 300 instances are ~0.7 MB of JSON).
METADATA_CACHE_BYTES = 64 * 1024**2
#: Rendered frames and thumbnails kept in memory, keyed by the instance's sha256 and the
#: rendering parameters (a viewer asks for the same previews again when it scrolls back).
RENDER_CACHE_BYTES = 32 * 1024**2
#: Worker processes: the rendered images the workers share (files in
#: ``<data_dir>/render-cache``, made empty at start and removed at stop; server.py).
SHARED_RENDER_CACHE_BYTES = 128 * 1024**2
SHARED_RENDER_CACHE_DIR = "render-cache"
#: gzip level of cached metadata answers (compressed once per ETag, then served as is).
METADATA_GZIP_LEVEL = 6


def _consume(fut: "asyncio.Future") -> None:
    if not fut.cancelled():
        fut.exception()   # retrieved: no "exception was never retrieved" warning


def join_metadata(items: list[bytes], base_url: str) -> bytes:
    """The DICOM JSON array of the per-instance objects stored at ingest, with the bulk
    data URI template (``model.BULK_BASE``) replaced by ``base_url``."""
    placeholder = b'"BulkDataURI":"' + BULK_BASE.encode()
    replacement = b'"BulkDataURI":"' + base_url.encode()
    return (b"[" + b",".join(items) + b"]").replace(placeholder, replacement)


class RetrieveService:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.metadata_cache = BytesLRU(METADATA_CACHE_BYTES)
        self.render_cache = BytesLRU(RENDER_CACHE_BYTES)
        #: Worker processes (server.py): the render cache's second level, shared by the
        #: server's workers (cache.SharedFileCache); None in a single process.
        self.shared_render: SharedFileCache | None = None

    # --- which instances ----------------------------------------------------------------
    # Every lookup takes the actor (required) and is limited to its data scope
    # (services/scoping.py, R-A12): outside it is NotFound, exactly like missing (SEC-9).
    def _scope(self, actor: Any) -> tuple:
        return self.archive.scoping.scope_for(actor, "read")

    async def instances(self, study: str, series: str | None = None,
                        sop: str | None = None, *, actor: Any) -> list[InstanceRow]:
        return await self._listed(self.archive.catalogue.iter_instances, study, series,
                                  sop, actor)

    async def instance_files(self, study: str, series: str | None = None,
                             sop: str | None = None, *, actor: Any) -> list[InstanceRow]:
        """:meth:`instances` for answers of whole stored objects (WADO-RS instances,
        C-GET, C-MOVE): the rows carry no frame index or bulk data offsets
        (``Catalogue.iter_instance_files``); same scope, order and NotFound."""
        return await self._listed(self.archive.catalogue.iter_instance_files, study,
                                  series, sop, actor)

    async def _listed(self, iterate: Any, study: str, series: str | None, sop: str | None,
                      actor: Any) -> list[InstanceRow]:
        scope = self._scope(actor)
        rows = await self.archive.run(lambda: list(iterate(study, series, sop, scope=scope)))
        if not rows:
            raise errors.NotFound("no such study, series or instance")
        return rows

    async def instance(self, study: str, series: str, sop: str, *, actor: Any
                       ) -> InstanceRow:
        scope = self._scope(actor)
        row = await self.archive.run(lambda: self.archive.catalogue.get_instance(
            study, series, sop, scope=scope))
        if row is None:
            raise errors.NotFound("no such instance")
        return row

    # --- whole objects --------------------------------------------------------------------
    async def read_verified(self, row: InstanceRow) -> bytes:
        """The stored object, verified (DataUnavailable when no good copy exists): by the
        fast digest recorded at ingest when the row has one, else by its sha256."""
        return await self.archive.run(self.archive.store.read, row.sha256,
                                      expected_size=row.size, digest=row.digest)

    def read_cached(self, row: InstanceRow) -> bytes | bytearray | None:
        """The stored object, verified as by :meth:`read_verified`, when every byte of it
        is in the page cache (``BlobStore.read_framed_nowait``): never waits for a
        device, so it may run on the event loop or a DIMSE association thread without a
        hop to the worker pool. None: not cached, too large, or anything wrong with the
        copy — then :meth:`read_verified` reads it (and raises, falls back, repairs)."""
        if row.size > INLINE_READ_LIMIT:
            return None
        return self.archive.store.read_framed_nowait(
            row.sha256, b"", b"", expected_size=row.size, digest=row.digest)

    def _read_framed_into(self, path: str, row: InstanceRow, head: bytes, tail: bytes,
                          buf: bytearray) -> memoryview | None:
        """``head`` + the object + ``tail`` read into ``buf`` (from its start) when every
        byte of the object is in the page cache (``preadv(RWF_NOWAIT)``) and it passes
        the check of :meth:`read_verified`: a view of ``buf``. None: not all cached, or
        anything wrong with this copy (the caller's pool read then reads again, reports
        and, on a replicated store, falls back and repairs), exactly as
        ``BlobStore.read_framed_nowait``, which allocates a new buffer per object."""
        h, size = len(head), row.size
        end = h + size + len(tail)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_size != size:
                return None
            view = memoryview(buf)[:end]
            view[:h] = head
            body = view[h:h + size]
            got = 0
            while got < size:
                n = os.preadv(fd, [body[got:]], got, _RWF_NOWAIT)
                if n <= 0:
                    return None   # truncated since the fstat: the pool read reports it
                got += n
            if not object_ok(body, row.sha256, row.digest):
                return None
            view[h + size:] = tail
            return view
        except OSError:
            return None       # EAGAIN (not cached), EOPNOTSUPP, EIO ...
        finally:
            os.close(fd)

    async def object_chunks(self, row: InstanceRow, transfer_syntax: str
                            ) -> AsyncIterator[bytes]:
        """The instance as Part 10 bytes in ``transfer_syntax`` ('*' = as stored)."""
        if transfer_syntax in ("*", row.transfer_syntax_uid):
            if row.size <= WHOLE_READ_LIMIT:
                yield await self.read_verified(row)
                return
            it: Iterator[bytes] = self.archive.store.open_verified(row.sha256, CHUNK,
                                                                   digest=row.digest)
            while True:
                chunk = await self.archive.run(next, it, None)
                if chunk is None:
                    return
                yield chunk
        data = await self.read_verified(row)
        yield await self.archive.run(transcode, data, transfer_syntax)

    async def objects_as_stored(
            self, rows: list[InstanceRow],
            frame: Callable[[InstanceRow], tuple[bytes, bytes]] | None = None,
            reuse: bool = False,
    ) -> AsyncIterator[tuple[InstanceRow, AsyncIterator[bytes | bytearray | memoryview]]]:
        """(row, its chunks as stored) for each row, in order. An object whose bytes are
        all in the page cache is read and verified on the event loop
        (``read_framed_nowait``); otherwise on the worker pool, and then the next object
        is read there too while the caller sends the current one (at most two objects of
        one answer in memory). Objects over WHOLE_READ_LIMIT stream as before.

        ``frame(row)`` gives (head, tail) bytes to send around each object (a multipart
        part's headers and CRLF): the chunks then include them, read into one buffer
        with the object (``BlobStore.read_framed``), so a part is one socket write.

        ``reuse``: page-cached objects of a local store are read into ONE buffer for the
        whole answer (sized for its largest object; no new, zeroed 0.5 MB buffer per
        object), so a chunk given for an object is valid only until the caller asks for
        the next object: the caller must have written it to something that copies what
        it keeps (asyncio's socket transport on Python < 3.12) by then."""
        async def one(data: bytes | bytearray) -> AsyncIterator[bytes]:
            yield data

        async def streamed(row: InstanceRow) -> AsyncIterator[bytes]:
            assert frame is not None
            head, tail = frame(row)
            chunks = self.object_chunks(row, "*")
            first = await anext(chunks, b"")  # a missing object fails before the head
            yield head
            yield first
            async for c in chunks:
                yield c
            yield tail

        def read(row: InstanceRow) -> "asyncio.Future":
            if frame is None:
                return asyncio.ensure_future(self.read_verified(row))
            head, tail = frame(row)
            return asyncio.ensure_future(self.archive.run(
                self.archive.store.read_framed, row.sha256, head, tail,
                expected_size=row.size, digest=row.digest))

        shared: bytearray | None = None
        local = self.archive.store.local_path if reuse and _RWF_NOWAIT is not None else None

        def read_now(row: InstanceRow) -> bytes | bytearray | memoryview | None:
            nonlocal shared
            if row.size > INLINE_READ_LIMIT:
                return None
            head, tail = frame(row) if frame is not None else (b"", b"")
            path = local(row.sha256) if local is not None else None
            if path is not None and len(head) + len(tail) <= FRAME_ROOM:
                if shared is None:   # one buffer for the answer: its largest object
                    shared = bytearray(FRAME_ROOM + max(
                        r.size for r in rows if r.size <= INLINE_READ_LIMIT))
                return self._read_framed_into(path, row, head, tail, shared)
            return self.archive.store.read_framed_nowait(
                row.sha256, head, tail, expected_size=row.size, digest=row.digest)

        pending: asyncio.Future | None = None
        try:
            for i, row in enumerate(rows):
                if row.size > WHOLE_READ_LIMIT:
                    yield row, (self.object_chunks(row, "*") if frame is None
                                else streamed(row))
                    continue
                # Cached: read and verified here, on the event loop (no thread hop).
                data = None if pending is not None else read_now(row)
                if data is None:
                    task = pending if pending is not None else read(row)
                    pending = None
                    # Not cached (or a bad copy): the next one likely is not either;
                    # read it on the pool while this one is sent.
                    nxt = rows[i + 1] if i + 1 < len(rows) else None
                    if nxt is not None and nxt.size <= WHOLE_READ_LIMIT:
                        pending = read(nxt)
                    data = await task
                yield row, one(data)
        finally:
            if pending is not None:
                pending.cancel()
                # a read already running on the pool finishes there; its result is dropped
                pending.add_done_callback(_consume)

    # --- frames ---------------------------------------------------------------------------
    def _frames_as_stored(self, row: InstanceRow, numbers: list[int],
                          transfer_syntax: str) -> str | None:
        """Check the frame numbers; the transfer syntax served when the frames can be cut
        from the stored object as they are (None: they need decoding)."""
        fi = row.frames
        if fi is None:
            raise errors.NotFound("the instance has no pixel data")
        for n in numbers:
            if n < 1 or n > fi.number_of_frames:
                raise errors.NotFound(f"frame {n} does not exist "
                                      f"(the instance has {fi.number_of_frames})")
        stored_ts = fi.transfer_syntax_uid
        if not fi.needs_decode and (
                transfer_syntax == "*" or transfer_syntax == stored_ts
                or (transfer_syntax == EXPLICIT_LE and stored_ts in NATIVE_LE)):
            return stored_ts if transfer_syntax == "*" else transfer_syntax
        return None

    async def instance_frames(self, study: str, series: str, sop: str, numbers: list[int],
                              choose: Callable[[InstanceRow], tuple[str, str]], *,
                              actor: Any) -> tuple[str, str, list[bytes]]:
        """(media type, transfer syntax served, frames) of one instance. ``choose(row)``
        gives (media type, transfer syntax asked) from the request. The lookup and the
        reads of frames served as stored (offsets recorded at ingest, CRC-checked) are
        one worker call: the hop costs about as much as the page-cache read."""
        scope = self._scope(actor)

        def work() -> tuple[InstanceRow, str, str, list[bytes] | None]:
            row = self.archive.catalogue.get_instance(study, series, sop, scope=scope)
            if row is None:
                raise errors.NotFound("no such instance")
            media, ts = choose(row)
            served = self._frames_as_stored(row, numbers, ts)
            if served is None:
                return row, media, ts, None
            return row, media, served, [self._read_frame(row, n) for n in numbers]

        row, media, ts, out = await self.archive.run(work)
        if out is None:
            ts, out = await self.frames(row, numbers, ts)
        return media, ts, out

    async def frames(self, row: InstanceRow, numbers: list[int], transfer_syntax: str
                     ) -> tuple[str, list[bytes]]:
        """Frame bytes for 1-based ``numbers``; returns (transfer syntax served, frames).

        ``transfer_syntax`` '*' serves frames as stored (compressed stays compressed);
        Explicit VR LE serves native bytes, decoding only when the stored form is not
        already native little endian."""
        served = self._frames_as_stored(row, numbers, transfer_syntax)
        if served is not None:
            # One worker call for all frames: a thread hop costs about as much as a
            # page-cache read of a CT frame (benchmarks/RESULTS.md "frame").
            out = await self.archive.run(lambda: [self._read_frame(row, n) for n in numbers])
            return served, out
        assert row.frames is not None
        stored_ts = row.frames.transfer_syntax_uid
        if transfer_syntax not in ("*", EXPLICIT_LE):
            raise errors.NotAcceptable(
                f"frames can be served as stored ({stored_ts}) or as {EXPLICIT_LE}")
        data = await self.read_verified(row)
        limit = self.archive.settings.dicomweb.render_max_pixels
        out = [await self.archive.run(decode_frame, data, n, max_pixels=limit) for n in numbers]
        return EXPLICIT_LE, out

    def _read_frame(self, row: InstanceRow, n: int) -> bytes:
        fi = row.frames
        assert fi is not None
        store = self.archive.store

        def read() -> bytes:
            return b"".join(store.read_range(row.sha256, off, length)
                            for off, length in fi.fragments[n - 1])

        data = read()
        if zlib.crc32(data) != fi.crc32[n - 1]:
            # Never serve bad bytes (FT-6). A whole-object check moves a replicated store
            # to a good copy (and queues the repair of the bad one); read again from it.
            if not store.verify(row.sha256):
                raise errors.DataUnavailable("stored frame failed its integrity check")
            data = read()
            if zlib.crc32(data) != fi.crc32[n - 1]:
                raise errors.DataUnavailable("stored frame failed its integrity check")
        return data

    # --- bulk data ------------------------------------------------------------------------
    async def bulk(self, row: InstanceRow, tag: str) -> bytes:
        tag = tag.upper()
        if row.transfer_syntax_uid == DEFLATED and not row.bulk:
            # A deflated file has no file offsets for its values: inflate by transcoding
            # (lossless, verified) and cut the value from that (rare transfer syntax).
            data = await self.read_verified(row)
            plain = await self.archive.run(transcode, data, EXPLICIT_LE)
            parsed = await self.archive.run(parse_instance, plain)
            if tag not in parsed.bulk:
                raise errors.NotFound("no bulk data with that tag in this instance")
            offset, length = parsed.bulk[tag]
            return plain[offset:offset + length]
        if tag not in row.bulk:
            raise errors.NotFound("no bulk data with that tag in this instance")
        offset, length = row.bulk[tag]
        if row.size <= WHOLE_READ_LIMIT:
            data = await self.read_verified(row)
            return data[offset:offset + length]
        ok = await self.archive.run(self.archive.store.verify, row.sha256)
        if not ok:
            raise errors.DataUnavailable("stored object failed its integrity check")
        return await self.archive.run(self.archive.store.read_range, row.sha256, offset, length)

    # --- metadata -------------------------------------------------------------------------
    async def metadata_etag(self, study: str, series: str | None = None,
                            sop: str | None = None, *, actor: Any) -> str:
        scope = self._scope(actor)
        etag = await self.archive.run(lambda: self.archive.catalogue.metadata_etag(
            study, series, sop, scope=scope))
        if etag is None:
            raise errors.NotFound("no such study, series or instance")
        return etag

    async def metadata(self, study: str, series: str | None, sop: str | None,
                       base_url: str, *, actor: Any, gzipped: bool = False,
                       not_modified: Callable[[str], bool] | None = None
                       ) -> tuple[str, bytes | None]:
        """(ETag token, the DICOM JSON array) in one worker call; ``gzipped``: the array
        gzip-compressed. Built from the per-instance bytes stored at ingest (never
        re-parsed); series and study answers are kept in :attr:`metadata_cache` under
        their ETag, which the catalogue changes on every ingest, correction or delete
        below them, so a kept answer is never stale (checked against the database on
        every request). ``not_modified(token)`` true: the body is None (HTTP 304)."""
        scope = self._scope(actor)
        return await self.archive.run(self._metadata_sync, study, series, sop, base_url,
                                      scope, gzipped, not_modified)

    def _metadata_sync(self, study: str, series: str | None, sop: str | None,
                       base_url: str, scope: tuple, gzipped: bool,
                       not_modified: Callable[[str], bool] | None
                       ) -> tuple[str, bytes | None]:
        cat = self.archive.catalogue
        token = cat.metadata_etag(study, series, sop, scope=scope)
        if token is None:
            raise errors.NotFound("no such study, series or instance")
        if not_modified is not None and not_modified(token):
            return token, None
        cache = self.metadata_cache if sop is None else None
        key = (study, series, token, base_url)
        if cache is not None:
            hit = cache.get(key + (gzipped,))
            if hit is not None:
                return token, hit
        plain = cache.get(key + (False,)) if cache is not None and gzipped else None
        if plain is None:
            items = list(cat.iter_metadata(study, series, sop, scope=scope))
            if not items:   # deleted between the two reads
                raise errors.NotFound("no such study, series or instance")
            plain = join_metadata(items, base_url)
            if cache is not None:
                cache.put(key + (False,), plain)
        if not gzipped:
            return token, plain
        body = gzip.compress(plain, compresslevel=METADATA_GZIP_LEVEL, mtime=0)
        if cache is not None:
            cache.put(key + (True,), body)
        return token, body

    async def metadata_chunks(self, study: str, series: str | None, sop: str | None,
                              base_url: str, *, actor: Any) -> AsyncIterator[bytes]:
        """The DICOM JSON array (as :meth:`metadata`), for callers that iterate."""
        _, body = await self.metadata(study, series, sop, base_url, actor=actor)
        assert body is not None
        yield body

    # --- consumer formats -----------------------------------------------------------------
    async def rendered(self, row: InstanceRow, frame: int, *, media_type: str,
                       window: tuple[float, float] | None, viewport: tuple[int, int] | None,
                       quality: int) -> bytes:
        if row.frames is None:
            raise errors.Unprocessable("the instance has no pixel data to render")
        if frame < 1 or frame > row.frames.number_of_frames:
            raise errors.NotFound(f"frame {frame} does not exist")
        # The image depends only on the object's bytes (named by their sha256, verified
        # when it was rendered) and these parameters.
        key = ("rendered", row.sha256, frame, media_type, window, viewport, quality)

        async def make() -> bytes:
            data = await self.read_verified(row)
            return await self.archive.run(
                render, data, frame, media_type=media_type, window=window,
                viewport=viewport, quality=quality,
                max_pixels=self.archive.settings.dicomweb.render_max_pixels)
        return await self._render_cached(key, make)

    async def _render_cached(self, key: tuple, make: Callable[[], Awaitable[bytes]]
                             ) -> bytes:
        """A rendered image from the render cache: this process's memory, then (worker
        processes) the file cache the workers share, else ``make()`` it and keep it in
        both."""
        hit = self.render_cache.get(key)
        if hit is not None:
            return hit
        shared = self.shared_render
        if shared is not None:
            hit = await self.archive.run(shared.get, key)
            if hit is not None:
                self.render_cache.put(key, hit)
                return hit
        out = await make()
        self.render_cache.put(key, out)
        if shared is not None:
            await self.archive.run(shared.put, key, out)
        return out

    async def level_thumbnail(self, study: str, series: str | None, sop: str | None,
                              size: int, *, actor: Any) -> bytes:
        """Thumbnail of a study, series or instance: the middle one of its instances with
        pixel data. Study and series thumbnails are kept under the metadata ETag (which
        changes when an instance is added or removed below), so a repeat costs one
        indexed query instead of listing every instance (issue 6)."""
        key = None
        if sop is None:
            scope = self._scope(actor)
            token = await self.archive.run(lambda: self.archive.catalogue.metadata_etag(
                study, series, None, scope=scope))
            if token is None:
                raise errors.NotFound("no such study, series or instance")
            key = ("level-thumbnail", study, series, token, size)

        async def make() -> bytes:
            rows = [r for r in await self.instances(study, series, sop, actor=actor)
                    if r.frames is not None]
            if not rows:
                raise errors.NotFound("nothing with pixel data to show")
            return await self.thumbnail(rows[len(rows) // 2], size)
        return await (make() if key is None else self._render_cached(key, make))

    async def thumbnail(self, row: InstanceRow, size: int = 128) -> bytes:
        if row.frames is None:
            raise errors.Unprocessable("the instance has no pixel data to render")
        async def make() -> bytes:
            data = await self.read_verified(row)
            return await self.archive.run(thumbnail, data, size=size)
        return await self._render_cached(("thumbnail", row.sha256, size), make)
