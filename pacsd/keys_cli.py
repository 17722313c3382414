"""``pacsd keys``: the key-encryption keys of encryption at rest (R-G1; docs/security.md
"Encryption at rest", store/crypto.py).

* ``init [--institution CODE]...`` creates ``[encryption] key_dir`` (0700) and the default
  key, and keys for the named institutions;
* ``list [--json]`` shows every key version (kid, institution, version, cipher, created,
  check value; never the key material), the current one of each institution marked;
* ``rotate [--institution CODE]... [--all]`` adds a new version (default key, the named
  institutions, or every one): new objects use it, old versions stay for reading — no
  object is re-encrypted;
* ``rewrap [--kid KID]...`` re-wraps the data key of objects under the current version
  of their institution's key (header only, the encrypted body is copied unchanged), e.g.
  before retiring an old version;
* ``encrypt-existing`` encrypts the objects stored in plaintext before encryption was
  turned on (each verified against its SHA-256 first).

The last two walk every copy of the store, show progress on a terminal (counts only, no
patient data) and can be interrupted and run again (each object is replaced atomically;
done objects are skipped). Exit status: 0 done, 1 some objects failed (listed by hash
prefix), 2 cannot run (configuration, keys).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .config import ConfigError, Settings

COMMAND = "keys"


def add_parser(sub) -> None:
    k = sub.add_parser("keys", help="encryption-at-rest keys: init, list, rotate, rewrap, "
                                    "encrypt-existing (docs/security.md)")
    ks = k.add_subparsers(dest="keys_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="TOML settings file (see conf/pacsd.example.toml)")
        p.add_argument("--data-dir", help="data directory (index, blobs)")
        p.add_argument("--log-level", default="WARNING")
        p.set_defaults(http=None, dicom_port=None, ae_title=None)

    p = ks.add_parser("init", help="create the key directory and the default key")
    p.add_argument("--institution", action="append", default=[], metavar="CODE",
                   help="also create a key for this institution code; repeatable")
    common(p)
    p = ks.add_parser("list", help="list key versions (never the key material)")
    p.add_argument("--json", action="store_true", help="print JSON")
    common(p)
    p = ks.add_parser("rotate", help="new key version: new objects use it, old ones stay "
                                     "readable")
    p.add_argument("--institution", action="append", default=[], metavar="CODE",
                   help="rotate this institution's key; repeatable (default: the default "
                        "key)")
    p.add_argument("--all", action="store_true", help="rotate every key")
    common(p)
    p = ks.add_parser("rewrap", help="re-wrap object data keys under the current key "
                                     "versions (headers only)")
    p.add_argument("--kid", action="append", default=[], metavar="KID",
                   help="only objects wrapped by this key version; repeatable")
    common(p)
    p = ks.add_parser("encrypt-existing", help="encrypt objects stored before encryption "
                                               "was turned on")
    common(p)


def run(args, settings: Settings) -> int:
    from .services.archive import open_keyring

    cmd = args.keys_command
    before = _kids_in(settings.encryption.key_dir)
    ring = open_keyring(settings, create=(cmd == "init"))
    if cmd == "list":
        _print_keys(ring, args.json)
        return 0
    if cmd == "init":
        for code in args.institution:
            ring.create(_code(code))
        _print_keys(ring, False)
        print(f"keys in {ring.key_dir}: back this directory up now, separately from the "
              "data (docs/operations.md)")
        _audit(settings, {"action": "init",
                          "kids": sorted({k.kid for k in ring.keys()} - before)})
        return 0
    if cmd == "rotate":
        scopes = ring.scopes() if args.all else ([_code(c) for c in args.institution]
                                                  or [""])
        kids = []
        for scope in scopes:
            kek = ring.rotate(scope or None)
            kids.append(kek.kid)
            print(f"rotated {scope or '(default)'}: new objects use {kek.kid}")
        _audit(settings, {"action": "rotate", "kids": kids})
        return 0
    if not settings.encryption.enabled and cmd == "encrypt-existing":
        raise ConfigError("[encryption] enabled is false: turn it on first, or new objects "
                          "would still be written in plaintext")
    return _walk(settings, ring, cmd, set(args.kid) if cmd == "rewrap" and args.kid else None)


def _kids_in(key_dir: str) -> set[str]:
    try:
        return {n[:-4] for n in os.listdir(os.path.expanduser(key_dir)) if n.endswith(".key")}
    except OSError:
        return set()


def _audit(settings: Settings, detail: dict, *, count: int | None = None,
           failed: bool = False) -> None:
    """One ``encryption-key`` audit event (MLPS: security configuration changes are
    audited); key ids and counts only, never key material."""
    from .index import Catalogue
    from .services.audit import AuditTrail
    from .services.security import LOCAL

    settings.data_path.mkdir(parents=True, exist_ok=True)
    cat = Catalogue(settings.index_url)
    try:
        cat.migrate()
        AuditTrail(cat, immediate=True).record(
            "encryption-key", outcome="failure" if failed else "success", actor=LOCAL,
            device="pacsd keys", object_count=count, detail=detail)
    finally:
        cat.close()


def _code(code: str) -> str:
    from .services.scoping import check_institution
    try:
        return check_institution(code)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _print_keys(ring, as_json: bool) -> None:
    rows = []
    for k in ring.keys():
        current = ring.latest(k.scope or None)
        rows.append({"kid": k.kid, "institution": k.scope, "version": k.version,
                     "cipher": k.alg, "created": k.created, "kcv": k.kcv,
                     "current": current is not None and current.kid == k.kid})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['kid']}\t{r['institution'] or '(default)'}\tv{r['version']}\t"
              f"{r['cipher']}\t{r['created']}\tkcv={r['kcv']}"
              + ("\tcurrent" if r["current"] else ""))


def _walk(settings: Settings, ring, cmd: str, kids: set[str] | None) -> int:
    """rewrap / encrypt-existing over every copy, with progress (counts only)."""
    from .errors import PacsdError
    from .index import Catalogue
    from .progress import ProgressBar
    from .store.crypto import EncryptedBlobStore
    from .store.replicated import open_replicated

    seg = settings.encryption.segment_size
    specs = settings.storage.copy_specs(settings.storage_url)
    copies = []
    try:
        for spec in specs:
            copies.append(open_replicated(
                [spec], wrap=lambda c: EncryptedBlobStore(c, ring, segment_size=seg)))
    except PacsdError as e:
        for c in copies:
            c.close()
        raise ConfigError(f"[storage]: {e.reason}") from None
    catalogue = Catalogue(settings.index_url) if cmd == "encrypt-existing" else None
    bar = ProgressBar(f"keys {cmd}")
    changed = failed = seen = 0
    try:
        for copy in copies:
            for sha in copy.iter_keys():
                seen += 1
                try:
                    if cmd == "rewrap":
                        done = copy.rewrap(sha, only_kids=kids) is not None
                    else:
                        done = copy.encrypt_existing(sha, _institution(catalogue, sha))
                except PacsdError as e:
                    failed += 1
                    print(f"{sha[:16]} {copy.url}: {e.reason}", file=sys.stderr)
                    continue
                changed += done
                bar(copy.url, seen, None, note=f"{changed} changed")
        bar("", seen, None, note=f"{changed} changed", final=True)
    finally:
        bar.close()
        for c in copies:
            c.close()
        if catalogue is not None:
            catalogue.close()
    verb = "re-wrapped" if cmd == "rewrap" else "encrypted"
    print(f"{seen} objects checked on {len(copies)} copies, {changed} {verb}, "
          f"{failed} failed")
    _audit(settings, {"action": cmd, "checked": seen, "changed": changed, "failed": failed,
                      "copies": len(copies)}, count=changed, failed=bool(failed))
    return 1 if failed else 0


def _institution(catalogue, sha: str) -> str | None:
    """The institution of the study an object belongs to (its key scope), None if the
    object is not indexed (a kept version or an orphan: default key)."""
    import sqlalchemy as sa

    from .index.schema import instances, studies

    stmt = (sa.select(studies.c.institution)
            .join(instances, instances.c.study_fk == studies.c.pk)
            .where(instances.c.sha256 == sha).limit(1))
    with catalogue.engine.connect() as conn:
        row = conn.execute(stmt).first()
    return (row[0] or None) if row is not None else None
