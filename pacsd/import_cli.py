"""``pacsd import PATH...``: bring DICOM files into the archive (R-A3, R-H2).

Files, directories (recursively, in name order), a DICOMDIR (the folder it indexes) and
ZIP archives (each member) go through
the one ingest path (``IngestService``: parse, checks, durable blob, one index
transaction), exactly like STOW-RS and C-STORE, so an imported instance is stored,
refused or recognised as a duplicate by the same rules. Files without the Part 10 ``DICM``
marker (README, thumbnails) and DICOMDIR index files themselves are *skipped*, not
refused.

Resumable by nature: an interrupted import is simply run again; what is already stored
comes back as *duplicate* (identical re-send, BI-25) and costs a hash and a lookup.
Imported studies are routed by the forwarding rules like any other arrival (the running
server sends them; ``--no-forward`` opts out) and written to the audit trail as
``instances-stored`` (actor ``local``, device ``pacsd import``).

Output: a progress line on stderr (on a terminal), then a summary on stdout — stored,
duplicate, skipped, refused grouped by reason (file names only with ``--list-refused``:
paths can carry patient names). Exit status: 0 nothing refused; 1 some files refused or
failed; 2 the import could not run (bad settings, archive unavailable).
"""
from __future__ import annotations

from .progress import ProgressBar

import argparse
import asyncio
import os
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import errors
from .config import ConfigError, Settings

#: Concurrent ingests (parsing and fsync overlap; the worker pool bounds the rest).
DEFAULT_JOBS = 4
COPY_CHUNK = 1024 * 1024


def add_parser(sub) -> None:
    p = sub.add_parser("import", help="import DICOM files, folders or ZIP archives")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="a DICOM file, a directory (read recursively) or a .zip")
    g = p.add_argument_group("pull from another PACS (C-FIND, then C-GET or C-MOVE)")
    g.add_argument("--from-peer", metavar="AET",
                   help="query and retrieve from this AE ([dimse] peers or --peer)")
    g.add_argument("--peer", action="append", default=[], metavar="AET=HOST:PORT",
                   help="a remote AE's address; repeatable; adds to [dimse] peers")
    g.add_argument("--study-date", default="", metavar="RANGE",
                   help="StudyDate match, e.g. 20240101-20240131 or 20240105")
    g.add_argument("--patient-id", default="", metavar="ID", help="PatientID match")
    g.add_argument("--study", action="append", default=[], metavar="UID",
                   help="a StudyInstanceUID; repeatable")
    g.add_argument("--modality", default="", help="ModalitiesInStudy match, e.g. CT")
    g.add_argument("--method", choices=("get", "move"), default="get",
                   help="C-GET into this process (default) or C-MOVE to the running "
                        "server's AE title (the peer must know it)")
    p.add_argument("--config", help="TOML settings file (see conf/pacsd.example.toml)")
    p.add_argument("--data-dir", help="data directory (index, blobs); default ./pacsd-data")
    p.add_argument("--jobs", type=int, default=DEFAULT_JOBS, metavar="N",
                   help=f"files ingested at the same time (default {DEFAULT_JOBS})")
    p.add_argument("--no-zip", action="store_true",
                   help="treat .zip files as ordinary (non-DICOM) files")
    p.add_argument("--no-forward", action="store_true",
                   help="do not route the imported instances to [forward] destinations")
    p.add_argument("--list-refused", action="store_true",
                   help="print the path of every refused file (may show patient names)")
    p.add_argument("--log-level", default="WARNING")


@dataclass(frozen=True)
class Source:
    """One candidate file: a path, or a member of a ZIP archive."""

    path: str
    member: str | None = None
    #: A DICOMDIR (media index, not an instance): skipped, its files are walked.
    directory: bool = False

    def label(self) -> str:
        return f"{self.path}!{self.member}" if self.member else self.path


@dataclass
class Report:
    total: int = 0
    stored: int = 0
    duplicate: int = 0
    skipped: int = 0
    refused: Counter = field(default_factory=Counter)
    refused_files: list[tuple[str, str]] = field(default_factory=list)
    studies: Counter = field(default_factory=Counter)

    @property
    def done(self) -> int:
        return self.stored + self.duplicate + self.skipped + sum(self.refused.values())

    def lines(self, list_refused: bool) -> list[str]:
        out = [f"files: {self.total}", f"stored: {self.stored}",
               f"duplicate (already stored): {self.duplicate}",
               f"skipped (not DICOM): {self.skipped}",
               f"refused: {sum(self.refused.values())}"]
        for reason, n in self.refused.most_common():
            out.append(f"  {n} x {reason}")
        if list_refused:
            out += [f"  refused: {label}: {reason}" for label, reason in self.refused_files]
        return out


def _is_zip(path: str) -> bool:
    return path.lower().endswith(".zip") and zipfile.is_zipfile(path)


