"""The one ingest path (STOW-RS, C-STORE, folder import, pull from PACS all come here).

Order (ARCHITECTURE "Ingest", reliability-matrix §7.2): the upload is already in a staging
file with its sha256 and size (hashed while streaming) → parse header (pydicom, worker
thread) → checks → blob durable in the store (fsync + rename + dir fsync; hash-verified)
→ one index transaction → only then "stored". A failure after the blob was newly written
removes that blob again, so a refused instance leaves nothing behind (BI-* rows: "nothing
of the bad part was stored"). Identical re-sends are idempotent (BI-25).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .. import errors, failpoints
from ..dicom import parse_instance
from ..model import ParsedInstance, StoreOutcome
from ..store import IntegrityMismatch, hash_digests
from ..store.crypto import key_scope
from .archive import Archive
from .compression import maybe_compress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagedFile:
    """An upload written to the store's staging area, hashed while it streamed in."""

    path: str
    sha256: str
    size: int
    #: Fast read-time digest hashed in the same pass (HashingWriter.digest); None: ingest
    #: computes it with the SHA-256 again before the object is stored.
    digest: str | None = None


@dataclass(frozen=True)
class Prepared:
    """An object whose blob is durable and not yet indexed (IngestService.prepare)."""

    staged: StagedFile
    parsed: ParsedInstance
    institution: str | None
    newly_written: bool


def _name(exc: errors.InstanceError, parsed: ParsedInstance) -> None:
    """Let the adapter name the instance in its FailedSOPSequence item."""
    exc.sop_class_uid = parsed.sop_class_uid
    exc.sop_instance_uid = parsed.sop_instance_uid


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


#: Preambles kept as received: all zeros, or a TIFF header (DICOM/TIFF dual-format files,
#: PS3.10 §7.5). Anything else is zeroed (BI-24).
_TIFF_MAGIC = (b"II*\0", b"MM\0*")


def _preamble_to_zero(head: bytes) -> bool:
    """Whether the first 132 bytes carry a preamble that must be zeroed (BI-24)."""
    return not (len(head) < 132 or head[128:132] != b"DICM" or head[:128] == bytes(128)
                or head.startswith(_TIFF_MAGIC))


def _sanitize_preamble(staged: StagedFile) -> StagedFile:
    """Zero a 128-byte preamble that could make the stored file double as an executable
    (CVE-2019-11687: PE/ELF headers in DICOM preambles). Only the preamble changes; the
    dataset bytes are untouched, so pixel data stays bit-exact (R-A5). The hash is
    recomputed for the file as stored."""
    with open(staged.path, "r+b") as fh:
        head = fh.read(132)
        if not _preamble_to_zero(head):
            return staged
        fh.seek(0)
        fh.write(bytes(128))
        fh.flush()
        fh.seek(0)
        sha, size, digest = hash_digests(fh)
    log.warning("zeroed a non-empty DICOM preamble on ingest (BI-24)")
    return StagedFile(staged.path, sha, size, digest)


def _with_digest(staged: StagedFile) -> StagedFile:
    """``staged`` with its fast digest, for callers that staged without HashingWriter's:
    both hashes in one pass, so the digest is of the bytes the SHA-256 names."""
    with open(staged.path, "rb") as fh:
        sha, size, digest = hash_digests(fh)
    if (sha, size) != (staged.sha256, staged.size):
        raise IntegrityMismatch("The staged object does not match its declared hash.")
    return StagedFile(staged.path, sha, size, digest)


def _implemented(plugins, hook: str) -> bool:
    """Whether a loaded plugin implements ``hook`` (pluggy's call with none costs more
    than skipping it: ~2-3 % of a tiny instance's ingest CPU, issue 6). True when the
    registry cannot tell (then the hook is called as before)."""
    pm = getattr(plugins, "pm", None)
    try:
        return bool(getattr(pm.hook, hook).get_hookimpls())
    except AttributeError:
        return True


