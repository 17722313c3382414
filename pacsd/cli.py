"""Command line: ``pacsd serve`` (and later import / verify / export / user ...)."""
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
    s.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.config, server__data_dir=args.data_dir,
                                 server__http=args.http, server__dicom_port=args.dicom_port,
                                 server__ae_title=args.ae_title)
        if args.command == "serve":
            from .server import serve
            serve(settings)
    except ConfigError as exc:
        print(f"pacsd: {exc.reason}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