def collect(paths: list[str], *, zips: bool = True) -> Iterator[Source]:
    """Every candidate file, in a stable order (files, then directories walked sorted)."""
    for given in paths:
        p = Path(given)
        if p.is_file() and p.name.upper() == "DICOMDIR":
            p = p.parent  # a DICOMDIR lists the files below it: take them all
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    yield from _expand(os.path.join(root, name), zips)
        elif p.exists():
            yield from _expand(str(p), zips)
        else:
            raise ConfigError(f"no such file or directory: {given}")


def _expand(path: str, zips: bool) -> Iterator[Source]:
    if os.path.basename(path).upper() == "DICOMDIR":
        yield Source(path, directory=True)
    elif zips and _is_zip(path):
        with zipfile.ZipFile(path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if not info.is_dir():
                    yield Source(path, info.filename, directory=os.path.basename(
                        info.filename).upper() == "DICOMDIR")
    else:
        yield Source(path)


def import_progress(stream=None):
    """The progress line of ``pacsd import PATH``: ``progress(report, final=False)``."""
    bar = ProgressBar("import", stream)

    def progress(r: Report, final: bool = False) -> None:
        bar("", r.done, r.total, final=final, note=f"stored {r.stored} dup {r.duplicate} "
            f"refused {sum(r.refused.values())}")
    return progress


def _stage(store, src: Source, max_bytes: int):
    """Copy the file (or ZIP member) into the store's staging area, hashing it; None when
    it is not a Part 10 file."""
    from .services import StagedFile

    if src.directory:
        return None
    if src.member is None:
        fh = open(src.path, "rb")
    else:
        zf = zipfile.ZipFile(src.path)
        fh = zf.open(src.member)
    try:
        head = fh.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            return None
        writer = store.new_staging_file(max_size=max_bytes)
        try:
            writer.write(head)
            while chunk := fh.read(COPY_CHUNK):
                writer.write(chunk)
            path, sha, size = writer.finish()
        except BaseException:
            writer.abort()
            raise
        return StagedFile(path, sha, size, writer.digest)
    finally:
        fh.close()
        if src.member is not None:
            zf.close()


async def run_import(settings: Settings, paths: list[str], *, jobs: int = DEFAULT_JOBS,
                     zips: bool = True, forward: bool = True, progress=None) -> Report:
    from .services import Archive, AuditTrail, IngestService
    from .services.forward import ForwardingService
    from .services.jobs import queue_from_settings
    from .services.security import LOCAL

    sources = list(collect(paths, zips=zips))
    report = Report(total=len(sources))
    archive = Archive.open(settings)
    try:
        if forward:
            routing = ForwardingService(archive, queue_from_settings(archive))
            if routing.enabled:
                archive.plugins.register(routing, "pacsd-forward")
        ingest = IngestService(archive)
        audit = AuditTrail(archive.catalogue, run=archive.run)
        limit = asyncio.Semaphore(max(1, jobs))
        max_bytes = settings.dicomweb.max_instance_bytes

        async def one(src: Source) -> None:
            async with limit:
                try:
                    staged = await archive.run(_stage, archive.store, src, max_bytes)
                    if staged is None:
                        report.skipped += 1
                        return
                    outcome = await ingest.ingest(staged, actor=LOCAL)  # console (R-A12)
                except errors.PacsdError as exc:
                    report.refused[exc.reason] += 1
                    report.refused_files.append((src.label(), exc.reason))
                except OSError as exc:
                    reason = f"cannot read the file ({exc.strerror or type(exc).__name__})"
                    report.refused[reason] += 1
                    report.refused_files.append((src.label(), reason))
                else:
                    if outcome.created:
                        report.stored += 1
                        report.studies[outcome.study_instance_uid] += 1
                    else:
                        report.duplicate += 1
                finally:
                    if progress is not None:
                        progress(report)

        await asyncio.gather(*(one(s) for s in sources))
        location = " ".join(getattr(c, "url", "") for c in (
            getattr(archive.store, "copies", None) or [archive.store]))
        for study, count in report.studies.items():
            audit.record("instances-stored", actor=LOCAL, device="pacsd import",
                         study_uid=study, object_count=count, location=location,
                         detail={"source": "import"})
        await audit.flush()
    finally:
        archive.close()
    return report


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.jobs < 1:
        print("pacsd: --jobs must be at least 1", file=sys.stderr)
        return 2
    if args.from_peer:
        from .import_pull import run as run_pull
        return run_pull(args, settings)
    if not args.paths:
        print("pacsd: import needs PATH... or --from-peer AET", file=sys.stderr)
        return 2
    progress = import_progress()
    try:
        report = asyncio.run(run_import(settings, args.paths, jobs=args.jobs,
                                        zips=not args.no_zip, forward=not args.no_forward,
                                        progress=progress))
    except ConfigError:
        raise
    except errors.PacsdError as exc:
        print(f"pacsd: import stopped: {exc.reason}", file=sys.stderr)
        return 2
    progress(report, final=True)
    for line in report.lines(args.list_refused):
        print(line)
    return 1 if report.refused else 0
