"""Command line for the archive's lifecycle: ``pacsd export`` and ``pacsd import-export``
(R-A11) and ``pacsd retention`` (R-A7). Both take the same ``--config`` / ``--data-dir`` / ``--store`` options
as ``serve`` and ``verify``, show a progress bar on a terminal and say with the exit
status whether they finished: 0 done / OK, 1 incomplete or problems found, 2 cannot run
(bad arguments, settings or archive). Everything done is in the audit trail (actor
``local``); nothing printed names a patient.
"""
from __future__ import annotations

import argparse
import contextlib
import re
import sys

from .progress import ProgressBar

COMMANDS = ("export", "retention", "import-export", "worklist")
_DATE = re.compile(r"\d{8}")


def _date(value: str) -> str:
    if not _DATE.fullmatch(value):
        raise argparse.ArgumentTypeError("dates are YYYYMMDD")
    return value


def _archive_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML settings file (see conf/pacsd.example.toml)")
    p.add_argument("--data-dir", help="data directory (index, blobs); default ./pacsd-data")
    p.add_argument("--store", action="append", default=[], metavar="URL",
                   help="a storage copy; repeatable; replaces [storage] url/copies")
    p.add_argument("--log-level", default="WARNING")
    p.set_defaults(http=None, dicom_port=None, ae_title=None, peer=[])


def add_parsers(sub) -> None:
    e = sub.add_parser("export", help="copy every stored object, the index and a "
                                      "manifest to a directory or bucket (R-A11)")
    _archive_options(e)
    what = e.add_mutually_exclusive_group(required=True)
    what.add_argument("--to", metavar="URL", dest="to_url",
                      help="target: a directory, file:// or s3://bucket/prefix URL")
    what.add_argument("--verify", metavar="URL", dest="verify_url",
                      help="re-check an export against its manifest")
    e.add_argument("--study", help="only this StudyInstanceUID")
    e.add_argument("--patient-id", help="only studies of this PatientID")
    e.add_argument("--date-from", type=_date, metavar="YYYYMMDD",
                   help="only studies with StudyDate on or after")
    e.add_argument("--date-to", type=_date, metavar="YYYYMMDD",
                   help="only studies with StudyDate on or before")
    e.add_argument("--endpoint-url", help="S3 endpoint of an s3:// target "
                                          "(default: [storage] endpoint_url)")
    e.add_argument("--region", help="S3 region of an s3:// target (default: [storage] region)")
    e.add_argument("--deidentify", action="store_true",
                   help="de-identified research export: PS3.15 Annex E Basic Application "
                        "Level Confidentiality Profile, new UIDs, no index dump (R-H3, R-E7)")
    e.add_argument("--deid-option", action="append", default=[], metavar="NAME",
                   help="with --deidentify: retain-full-dates, retain-patient-characteristics,"
                        " retain-device-identity, retain-institution-identity, "
                        "clean-descriptors, allow-burned-in; repeatable")
    e.add_argument("--authorization", metavar="'REF: reason'",
                   help="with --deidentify (required): the authorization record, e.g. "
                        "'IRB-2025-017: lung nodule study' (R-G2; audited)")

    im = sub.add_parser("import-export", help="import an export made by `pacsd export` "
                                               "(objects, versions, retention; R-A11)")
    _archive_options(im)
    im.add_argument("--from", dest="from_url", required=True, metavar="URL",
                    help="the export: a directory, file:// or s3://bucket/prefix URL")
    im.add_argument("--endpoint-url", help="S3 endpoint of an s3:// source")
    im.add_argument("--region", help="S3 region of an s3:// source")

    r = sub.add_parser("retention", help="retention periods, legal holds and purge "
                                         "(R-A7)").add_subparsers(dest="action", required=True)
    show = r.add_parser("show", help="the retention of one study")
    show.add_argument("study")
    hold = r.add_parser("hold", help="put a study under legal hold (no deletion)")
    hold.add_argument("study")
    hold.add_argument("--reason", required=True, help="why (no patient data)")
    rel = r.add_parser("release", help="clear a study's legal hold")
    rel.add_argument("study")
    rel.add_argument("--reason", required=True, help="why (no patient data)")
    visit = r.add_parser("visit", help="record HIS visit data of a study")
    visit.add_argument("study")
    visit.add_argument("--class", dest="visit_class", required=True,
                       choices=["outpatient", "inpatient"])
    visit.add_argument("--visit-date", type=_date, metavar="YYYYMMDD")
    visit.add_argument("--discharge-date", type=_date, metavar="YYYYMMDD")
    purge = r.add_parser("purge", help="delete studies whose retention has expired "
                                       "(two-phase, resumable)")
    purge.add_argument("--dry-run", action="store_true",
                       help="list what would be purged, change nothing")
    for p in (show, hold, rel, visit, purge):
        _archive_options(p)

    w = sub.add_parser("worklist", help="worklist visit columns (R-D2)").add_subparsers(
        dest="action", required=True)
    reindex = w.add_parser("reindex", help="re-read every stored study's visit number, "
                                           "card number, department and visit type with "
                                           "the current [worklist] settings")
    _archive_options(reindex)


