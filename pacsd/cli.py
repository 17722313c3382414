"""Command line: ``pacsd serve``, ``pacsd verify``, ``pacsd user|token|audit`` (admin_cli.py),
``pacsd import`` (import_cli.py), ``pacsd keys`` (keys_cli.py: encryption at rest, R-G1),
export / retention (lifecycle_cli.py), reconcile (reconcile_cli.py)."""
from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .config import ConfigError, load_settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pacsd", description="DICOMweb-native image archive")
    p.add_argument("--version", action="version", version=f"pacsd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the archive server")
    s.add_argument("--config", help="TOML settings file (see conf/pacsd.example.toml)")
    s.add_argument("--data-dir", help="data directory (index, blobs); default ./pacsd-data")
    s.add_argument("--http", help="HTTP listen address HOST:PORT; default 127.0.0.1:8042")
    s.add_argument("--dicom-port", type=int, help="DICOM port; default 11112")
    s.add_argument("--ae-title", help="AE title; default PACSD")
    s.add_argument("--peer", action="append", default=[], metavar="AET=HOST:PORT",
                   help="a known remote AE (C-MOVE destination); repeatable; "
                        "adds to [dimse] peers")
    s.add_argument("--store", action="append", default=[], metavar="URL",
                   help="a storage copy (directory, file:// or s3:// URL); repeatable; "
                        "replaces [storage] url/copies (R-A6)")
    s.add_argument("--workers", type=_workers, metavar="N",
                   help='HTTP worker processes: N, or "auto" = one per CPU; '
                        "replaces [server] workers (default auto)")
    s.add_argument("--log-level", default="INFO")
    v = sub.add_parser("verify", help="check every copy of every stored object (scrub)")
    v.add_argument("--config", help="TOML settings file (see conf/pacsd.example.toml)")
    v.add_argument("--data-dir", help="data directory (index, blobs); default ./pacsd-data")
    v.add_argument("--store", action="append", default=[], metavar="URL",
                   help="a storage copy; repeatable; replaces [storage] url/copies")
    v.add_argument("--repair", action="store_true",
                   help="rewrite bad or missing copies from a copy whose hash is valid")
    v.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its checkpoint")
    v.add_argument("--no-orphans", action="store_true",
                   help="skip the second pass (objects the index does not know)")
    v.add_argument("--orphan-grace-s", type=float, default=24 * 3600.0, metavar="S",
                   help="unreferenced objects younger than this are not orphans yet "
                        "(default 86400)")
    v.add_argument("--log-level", default="WARNING")
    v.set_defaults(http=None, dicom_port=None, ae_title=None)
    from . import admin_cli
    admin_cli.add_parsers(sub)  # user / token / audit (docs/security.md)
    from . import import_cli
    import_cli.add_parser(sub)  # import PATH... (docs/forwarding.md)
    sub.choices["import"].set_defaults(http=None, dicom_port=None, ae_title=None)
    from . import lifecycle_cli
    lifecycle_cli.add_parsers(sub)  # export / retention (R-A11, R-A7; docs/operations.md)
    from . import reconcile_cli
    reconcile_cli.add_parser(sub)  # reconcile with a PACS or a manifest (R-A10)
    from . import keys_cli
    keys_cli.add_parser(sub)  # encryption-at-rest keys (R-G1; docs/security.md)
    pl = sub.add_parser("plugins", help="list the plugins pacsd loads: name, version, hooks")
    pl.add_argument("--config", help="TOML settings file (plugins named in [plugins.*])")
    pl.add_argument("--json", action="store_true", help="print JSON")
    pl.set_defaults(data_dir=None, http=None, dicom_port=None, ae_title=None,
                    log_level="WARNING")
    _plugin_commands(sub)
    return p


def _workers(text: str) -> int:
    """``--workers``: a positive number or ``auto`` (0: one per CPU, [server] workers)."""
    if text.strip().lower() == "auto":
        return 0
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 1:
        raise argparse.ArgumentTypeError('a positive number or "auto"')
    return n


def _plugin_commands(sub) -> None:
    """Sub-commands of installed plugins (``register_commands`` hook, R-E6)."""
    from .plugins import Plugins

    plugins = Plugins()
    try:
        plugins.load(None)
    except Exception as exc:  # a broken plugin must not take the whole CLI down
        print(f"pacsd: could not load plugins: {exc}", file=sys.stderr)
        return
    plugins.collect("register_commands", subparsers=sub)


