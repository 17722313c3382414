"""STOW-RS (PS3.18 §10.5): POST /studies and /studies/{study}.

The body is read part by part with pacsd's streaming multipart reader
(``web/multipart_stream.py``: the received pieces as they are, one delimiter search per
piece, no copies; chunked transfer encoding included, BI-14), enforcing the byte limits as
it streams. A part of up to
``SMALL_PART`` bytes is collected in memory and handed whole to the one ingest path (one
worker call writes, hashes and stores it); a larger part is written to a staging file
(created on a worker thread) while its sha256 is computed. Each part is checked, parsed
and its blob made durable (``IngestService.prepare*``) while the next one is read, at most
``stow_concurrency`` parts per request in flight; the parts are then indexed together
(``IngestService.commit``: one group commit per request, at most ``COMMIT_BATCH`` parts
each, issue 6), each stored or refused on its own. Nothing is acknowledged before the
commit that holds its row.

Status codes follow reliability-matrix §6.1: 200 all stored; 202 some stored, some
refused; 409 none stored; 400 not multipart / no boundary / unparsable; 413 over a limit
(the body still lists what was stored before the limit was hit, so response and commit
state match, BI-17/BI-19); 415 unsupported Content-Type or Content-Encoding; 503 +
Retry-After when storage or index is down and nothing was stored.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import orjson
from aiohttp import web

from ... import errors, failpoints
from ...services import StagedFile
from ...services.ingest import Prepared
from ...model import StoreOutcome
from ..accept import matches, parse_accept, parse_media_type
from ..auth import audit_denied, current_actor, note_audit, requires
from ..multipart_stream import MultipartStream
from ..keys import ARCHIVE, INGEST
from .common import base_url, path_uid

log = logging.getLogger(__name__)

#: Parts up to this size are kept in memory (see module docstring).
SMALL_PART = 2 * 1024 * 1024
#: Prepared parts indexed in one group commit at most (catalogue.GROUP_MAX).
COMMIT_BATCH = 64
DICOM_JSON = "application/dicom+json"


def _check_request(request: web.Request) -> str:
    """Request-level checks before a byte of the body is read; returns the boundary."""
    settings = request.app[ARCHIVE].settings.dicomweb
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Decompressing request bodies invites gzip bombs (BI-16): refuse outright.
        raise errors.UnsupportedMediaType("Content-Encoding is not accepted; send the body "
                                          "uncompressed")
    length = request.content_length
    if length is not None and length > settings.max_request_bytes:
        raise errors.PayloadTooLarge(
            f"request body larger than {settings.max_request_bytes} bytes")  # BI-15
    ctype = request.headers.get("Content-Type")
    if not ctype:
        raise errors.BadRequest("Content-Type is required: multipart/related; "
                                'type="application/dicom"; boundary=...')
    mt = parse_media_type(ctype)
    if mt.type != "multipart/related":
        raise errors.UnsupportedMediaType(
            'STOW-RS accepts multipart/related; type="application/dicom"')  # BI-18
    part_type = mt.params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise errors.UnsupportedMediaType(
            "only application/dicom parts are supported (no metadata + bulk data STOW)")
    boundary = mt.params.get("boundary", "")
    if not boundary:
        raise errors.BadRequest("the multipart boundary parameter is missing")
    if len(boundary) > 70:
        raise errors.BadRequest("the multipart boundary is longer than 70 characters")
    if not all(" " <= c <= "~" for c in boundary):
        raise errors.BadRequest("the multipart boundary has characters outside ASCII")
    if not any(matches(r, DICOM_JSON) or matches(r, "application/json")
               for r in parse_accept(request.headers.get("Accept"))):
        raise errors.NotAcceptable("STOW-RS responses are application/dicom+json")
    return boundary


def _item(code: int | None, exc_or_outcome, url: str | None) -> dict:
    item: dict = {}
    cls = getattr(exc_or_outcome, "sop_class_uid", None)
    sop = getattr(exc_or_outcome, "sop_instance_uid", None)
    if cls:
        item["00081150"] = {"vr": "UI", "Value": [cls]}
    if sop:
        item["00081155"] = {"vr": "UI", "Value": [sop]}
    if url:
        item["00081190"] = {"vr": "UR", "Value": [url]}
    if code is not None:
        item["00081197"] = {"vr": "US", "Value": [code]}
    return item


class _Stow:
    """State of one STOW-RS request."""

    def __init__(self, request: web.Request, study: str | None, boundary: str) -> None:
        self.request = request
        self.boundary = boundary
        self.study = study
        self.archive = request.app[ARCHIVE]
        self.settings = self.archive.settings.dicomweb
        self.ingest = request.app[INGEST]
        self.actor = current_actor(request)  # writes are scoped like reads (R-A12)
        self.sem = asyncio.Semaphore(self.settings.stow_concurrency)
        self.tasks: list[asyncio.Task] = []
        self.failures: list[tuple[int, errors.PacsdError]] = []  # (part number, error)
        #: Parts whose blob is durable, waiting to be indexed together; and what was.
        self.prepared: list[tuple[int, Prepared]] = []
        self.stored: list[tuple[int, StoreOutcome]] = []
        self.stop_error: errors.PacsdError | None = None
        #: The last part received, handed on when the next one's headers (or the end of
        #: the body) are read (see :meth:`_run`).
        self.held: tuple[StagedFile | bytes, int] | None = None

    async def run(self) -> web.Response:
        try:
            return await self._run()
        finally:
            held, self.held = self.held, None
            if held is not None and isinstance(held[0], StagedFile):
                # Cancelled or failed before the part was handed on: no staging file
                # may stay behind (the one ingest path removes those it was given).
                with contextlib.suppress(OSError):
                    os.unlink(held[0].path)

    async def _run(self) -> web.Response:
        reader = MultipartStream(self.request.content, self.boundary,
                                 max_bytes=self.settings.max_request_bytes)
        part_no = 0
        # A received part is handed on (self.held) once the next part's headers or the
        # body's end are read: the only part of a request is then ingested whole in one
        # worker call, without the second hand-off of prepare + commit.
        while True:
            try:
                headers = await reader.next_part()
            except errors.PacsdError as exc:
                self.stop_error = exc
                break
            except Exception:
                # Truncated body, missing final boundary, malformed part headers (BI-19,
                # BI-20): keep what was fully received, report the rest.
                self.stop_error = errors.BadRequest(
                    f"the multipart body is malformed or truncated after part {part_no}")
                break
            if headers is None:
                break
            part_no += 1
            if part_no > self.settings.max_parts:
                self.stop_error = errors.PayloadTooLarge(
                    f"more than {self.settings.max_parts} parts in one request")
                break
            try:
                staged = await self._receive_part(reader, headers, part_no)
            except (errors.PayloadTooLarge, errors.InstanceTooLarge, errors.BadRequest,
                    errors.OutOfResources) as exc:
                # OutOfResources: the staging disk is full (FT-3); report, don't go on.
                self.stop_error = exc
                break
            except errors.InstanceError as exc:
                self.failures.append((part_no, exc))
                continue
            if self.held is not None:
                await self._dispatch(*self.held)
            self.held = (staged, part_no)
            if len(self.prepared) >= COMMIT_BATCH:
                await self._commit()  # bounds what waits in memory on long requests
        if self.held is not None:
            if self.tasks:
                await self._dispatch(*self.held)
            else:
                await self._ingest_whole(*self.held)
        await asyncio.gather(*self.tasks)
        await self._commit()
        failpoints.hit("web.before_response")
        return self._response(part_no)

    async def _receive_part(self, reader: MultipartStream, headers: dict[str, str],
                            part_no: int) -> StagedFile | bytes:
        """The part's bytes: in memory up to ``SMALL_PART`` (one copy of what the
        connection received, issue 6), else streamed to a staging file."""
        ptype = headers.get("content-type", "application/dicom")
        cte = headers.get("content-transfer-encoding", "binary").strip().lower()
        bad = None
        if ptype != "application/dicom" and \
                parse_media_type(ptype).type != "application/dicom":
            bad = errors.InvalidDicom(f"part {part_no} is not application/dicom")  # BI-23
        elif cte not in ("binary", "8bit", "7bit"):
            bad = errors.InvalidDicom(f"part {part_no} uses a Content-Transfer-Encoding; "
                                      "send binary parts")  # BI-21
        limit = self.settings.max_instance_bytes
        small = min(SMALL_PART, limit)
        pieces: list = []
        size = 0
        writer = None
        try:
            while True:
                try:
                    chunk = await reader.read_chunk()
                except errors.PacsdError:
                    raise
                except Exception:
                    raise errors.BadRequest(f"the body ends inside part {part_no}") from None
                if not chunk:
                    break
                if bad:
                    continue
                size += len(chunk)
                if writer is not None:
                    writer.write(chunk)
                elif size <= small:
                    # A view of the received bytes: kept until the part's end (the
                    # connection does not reuse them), joined once below.
                    pieces.append(chunk)
                elif size > limit:
                    raise errors.InstanceTooLarge(
                        f"The instance exceeds the configured maximum size of {limit} bytes.")
                else:  # too big for memory: spill to a staging file
                    writer = await self.archive.run(
                        self.archive.store.new_staging_file, max_size=limit)
                    for b in pieces:
                        writer.write(b)
                    pieces.clear()
                    writer.write(chunk)
            if bad:
                raise bad
            if size == 0:
                raise errors.InvalidDicom(f"part {part_no} is empty")  # BI-1
            if writer is None:
                return b"".join(pieces)
            path, sha, size = writer.finish()
            staged = StagedFile(path, sha, size, writer.digest)
            writer = None
            return staged
        finally:
            if writer is not None:
                writer.abort()

    async def _dispatch(self, staged: StagedFile | bytes, part_no: int) -> None:
        await self.sem.acquire()
        self.held = None
        self.tasks.append(asyncio.create_task(self._prepare(staged, part_no)))

    async def _ingest_whole(self, staged: StagedFile | bytes, part_no: int) -> None:
        """The only part of a request: checked, made durable and indexed in one worker
        call (``IngestService.ingest_bytes`` / ``ingest``)."""
        self.held = None
        ing, actor = self.ingest, self.actor
        outcome = await self._part(part_no, (lambda: ing.ingest_bytes(
            staged, actor=actor, expected_study_uid=self.study)) if isinstance(
            staged, bytes) else (lambda: ing.ingest(staged, actor=actor,
                                                    expected_study_uid=self.study)))
        if outcome is not None:
            self.stored.append((part_no, outcome))

    async def _prepare(self, staged: StagedFile | bytes, part_no: int) -> None:
        """Check, parse and make the part's blob durable (the one ingest path's first
        half); it is indexed with the request's other parts by :meth:`_commit`."""
        ing = self.ingest
        try:
            prepared = await self._part(part_no, (lambda: ing.prepare_bytes(
                staged, expected_study_uid=self.study)) if isinstance(staged, bytes)
                else (lambda: ing.prepare(staged, expected_study_uid=self.study)))
        finally:
            self.sem.release()
        if prepared is not None:
            # Looked up now, not before the await: _commit may have taken the list.
            self.prepared.append((part_no, prepared))

    async def _part(self, part_no: int, call):
        """``await call()``; None with the part's failure recorded when it is refused."""
        try:
            return await call()
        except errors.PacsdError as exc:
            self.failures.append((part_no, exc))
        except Exception:
            log.exception("unexpected error storing a part")
            self.failures.append((part_no, errors.PacsdError("processing failure")))
        return None

    async def _commit(self) -> None:
        """Index the prepared parts in one group commit (issue 6: one WAL commit per
        request, not one per part); each part is stored or refused on its own."""
        batch, self.prepared = sorted(self.prepared, key=lambda x: x[0]), []
        if not batch:
            return
        try:
            results = await self.ingest.commit([pr for _, pr in batch], actor=self.actor)
        except Exception as exc:  # noqa: BLE001 - nothing of the batch was stored
            if not isinstance(exc, errors.PacsdError):
                log.exception("unexpected error indexing the parts")
                exc = errors.PacsdError("processing failure")
            results = [exc] * len(batch)
        for (part_no, _), result in zip(batch, results):
            if isinstance(result, errors.PacsdError):
                self.failures.append((part_no, result))
            elif isinstance(result, BaseException):
                log.error("unexpected error indexing a part", exc_info=result)
                self.failures.append((part_no, errors.PacsdError("processing failure")))
            else:
                self.stored.append((part_no, result))

    def _response(self, parts: int) -> web.Response:
        base = base_url(self.request)
        stored = [r for _, r in sorted(self.stored, key=lambda x: x[0])]
        if not stored and not self.failures and self.stop_error is None:
            raise errors.BadRequest("the request contains no parts")
        per_study: dict[str, int] = {}
        for r in stored:
            per_study[r.study_instance_uid] = per_study.get(r.study_instance_uid, 0) + 1
        # R-E3: one archive-audit event per study stored (who, from where, where to).
        note_audit(self.request, studies=per_study, failed=len(self.failures))
        denied: dict[str, int] = {}
        for _, exc in self.failures:
            if isinstance(exc, errors.WriteDenied) and exc.study_instance_uid:
                denied[exc.study_instance_uid] = denied.get(exc.study_instance_uid, 0) + 1
        for study, count in denied.items():  # R-A12: one denial event per study
            audit_denied(self.request, "write", study_uid=study, object_count=count,
                         reason="outside data scope")
        body: dict = {}
        study_uids = {r.study_instance_uid for r in stored}
        if len(study_uids) == 1:
            body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study_uids.pop()}"]}
        if stored:
            body["00081199"] = {"vr": "SQ", "Value": [
                _item(None, r, f"{base}/studies/{r.study_instance_uid}/series/"
                               f"{r.series_instance_uid}/instances/{r.sop_instance_uid}")
                for r in stored]}
        failures = sorted(self.failures, key=lambda f: f[0])
        if self.stop_error is not None:
            failures.append((parts, self.stop_error))
        if failures:
            body["00081198"] = {"vr": "SQ", "Value": [
                _item(exc.failure_reason, exc, None) for _, exc in failures]}
        status = self._status(stored, failures)
        resp = web.Response(status=status, body=orjson.dumps(body),
                            content_type=DICOM_JSON)
        for part_no, exc in failures[:20]:
            # The standard has no per-item text; a Warning header carries the reason.
            reason = exc.reason.replace('"', "'")
            resp.headers.add("Warning", f'299 pacsd "part {part_no}: {reason}"')
        if status == 503:
            resp.headers["Retry-After"] = "30"
        return resp

    def _status(self, stored: list, failures: list[tuple[int, errors.PacsdError]]) -> int:
        if self.stop_error is not None and isinstance(
                self.stop_error, (errors.PayloadTooLarge, errors.InstanceTooLarge)):
            return 413
        if not failures:
            return 200
        if stored:
            return 202
        if self.stop_error is not None and isinstance(self.stop_error, errors.BadRequest):
            return 400
        if isinstance(self.stop_error, errors.OutOfResources):
            return 503
        if all(isinstance(exc, errors.OutOfResources) for _, exc in failures):
            return 503
        if all(isinstance(exc, errors.InstanceTooLarge) for _, exc in failures):
            return 413
        return 409


@requires("write", audit="instances-stored")
async def stow(request: web.Request) -> web.Response:
    study = path_uid(request, "study") if "study" in request.match_info else None
    boundary = _check_request(request)
    return await _Stow(request, study, boundary).run()
