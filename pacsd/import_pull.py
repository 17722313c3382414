"""``pacsd import --from-peer AET``: pull the history of another PACS (R-A3, R-H2).

1. C-FIND (Study Root, STUDY level) with the filters: ``--study-date`` range,
   ``--patient-id``, ``--study`` UIDs, ``--modality`` (``dimse/pull.py``).
2. A study already complete here (as many instances as the peer reports) is skipped;
   every other one becomes a ``pull.study.<AET>`` job in the persistent queue (deduplicated
   per peer and study), so an interrupted or partly failed import is resumed by running
   the same command again — nothing is fetched twice that is already stored, and a failed
   study is retried (with the queue's backoff between attempts within one run).
3. Each job retrieves its study — C-GET (the objects arrive on the same association and go
   through pacsd's C-STORE handler and the one ingest path) or C-MOVE to this archive's AE
   title (the running server's DIMSE listener receives them) — and checks that the
   index now holds what the peer reported.

Progress on stderr (studies, instances), a final report on stdout; exit status 0 when
every study found is complete here, 1 when some failed (run again to resume), 2 when the
pull could not start (unknown peer, peer down).
"""
from __future__ import annotations

from collections.abc import Callable

from .progress import ProgressBar

import argparse
import asyncio
import sys
from dataclasses import dataclass, field

from . import errors
from .config import ConfigError, Settings

KIND_PREFIX = "pull.study."


@dataclass
class PullReport:
    found: int = 0
    already_complete: int = 0
    pulled: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # study -> reason
    instances: int = 0

    def lines(self) -> list[str]:
        out = [f"studies found: {self.found}",
               f"already complete here: {self.already_complete}",
               f"pulled: {self.pulled}", f"instances stored: {self.instances}",
               f"failed: {len(self.failed)}"]
        reasons: dict[str, int] = {}
        for reason in self.failed.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        out += [f"  {n} x {reason}" for reason, n in sorted(reasons.items())]
        if self.failed:
            out.append("run the same command again to retry the failed studies")
        return out


def peer_address(settings: Settings, peer: str) -> tuple[str, int]:
    """``peer``'s host and port from ``[dimse] peers`` / ``--peer``; ConfigError if unknown."""
    peers = settings.dimse.peer_addresses()
    if peer not in peers:
        raise ConfigError(f"unknown peer {peer!r}: add it to [dimse] peers or give "
                          f"--peer {peer}=HOST:PORT")
    return peers[peer]


def console_puller(settings: Settings, archive, peer: str):
    """A :class:`~pacsd.dimse.pull.Puller` of ``peer`` that stores what it fetches through
    ``archive``'s one ingest path as the console operator (LOCAL), audited at once
    (``pacsd import --from-peer``, ``pacsd reconcile --fetch``). Call in the event loop."""
    from .dimse.access import DimseAccess
    from .dimse.bridge import Bridge
    from .dimse.context import ScpContext
    from .dimse.pull import Puller
    from .services import IngestService, QueryService, RetrieveService
    from .services.audit import AuditTrail
    from .services.security import LOCAL

    host, port = peer_address(settings, peer)
    ctx = ScpContext(settings=settings, bridge=Bridge(asyncio.get_running_loop()),
                     ingest=IngestService(archive), query=QueryService(archive),
                     retrieve=RetrieveService(archive),
                     access=DimseAccess(None, AuditTrail(archive.catalogue, immediate=True),
                                        fixed_actor=LOCAL))
    return Puller(settings, peer, host, port, ctx)


async def run_pull(settings: Settings, peer: str, *, method: str = "get",
                   filters: dict | None = None, jobs: int = 2, forward: bool = True,
                   progress: Callable[..., None] | None = None) -> PullReport:
    from .dimse.pull import PullError, RemoteStudy
    from .services import Archive
    from .services.security import LOCAL
    from .services.forward import ForwardingService
    from .services.jobs import JobFailed, JobService, queue_from_settings

    peer_address(settings, peer)  # an unknown peer fails before the archive opens
    settings.jobs.concurrency = max(1, jobs)
    archive = Archive.open(settings)
    report = PullReport()
    try:
        if forward:  # pulled instances are routed like any arrival (docs/forwarding.md)
            routing = ForwardingService(archive, queue_from_settings(archive))
            if routing.enabled:
                archive.plugins.register(routing, "pacsd-forward")
        puller = console_puller(settings, archive, peer)
        try:
            studies = await asyncio.to_thread(puller.find_studies, **(filters or {}))
        except PullError as exc:
            raise errors.OutOfResources(f"C-FIND at {peer}: {exc.reason}") from None
        report.found = len(studies)

        async def local_count(uid: str) -> int:
            try:
                # the operator at the console: the whole archive (services.security)
                return len(await puller.ctx.retrieve.instances(uid, actor=LOCAL))
            except errors.NotFound:
                return 0

        kind = KIND_PREFIX + peer
        service = JobService(archive)
        todo = 0

        async def pull(job) -> None:
            study = RemoteStudy(job.payload["study"], job.payload.get("instances"),
                                tuple(job.payload.get("sop_classes") or ()))
            before = await local_count(study.study_uid)
            fetch = puller.get_study if method == "get" else puller.move_study
            try:
                ops = await asyncio.to_thread(fetch, study)
            except PullError as exc:
                report.failed[study.study_uid] = exc.reason
                raise JobFailed(exc.reason, retry=exc.retry) from None
            after = await local_count(study.study_uid)
            report.instances += max(0, after - before)
            expected = study.instances
            if ops.failed or (expected is not None and after < expected):
                reason = (f"{ops.failed} sub-operations failed; {after} of "
                          f"{expected if expected is not None else '?'} instances here")
                report.failed[study.study_uid] = reason
                raise JobFailed(reason)
            report.failed.pop(study.study_uid, None)
            report.pulled += 1
            if progress is not None:
                progress(report, todo)

        service.register(kind, pull, max_attempts=settings.jobs.max_attempts)
        for study in studies:
            have = await local_count(study.study_uid)
            if study.instances is not None and have >= study.instances:
                report.already_complete += 1
                continue
            todo += 1
            await archive.run(service.queue.enqueue, kind, {
                "peer": peer, "study": study.study_uid, "instances": study.instances,
                "sop_classes": list(study.sop_classes), "method": method},
                dedupe_key=f"pull:{peer}:{study.study_uid}", reschedule=True)
        await service.run_due()
        if progress is not None:
            progress(report, todo, final=True)
    finally:
        archive.close()
    return report


def run(args: argparse.Namespace, settings: Settings) -> int:
    # --peer entries were added to [dimse] peers by pacsd.cli.main already.
    filters = {"study_date": args.study_date, "patient_id": args.patient_id,
               "study_uids": args.study, "modality": args.modality}
    try:
        report = asyncio.run(run_pull(settings, args.from_peer.strip(), method=args.method,
                                      filters=filters, jobs=args.jobs,
                                      forward=not args.no_forward, progress=_pull_progress()))
    except ConfigError:
        raise
    except errors.PacsdError as exc:
        print(f"pacsd: pull stopped: {exc.reason}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    return 1 if report.failed else 0


def _pull_progress() -> Callable[..., None]:
    bar = ProgressBar("pull")

    def progress(r: PullReport, todo: int, final: bool = False) -> None:
        bar("studies", r.pulled + len(r.failed), todo, final=final,
            note=f"{r.instances} instances")
    return progress