def _plugins(settings, args) -> int:
    import json

    from .plugins import Plugins

    plugins = Plugins()
    plugins.load(settings.plugins)
    rows = plugins.describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no plugins loaded")
    for row in rows:
        print(f"{row['name']}\t{row['version'] or '-'}\t{', '.join(row['hooks'])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = str(getattr(args, "log_level", "WARNING")).upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from . import admin_cli
        if args.command in admin_cli.COMMANDS:
            return admin_cli.run(args)
        # Plugin commands may omit the common options (register_commands).
        opt = lambda name: getattr(args, name, None)  # noqa: E731
        settings = load_settings(opt("config"), server__data_dir=opt("data_dir"),
                                 server__http=opt("http"), server__dicom_port=opt("dicom_port"),
                                 server__ae_title=opt("ae_title"),
                                 server__workers=opt("workers"))
        for spec in getattr(args, "peer", None) or ():
            settings.dimse.add_peer(spec)
        if getattr(args, "store", None):
            settings.storage.copies = [{"url": url} for url in args.store]
        if args.command == "verify":
            return _verify(settings, args)
        if args.command == "plugins":
            return _plugins(settings, args)
        if getattr(args, "pacsd_command", None) is not None:
            return int(args.pacsd_command(args, settings) or 0)
        if args.command == "import":
            from . import import_cli
            return import_cli.run(args, settings)
        if args.command == "keys":
            from . import keys_cli
            return keys_cli.run(args, settings)
        if args.command == "reconcile":
            from . import reconcile_cli
            return reconcile_cli.run(args, settings)
        from . import lifecycle_cli
        if args.command in lifecycle_cli.COMMANDS:
            return lifecycle_cli.run(args, settings)
        if args.command == "serve":
            from .malloc import keep_object_buffers, limit_arenas
            from .server import serve
            limit_arenas()  # before the worker threads/processes exist (pacsd/malloc.py)
            keep_object_buffers()
            return serve(settings)
    except ConfigError as exc:
        print(f"pacsd: {exc.reason}", file=sys.stderr)
        return 2
    return 0


# --- pacsd verify (R-A6 scrub; reliability-matrix FT-5..FT-9, FT-13) -----------------------

def _verify(settings, args) -> int:
    """Exit status: 0 every copy OK after the run, 1 problems remain, 2 cannot run."""
    import json
    import os

    from .errors import PacsdError
    from .services.archive import Archive
    from .services.scrub import Scrubber

    try:
        archive = Archive.open(settings)
    except ConfigError:
        raise
    except PacsdError as exc:
        print(f"pacsd: cannot open the archive: {exc.reason}", file=sys.stderr)
        return 2
    state_path = settings.data_path / "verify.progress"
    from .progress import ProgressBar

    bar = ProgressBar("verify")
    try:
        scrubber = Scrubber(archive.store, archive.catalogue, repair=args.repair,
                            orphans=not args.no_orphans, orphan_grace_s=args.orphan_grace_s,
                            progress=bar)
        copies = [c.url for c in scrubber.copies]
        after_pk = 0
        if args.resume and state_path.exists():
            saved = json.loads(state_path.read_text())
            if saved.get("copies") == copies:
                after_pk = int(saved.get("after_pk", 0))
                print(f"resuming after pk {after_pk}", file=sys.stderr)

        def checkpoint(pk: int) -> None:  # FT-13: a restarted run resumes here
            tmp = state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"after_pk": pk, "copies": copies}))
            os.replace(tmp, state_path)

        try:
            report = scrubber.run(after_pk, checkpoint=checkpoint)
        finally:
            bar.close()
        if report.complete:
            state_path.unlink(missing_ok=True)
    except PacsdError as exc:
        print(f"pacsd: verification stopped: {exc.reason}", file=sys.stderr)
        return 1
    finally:
        archive.close()
    for line in report.summary():
        print(line)
    for finding in report.findings:
        print(finding.line())
    if report.findings_dropped:
        print(f"... and {report.findings_dropped} more findings")
    print("result: OK" if report.ok else "result: PROBLEMS REMAIN")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