def run(args, settings) -> int:
    from .errors import PacsdError

    try:
        if args.command == "export":
            return _export(args, settings)
        if args.command == "import-export":
            return _import(args, settings)
        if args.command == "worklist":
            return _worklist_reindex(settings)
        return _retention(args, settings)
    except PacsdError as exc:
        print(f"pacsd: {exc.reason}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _opened(settings, label: str | None = None):
    """(archive, audit trail, progress bar or None) for one command; on the way out the
    bar's line is ended, the audit trail flushed and the archive closed, in that order."""
    from .services.archive import Archive
    from .services.audit import AuditTrail

    archive = Archive.open(settings)
    audit = AuditTrail(archive.catalogue)
    bar = ProgressBar(label) if label else None
    try:
        yield archive, audit, bar
    finally:
        try:
            if bar is not None:
                bar.close()
            audit.flush_sync()
        finally:
            archive.close()


def _target(args, settings):
    from .services.export import Target

    st = settings.storage
    return Target(getattr(args, "from_url", None) or args.to_url or args.verify_url,
                  endpoint_url=args.endpoint_url or st.endpoint_url, key=st.key,
                  secret=st.secret, region=args.region or st.region)


def _export(args, settings) -> int:
    from .index.lifecycle import ExportFilter
    from .services.export import Exporter, verify_export
    from .services.security import LOCAL

    target = _target(args, settings)
    if args.verify_url:
        bar = ProgressBar("export")
        try:
            report = verify_export(target, progress=bar)
        finally:
            bar.close()
        for line in report.summary():
            print(line)
        return 0 if report.ok else 1
    if args.deidentify or args.authorization or args.deid_option:
        return _research_export(args, settings, target)
    with _opened(settings, "export") as (archive, audit, bar):
        flt = ExportFilter(args.study, args.patient_id, args.date_from, args.date_to)
        report = Exporter(archive, target, audit=audit, actor=LOCAL, progress=bar).run(flt)
    for line in report.summary():
        print(line)
    return 0 if report.complete else 1


def _import(args, settings) -> int:
    import asyncio

    from .services.import_export import Importer
    from .services.security import LOCAL

    args.to_url = args.verify_url = None
    source = _target(args, settings)
    with _opened(settings, "import") as (archive, audit, bar):
        report = asyncio.run(Importer(archive, source, audit=audit, actor=LOCAL,
                                      progress=bar).run())
    for line in report.summary():
        print(line)
    return 0 if report.ok else 1


def _retention(args, settings) -> int:
    from .services.retention import run_cli

    with _opened(settings, "purge") as (archive, audit, bar):
        return run_cli(archive, audit, args, progress=bar, out=print)


def _worklist_reindex(settings) -> int:
    """``pacsd worklist reindex`` (index/worklist.py; R-D2): after upgrading to schema 6
    or changing [worklist]. Prints a count only (no patient data); audited."""
    from .index.worklist import reindex
    from .services.security import LOCAL
    from .services.visit import columns_from_metadata

    with _opened(settings, "worklist reindex") as (archive, audit, bar):
        done = reindex(archive.catalogue.engine, columns_from_metadata(settings),
                       progress=(lambda n: bar("studies", n, None)) if bar else None)
        audit.record("worklist-reindex", actor=LOCAL, outcome="success",
                     detail={"studies": done})
    print(f"worklist reindex: {done} studies")
    return 0


def _research_export(args, settings, target) -> int:
    """``pacsd export --deidentify`` (services/research_export.py; R-H3, R-G2)."""
    from .errors import BadRequest
    from .index.lifecycle import ExportFilter
    from .services.export_target import redacted
    from .services.research_export import Authorization, ResearchExporter, parse_options
    from .services.security import LOCAL

    if not args.deidentify:
        raise BadRequest("--authorization and --deid-option go with --deidentify")
    with _opened(settings, "de-identified export") as (archive, audit, bar):
        try:
            authorization = Authorization.parse(args.authorization)
            options, allow = parse_options(args.deid_option)
        except BadRequest as exc:
            # The refused attempt is itself on the audit trail (R-G2, MLPS 9).
            audit.record("research-export", actor=LOCAL, outcome="denied",
                         location=redacted(target.url),
                         detail={"reason": exc.reason})
            raise
        flt = ExportFilter(args.study, args.patient_id, args.date_from, args.date_to)
        report = ResearchExporter(archive, target, authorization=authorization,
                                  options=options, allow_burned_in=allow, audit=audit,
                                  actor=LOCAL, progress=bar).run(flt)
    for line in report.summary():
        print(line)
    return 0 if report.complete else 1
