"""``pacsd audit export`` and ``pacsd audit prune`` (docs/security.md §6; R-E3, R-E4,
MLPS 10, 13). Run on the server by someone who can read its settings and database, like
``pacsd audit verify``; both are themselves audited (actor ``local``)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from . import errors
from .progress import ProgressBar
from .services.audit import AuditFilter, is_event_type, parse_time
from .services.audit_export import TooManyRows, csv_chunks, write_xlsx
from .services.security import LOCAL


def _filter(args, audit) -> tuple[AuditFilter, dict]:
    for t in args.type:
        if not is_event_type(t):
            raise errors.BadRequest(f"unknown event type {t!r} (docs/audit-events.md)")
    uids = (args.study,) if args.study else None
    if args.patient:
        found = audit.studies_of_patient(args.patient)
        uids = tuple(u for u in found if not args.study or u == args.study)
    flt = AuditFilter(since=parse_time(args.since, "--since") if args.since else None,
                      until=parse_time(args.until, "--until") if args.until else None,
                      event_types=tuple(args.type), actor=args.actor, outcome=args.outcome,
                      study_uids=uids, limit=None)
    described = {"since": flt.since, "until": flt.until, "type": list(args.type) or None,
                 "actor": args.actor, "outcome": args.outcome, "study": args.study,
                 "patient": True if args.patient else None}
    return flt, {k: v for k, v in described.items() if v is not None}


def _export(args, security) -> int:
    audit = security.audit
    out = Path(args.output)
    fmt = args.format or ("xlsx" if out.suffix.lower() == ".xlsx" else "csv")
    flt, described = _filter(args, audit)
    total = audit.count(flt)
    bar = ProgressBar("audit export")
    done = [0]

    def counted(n: int) -> None:
        done[0] += n
        bar("", done[0], total)

    tmp = out.with_name(out.name + ".part")
    try:
        if fmt == "csv":
            with open(tmp, "wb") as fh:
                for chunk in csv_chunks(audit.iter_filtered(flt), counted):
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            write_xlsx(tmp, audit.iter_filtered(flt), counted)
        os.replace(tmp, out)
    except TooManyRows as exc:
        tmp.unlink(missing_ok=True)
        raise errors.PayloadTooLarge(str(exc)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar("", done[0], total, final=True)
    audit.record("audit-export", actor=LOCAL, device="pacsd audit export",
                 object_count=done[0], detail={"format": fmt, "results": done[0],
                                               **described})
    print(f"{done[0]} audit events written to {out} ({fmt})")
    return 0


def _prune(args, settings, security) -> int:
    days = settings.audit.retention_days if args.days is None else args.days
    if days <= 0:
        print("[audit] retention_days is 0: the trail is kept forever; nothing pruned "
              "(give --days N to prune once)")
        return 0
    keep = None
    if settings.audit.syslog.enabled:  # never prune what the SOC has not received
        keep = security.audit.cursor("syslog") or 0
    n, anchor = security.audit.prune(days, keep_after_seq=keep)
    print(f"{n} audit events pruned (older than {security.audit.prune_bound(days)}); "
          f"chain anchored at seq {anchor.seq}, {anchor.pruned_rows} pruned in all")
    return 0


def run_audit(args, settings, security) -> int:
    if args.action == "export":
        return _export(args, security)
    if args.action == "prune":
        return _prune(args, settings, security)
    print(f"pacsd: unknown audit action {args.action}", file=sys.stderr)
    return 2