def _referenced(a: Archive, sha256: str) -> bool:
    """Whether an index row (current instance or kept version) still needs the blob;
    when the index cannot tell, keep it (an orphan the scrubber reports, never a loss)."""
    try:
        return bool(a.catalogue.known_sha256([sha256]))
    except Exception:  # noqa: BLE001 - the index may be the reason for the refusal
        return True


class IngestService:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    async def ingest(self, staged: StagedFile, *, actor, expected_study_uid: str | None = None
                     ) -> StoreOutcome:
        """Store one staged Part 10 file for ``actor`` (``scoping.LOCAL`` for the console).
        Raises a :class:`pacsd.errors.InstanceError` subclass when the instance is refused
        (:class:`pacsd.errors.WriteDenied` when its study is outside the actor's data
        scope, R-A12), :class:`pacsd.errors.OutOfResources` when storage or index is
        unavailable. The staged file is consumed either way."""
        scope = self.archive.scoping.scope_for(actor, "write")
        return await self.archive.run(self._ingest_sync, staged, expected_study_uid, scope)

    async def ingest_bytes(self, data: bytes | bytearray, *, actor,
                           expected_study_uid: str | None = None) -> StoreOutcome:
        """Store one Part 10 object received whole in memory (small STOW-RS parts): the
        staging file is written, hashed and stored in ONE worker call, so the event loop
        never creates files (a file create can wait behind the filesystem journal while
        other threads fsync) and each instance costs one thread hand-off."""
        scope = self.archive.scoping.scope_for(actor, "write")
        return await self.archive.run(self._ingest_bytes_sync, data, expected_study_uid,
                                      scope)

    def ingest_bytes_sync(self, data: bytes | bytearray, *, actor,
                          expected_study_uid: str | None = None) -> StoreOutcome:
        """:meth:`ingest_bytes` for a caller that is itself a worker thread allowed to
        block (a DIMSE association's thread): the same ingest, run in the calling
        thread, without the two thread hand-offs through the event loop and the pool
        (issue 6: ~0.3 ms of event-loop CPU and four wake-ups per C-STORE)."""
        scope = self.archive.scoping.scope_for(actor, "write")
        return self._ingest_bytes_sync(data, expected_study_uid, scope)

    def ingest_sync(self, staged: StagedFile, *, actor,
                    expected_study_uid: str | None = None) -> StoreOutcome:
        """:meth:`ingest` in the calling thread (see :meth:`ingest_bytes_sync`)."""
        scope = self.archive.scoping.scope_for(actor, "write")
        return self._ingest_sync(staged, expected_study_uid, scope)

    def _ingest_bytes_sync(self, data: bytes | bytearray, expected_study_uid: str | None,
                           scope: tuple) -> StoreOutcome:
        staged, parsed = self._stage_bytes(data)
        try:
            return self._commit_named(staged, parsed, expected_study_uid, scope)
        except BaseException:
            _discard(staged.path)
            raise

    def _stage_bytes(self, data: bytes | bytearray) -> tuple[StagedFile, ParsedInstance]:
        limit = self.archive.settings.dicomweb.max_instance_bytes
        if len(data) > limit:
            raise errors.InstanceTooLarge(f"instance larger than {limit} bytes")
        if _preamble_to_zero(bytes(data[:132])):
            data = bytes(128) + bytes(data[128:])
            log.warning("zeroed a non-empty DICOM preamble on ingest (BI-24)")
        # Parsed from memory: a refused object never touches the disk.
        parsed = parse_instance(data)
        # One write syscall, both hashes over the bytes in place (issue 6 STOW CPU).
        path, sha, size, digest = self.archive.store.stage_bytes(data)
        return StagedFile(path, sha, size, digest), parsed

    def _ingest_sync(self, staged: StagedFile, expected_study_uid: str | None,
                     scope: tuple) -> StoreOutcome:
        # The staged file is removed here, in the worker, not in the awaiting coroutine:
        # a cancelled request must not pull the file from under a running store. On
        # success the store consumed it already (put_file(move=True)).
        try:
            return self._store(staged, expected_study_uid, scope)
        except BaseException:
            _discard(staged.path)
            raise

    def _store(self, staged: StagedFile, expected_study_uid: str | None, scope: tuple
               ) -> StoreOutcome:
        staged, parsed = self._parse_staged(staged)
        return self._commit_named(staged, parsed, expected_study_uid, scope)

    def _parse_staged(self, staged: StagedFile) -> tuple[StagedFile, ParsedInstance]:
        limit = self.archive.settings.dicomweb.max_instance_bytes
        if staged.size > limit:
            raise errors.InstanceTooLarge(f"instance larger than {limit} bytes")
        staged = _sanitize_preamble(staged)
        return staged, parse_instance(staged.path)

    def _commit_named(self, staged: StagedFile, parsed: ParsedInstance,
                      expected_study_uid: str | None, scope: tuple) -> StoreOutcome:
        prepared = self._prepare(staged, parsed, expected_study_uid)
        outcome = self._finish([prepared], scope)[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _prepare(self, staged: StagedFile, parsed: ParsedInstance,
                 expected_study_uid: str | None) -> Prepared:
        """Everything before the index transaction: checks, plugins' veto, the blob made
        durable (§7.2: fsync + rename + directory fsync)."""
        a = self.archive
        staged, parsed = maybe_compress(a, staged, parsed)  # R-A5 policy
        if staged.digest is None:
            staged = _with_digest(staged)
        try:
            if (expected_study_uid is not None
                    and parsed.study_instance_uid != expected_study_uid):
                raise errors.StudyMismatch("StudyInstanceUID of the instance differs from "
                                           "the study in the request URL")
            failpoints.hit("ingest.after_parse")
            # Plugins may refuse the instance before anything is stored (R-E6).
            if _implemented(a.plugins, "instance_received"):
                a.plugins.collect("instance_received", parsed=parsed)
            # Encryption at rest (R-G1): the object is sealed under its institution's key.
            institution = encryption_scope(a, parsed)
            with key_scope(institution):
                newly_written = a.store.put_file(staged.path, staged.sha256, staged.size,
                                                 move=True)
        except errors.InstanceError as exc:
            _name(exc, parsed)
            raise
        return Prepared(staged, parsed, institution, newly_written)

    def _finish(self, prepared: list[Prepared], scope: tuple
                ) -> list[StoreOutcome | Exception]:
        """The index rows of durable blobs (:meth:`_prepare`), committed together (one
        group on SQLite); per instance its outcome or the exception that refused it. A
        refused instance leaves nothing: the blob it newly wrote goes again."""
        a = self.archive
        try:
            # The write scope (R-A12) is checked inside the index transaction; a denial
            # rolls it back and removes the blob below, like any refused instance.
            # The institution code is computed once: a new study is filed under the code
            # its objects are sealed for (R-A12, R-G1).
            if len(prepared) == 1:
                pr = prepared[0]
                try:
                    results: list = [a.catalogue.store_instance(
                        pr.parsed, sha256=pr.staged.sha256, size=pr.staged.size,
                        scope=scope, institution=pr.institution, digest=pr.staged.digest)]
                except Exception as e:  # noqa: BLE001 - answered below
                    results = [e]
            else:
                results = a.catalogue.store_instances(
                    [(pr.parsed, pr.staged.sha256, pr.staged.size, pr.institution,
                      pr.staged.digest) for pr in prepared], scope=scope)
        except BaseException:
            for pr in prepared:
                self._drop_refused(pr)
            raise
        for pr, outcome in zip(prepared, results):
            if isinstance(outcome, BaseException):
                # The index refused it (duplicate with other content, hierarchy conflict,
                # database unavailable): nothing of this instance may remain.
                self._drop_refused(pr)
                if isinstance(outcome, errors.InstanceError):
                    _name(outcome, pr.parsed)  # the adapter's FailedSOPSequence item
                continue
            if not outcome.created and pr.newly_written:
                # Identical instance already indexed, but its blob was missing and we have
                # just restored it: a repair, worth a line in the log (no PHI: hash only).
                log.warning("restored missing blob %s on re-send", pr.staged.sha256[:16])
            # After the durable commit, never inside it (ARCHITECTURE "Plugins").
            a.plugins.fire("instance_stored", parsed=pr.parsed, outcome=outcome)
        return results

    def _drop_refused(self, pr: Prepared) -> None:
        """A blob we did not write ourselves belongs to an identical instance stored
        before; keep it. Lifecycle (R-A8): the bytes may also be a kept earlier version
        (an original re-sent after a correction, one copy of it just restored): keep
        those."""
        a = self.archive
        if pr.newly_written and not _referenced(a, pr.staged.sha256):
            try:
                a.store.delete(pr.staged.sha256)
            except Exception:  # the scrubber collects orphans later (§7.2)
                log.exception("could not remove the blob of a refused instance")

    # --- a STOW-RS request's parts: each made durable on its own, indexed together ----

    async def prepare_bytes(self, data: bytes | bytearray, *, expected_study_uid:
                            str | None = None) -> Prepared:
        """The first half of :meth:`ingest_bytes`: the object checked, parsed and its
        blob durable, not yet indexed (nothing acknowledged). :meth:`commit` indexes
        what the parts of one request prepared in one group (issue 6: one WAL commit per
        request instead of one per part). A blob prepared and never committed (the
        request was cancelled) is an orphan the scrubber reports, never an index row."""
        return await self.archive.run(self._prepare_bytes_sync, data, expected_study_uid)

    async def prepare(self, staged: StagedFile, *, expected_study_uid: str | None = None
                      ) -> Prepared:
        """:meth:`prepare_bytes` for a staged file (consumed either way)."""
        return await self.archive.run(self._prepare_staged_sync, staged, expected_study_uid)

    async def commit(self, prepared: list[Prepared], *, actor
                     ) -> list[StoreOutcome | Exception]:
        """Index prepared objects for ``actor`` (the write scope, R-A12, as in
        :meth:`ingest`): per object its outcome or the exception refusing it."""
        scope = self.archive.scoping.scope_for(actor, "write")
        return await self.archive.run(self._finish, prepared, scope)

    def _prepare_bytes_sync(self, data: bytes | bytearray, expected_study_uid: str | None
                            ) -> Prepared:
        staged, parsed = self._stage_bytes(data)
        try:
            return self._prepare(staged, parsed, expected_study_uid)
        except BaseException:
            _discard(staged.path)
            raise

    def _prepare_staged_sync(self, staged: StagedFile, expected_study_uid: str | None
                             ) -> Prepared:
        try:
            staged, parsed = self._parse_staged(staged)
            return self._prepare(staged, parsed, expected_study_uid)
        except BaseException:
            _discard(staged.path)
            raise

    async def delete(self, study: str, series: str | None = None, sop: str | None = None,
                     *, actor) -> int:
        """Remove from the index (one transaction), then the blobs; returns the count.
        Vetoed (409) inside retention or under legal hold (R-A7, services/retention.py);
        a study outside the actor's data scope is NotFound (R-A12, services/scoping.py)."""
        a = self.archive
        scope = a.scoping.scope_for(actor, "delete")
        # Out of scope must look missing, before any veto could tell it exists (R-A12).
        if await a.run(lambda: a.catalogue.metadata_etag(study, scope=scope)) is None:
            raise errors.NotFound("no such study")
        from .retention import check_deletable  # lifecycle: R-A7 veto
        await a.run(check_deletable, a, study)
        shas = await a.run(lambda: a.catalogue.delete(study, series, sop, scope=scope))
        count = len(shas)
        from .versions import drop_versions  # lifecycle: kept versions go too (R-A8)
        shas = list(dict.fromkeys(shas + await a.run(drop_versions, a, study, series, sop)))
        for sha in shas:
            await a.run(a.store.delete, sha)
        return count


def encryption_scope(a, parsed: ParsedInstance) -> str | None:
    """The institution code the study's objects are encrypted for (R-G1, R-A12)."""
    if getattr(parsed, "institution", None):
        return parsed.institution
    getter = getattr(a.catalogue, "institution_of", None)
    return (getter(parsed) or None) if getter is not None else None
