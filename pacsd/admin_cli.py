"""Command line for accounts and the audit trail: ``pacsd user|token|audit ...``.

There is no default account and no default password (MLPS 5): the first administrator is
made here, on the server, by someone who can read its settings and database. Passwords
are prompted for (twice, not echoed) or read from ``--password-file`` (``-`` = standard
input), never taken as a command-line argument (it would sit in the shell history and
in ``ps``: MLPS 3). An API token is printed once and cannot be shown again (it is stored
as its SHA-256). Everything done here is written to the audit trail with actor ``local``.

Exit codes: 0 done; 1 ``audit verify`` found the trail tampered with; 2 bad arguments,
settings or a refused request (the message says why).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import getpass
import sys

from . import errors
from .config import load_settings

COMMANDS = ("user", "token", "audit", "study")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML settings file (see conf/pacsd.example.toml)")
    p.add_argument("--data-dir", help="data directory (index, blobs); default ./pacsd-data")
    p.set_defaults(log_level="WARNING")


def add_parsers(sub) -> None:
    """Add the ``user``, ``token`` and ``audit`` commands to the main parser."""
    from .services.security import ACTIONS, ROLES

    u = sub.add_parser("user", help="manage user accounts").add_subparsers(
        dest="action", required=True)
    a = u.add_parser("add", help="create a user (prompts for the password)")
    a.add_argument("name")
    a.add_argument("--role", action="append", required=True, choices=sorted(ROLES),
                   help="a role; repeat for several (sysadmin, secadmin and auditor "
                        "exclude each other)")
    a.add_argument("--password-file", help="read the password from this file's first "
                                           "line ('-' = standard input)")
    pw = u.add_parser("passwd", help="set a user's password (also unlocks)")
    pw.add_argument("name")
    pw.add_argument("--password-file")
    for p in (a, pw):
        p.add_argument("--temporary", action="store_true",
                       help="the user must change this password at the next login")
    ul = u.add_parser("unlock", help="lift a lockout after failed logins")
    ul.add_argument("name")
    ls = u.add_parser("list", help="list users")
    sc = u.add_parser("scope", help="set a user's institutions and clearances (R-A12)")
    sc.add_argument("name")
    for p in (a, sc):
        p.add_argument("--institution", action="append",
                       help="institution (hospital / campus) code whose studies the user "
                            "sees; repeat for several; '*' = all (default: [security] "
                            "default_institutions)")
        p.add_argument("--clearance", action="append", default=[],
                       help="sensitivity label the user may see (e.g. VIP); repeat")
    sc.add_argument("--default-institutions", action="store_true",
                    help="drop the user's own institutions: [security] "
                         "default_institutions apply")
    to = u.add_parser("totp", help="enrol a TOTP second factor (prints an otpauth:// URI "
                                    "and, with segno installed, a QR code; MLPS 4)")
    to.add_argument("name")
    to.add_argument("--remove", action="store_true",
                    help="remove the second factor (an administrator then cannot log in "
                         "until enrolled again)")
    to.add_argument("--no-qr", action="store_true", help="print the URI only")
    for p in (a, pw, ul, ls, sc, to):
        _common(p)

    t = sub.add_parser("token", help="manage API tokens").add_subparsers(
        dest="action", required=True)
    c = t.add_parser("create", help="create an API token (printed once)")
    c.add_argument("--user", required=True)
    c.add_argument("--scope", action="append", required=True,
                   help="one of " + ", ".join(sorted(ACTIONS)) + "; repeat or comma-separate")
    c.add_argument("--days", type=float, default=30.0, help="lifetime in days (default 30)")
    c.add_argument("--name", default="", help="a label, e.g. the system that uses it")
    c.add_argument("--institution", action="append",
                   help="narrow the token to these of its user's institutions; repeat")
    tl = t.add_parser("list", help="list API tokens (never the tokens themselves)")
    tl.add_argument("--user")
    r = t.add_parser("revoke", help="revoke an API token by its id")
    r.add_argument("id", type=int)
    for p in (c, tl, r):
        _common(p)

    au = sub.add_parser("audit", help="the audit trail").add_subparsers(
        dest="action", required=True)
    v = au.add_parser("verify", help="check the audit trail's hash chain (exit 1 if broken)")
    _common(v)
    ex = au.add_parser("export", help="write audit events to a CSV or Excel file "
                                      "(docs/security.md §6)")
    ex.add_argument("--format", choices=("csv", "xlsx"), default=None,
                    help="default: from the file name's extension, else csv")
    ex.add_argument("-o", "--output", required=True, metavar="FILE")
    ex.add_argument("--since", help="ISO 8601 date or time (UTC unless an offset is given)")
    ex.add_argument("--until", help="ISO 8601 date or time, exclusive")
    ex.add_argument("--type", action="append", default=[], metavar="EVENT",
                    help="an event type; repeat for several")
    ex.add_argument("--actor", help="actor id (user:3, ae:CT01) or user name")
    ex.add_argument("--outcome", choices=("success", "failure", "denied"))
    ex.add_argument("--study", help="StudyInstanceUID")
    ex.add_argument("--patient", help="PatientID: the events of that patient's studies")
    _common(ex)
    pr = au.add_parser("prune", help="delete events past [audit] retention_days (never "
                                     "younger than 180 days); the chain stays verifiable")
    pr.add_argument("--days", type=int, default=None,
                    help="retention in days for this run (default [audit] retention_days; "
                         "values below 180 count as 180)")
    _common(pr)

    st = sub.add_parser("study", help="study security labels").add_subparsers(
        dest="action", required=True)
    lb = st.add_parser("label", help="show, or with --set replace, the sensitivity labels "
                                     "of a study (MLPS 8)")
    lb.add_argument("uid", help="StudyInstanceUID (the study need not be stored yet)")
    lb.add_argument("--set", dest="labels", nargs="*", default=None, metavar="LABEL",
                    help="the study's labels from now on (none = remove all)")
    _common(lb)


def _read_password(args, name: str) -> str:
    path = getattr(args, "password_file", None)
    if path == "-" or (path is None and not sys.stdin.isatty()):
        line = sys.stdin.readline()
    elif path is not None:
        with open(path, encoding="utf-8") as fh:
            line = fh.readline()
    else:
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            raise errors.BadRequest("the passwords differ")
        return first
    return line.rstrip("\r\n")


def _print_qr(uri: str) -> None:
    """A terminal QR code of ``uri`` when segno (the QR library) is installed."""
    try:
        import segno
    except ImportError:
        print("(install segno for a QR code: pip install segno)", file=sys.stderr)
        return
    segno.make(uri, error="m").terminal(out=sys.stdout, compact=True)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def run(args) -> int:
    from .services.security import open_security

    settings = load_settings(args.config, server__data_dir=args.data_dir)
    security, catalogue = open_security(settings)
    try:
        if args.command == "audit" and args.action in ("export", "prune"):
            from .audit_cli import run_audit
            return run_audit(args, settings, security)
        return _dispatch(args, security)
    except errors.PacsdError as exc:
        print(f"pacsd: {exc.reason}", file=sys.stderr)
        return 2
    finally:
        catalogue.close()


def _dispatch(args, security) -> int:
    cmd, action = args.command, args.action
    if cmd == "user" and action == "add":
        password = _read_password(args, args.name)
        pk = security.create_user(args.name, password, args.role, temporary=args.temporary)
        if args.institution is not None or args.clearance:
            security.set_user_scope(args.name, args.institution, args.clearance)
        print(f"user {args.name} created (user:{pk}, roles {', '.join(sorted(args.role))})")
    elif cmd == "user" and action == "scope":
        insts = None if args.default_institutions else (args.institution or [])
        security.set_user_scope(args.name, insts, args.clearance)
        print(f"{args.name}: institutions "
              f"{'(default)' if insts is None else ','.join(sorted(set(insts))) or '(none)'}"
              f", clearances {','.join(sorted(set(args.clearance))) or '(none)'}")
    elif cmd == "user" and action == "passwd":
        security.set_password(args.name, _read_password(args, args.name),
                              temporary=args.temporary)
        print(f"password of {args.name} changed")
    elif cmd == "user" and action == "totp":
        if args.remove:
            security.remove_totp(args.name)
            print(f"second factor of {args.name} removed")
            return 0
        secret, uri = security.enroll_totp(args.name)
        print(uri)
        if not args.no_qr:
            _print_qr(uri)
        print(f"Scan it (or enter the secret {secret}) in an authenticator app; {args.name} "
              "now logs in with the password and the app's 6-digit code (\"otp\"). "
              "Shown once.", file=sys.stderr)
    elif cmd == "user" and action == "unlock":
        security.unlock_user(args.name)
        print(f"{args.name} unlocked")
    elif cmd == "user" and action == "list":
        for u in security.list_users():
            state = "disabled" if u.disabled else (
                "locked" if security.is_locked(u) else
                "inactive" if security.is_inactive(u) else "active")
            insts = "(default)" if u.institutions is None else ",".join(u.institutions)
            print(f"user:{u.pk}\t{u.username}\t{','.join(u.roles)}\t{state}\t"
                  f"last login {_when(u.last_login_at)}\tinstitutions {insts}\t"
                  f"clearances {','.join(u.clearances) or '-'}")
    elif cmd == "token" and action == "create":
        scopes = [s.strip() for spec in args.scope for s in spec.split(",") if s.strip()]
        pk, token, expires = security.create_token(args.user, scopes, args.days,
                                                   name=args.name,
                                                   institutions=args.institution)
        print(token)
        print(f"token:{pk} for {args.user}, scopes {','.join(sorted(set(scopes)))}, "
              f"expires {_when(expires)}. Shown once: store it now.", file=sys.stderr)
    elif cmd == "token" and action == "list":
        now = security.clock()
        for t in security.list_tokens(args.user):
            state = "revoked" if t.revoked_at else ("expired" if t.expires_at <= now
                                                    else "valid")
            print(f"token:{t.pk}\tuser:{t.user_pk}\t{t.name}\t{','.join(t.scopes)}\t"
                  f"{state}\texpires {_when(t.expires_at)}")
    elif cmd == "token" and action == "revoke":
        security.revoke_token(args.id)
        print(f"token:{args.id} revoked")
    elif cmd == "study" and action == "label":
        if args.labels is not None:
            security.set_study_labels(args.uid, args.labels)
        print(" ".join(security.study_labels(args.uid)) or "(no labels)")
    elif cmd == "audit" and action == "verify":
        result = security.audit.verify()
        if not result.ok:
            print(f"audit trail TAMPERED: {result.problem} (seq {result.bad_seq}); "
                  f"{result.rows} rows read", file=sys.stderr)
            return 1
        print(f"audit trail intact: {result.rows} events, head seq {result.head_seq} "
              f"hash {result.head_hash}")
    return 0
