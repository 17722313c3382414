"""``pacsd reconcile``: compare the archive with a hospital PACS or a manifest (R-A10).

Peer mode (``--peer AET``; its address from ``[dimse] peers`` or ``--peer AET=HOST:PORT``):

1. C-FIND the peer at STUDY level (``dimse/pull.py`` ``Puller.find_studies``: the
   ``--study-date`` range, ``--patient-id``, ``--study`` UIDs) asking for
   NumberOfStudyRelatedInstances, and list the same studies here (QueryService /
   RetrieveService with ``actor=LOCAL``: the operator at the console sees the whole archive).
2. A study whose counts differ (every study held on both sides with ``--deep``) is compared
   at IMAGE level (``Puller.find_instances``: SERIES, then IMAGE C-FIND), naming the SOP
   Instance UIDs missing on each side.
3. Each study is *equal*, *missing-here*, *missing-at-peer* or *different*.

Manifest mode (``--manifest FILE``): a ``manifest.csv`` of ``pacsd export`` or a plain
CSV ``StudyInstanceUID,SOPInstanceUID[,sha256]`` (header optional); objects are *missing*
(listed, not here), *extra* (here, in a study of the manifest or matching the filters, not
listed) or *different-hash* (the stored sha256 is not the listed one).

Remedies (peer mode): ``--fetch`` retrieves what is missing here from the peer through
the pull machinery (``Puller.get_study`` / ``move_study``: C-GET into this process, or
C-MOVE to the running server's AE title with ``--method move``) — a study missing here
whole, otherwise only the missing instances (IMAGE level, per series); ``--send`` sends the objects the peer lacks with the forwarding C-STORE SCU
(``dimse/scu.py``) — to the peer's address, or to the ``[forward.destinations]`` entry
named by ``--send-to``. Every run is written to the audit trail as ``reconcile`` events
(one summary event, one per study fetched or sent; UIDs and counts only).

Output: a table of the studies that differ and a summary on stdout; ``--json FILE`` the
full report. Progress on stderr (on a terminal). Exit status: 0 everything equal, 1
differences found (the remedies' outcome is printed; run again to check), 2 the
comparison could not run (unknown or unreachable peer, unreadable manifest).
"""
from __future__ import annotations

from .progress import ProgressBar

import argparse
import asyncio
import csv
import io
import os
import sys
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace

import orjson

from . import errors
from .config import ConfigError, ForwardDestination, Settings

DEVICE = "pacsd reconcile"
#: SOP UIDs listed per study and side in the table (the JSON report has them all).
DEFAULT_LIST_CAP = 10
#: SOP Instance UIDs per IMAGE-level C-GET / C-MOVE of --fetch.
FETCH_BATCH = 100
STATUSES = ("missing-here", "missing-at-peer", "different", "equal")


class _PeerAction(argparse.Action):
    """``--peer AET`` names the PACS to compare with; ``--peer AET=HOST:PORT`` also gives
    its address (added to ``[dimse] peers`` by ``pacsd.cli``, like ``pacsd import``)."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        aet, sep, _ = value.partition("=")
        if sep:
            namespace.peer = [*(namespace.peer or []), value]
        namespace.reconcile_peer = aet.strip()


def add_parser(sub) -> None:
    p = sub.add_parser("reconcile", help="compare the archive with a PACS (C-FIND) or a "
                                         "manifest; fetch or re-send what is missing")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--peer", action=_PeerAction, metavar="AET[=HOST:PORT]",
                     help="the PACS to compare with ([dimse] peers, or give its address)")
    src.add_argument("--manifest", metavar="FILE",
                     help="a manifest.csv of pacsd export (or the export folder), or "
                          "StudyInstanceUID,"
                          "SOPInstanceUID[,sha256] lines")
    p.add_argument("--study-date", default="", metavar="RANGE",
                   help="StudyDate match, e.g. 20240101-20240131")
    p.add_argument("--patient-id", default="", metavar="ID", help="PatientID match")
    p.add_argument("--study", action="append", default=[], metavar="UID",
                   help="a StudyInstanceUID; repeatable")
    p.add_argument("--deep", action="store_true",
                   help="compare the SOP Instance UIDs of every study held on both sides, "
                        "not only of those whose instance counts differ")
    p.add_argument("--fetch", action="store_true",
                   help="retrieve from the peer what is missing here")
    p.add_argument("--method", choices=("get", "move"), default="get",
                   help="--fetch by C-GET (default) or C-MOVE to the running server")
    p.add_argument("--send", action="store_true",
                   help="C-STORE to the peer what it lacks")
    p.add_argument("--send-to", metavar="NAME",
                   help="with --send: this [forward.destinations] dimse destination "
                        "instead of the peer's own address")
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    p.add_argument("--list-cap", type=int, default=DEFAULT_LIST_CAP, metavar="N",
                   help=f"SOP UIDs listed per study and side (default {DEFAULT_LIST_CAP})")
    p.add_argument("--config", help="TOML settings file (see conf/pacsd.example.toml)")
    p.add_argument("--data-dir", help="data directory (index, blobs); default ./pacsd-data")
    p.add_argument("--log-level", default="WARNING")
    p.set_defaults(peer=[], reconcile_peer=None, http=None, dicom_port=None, ae_title=None)


# --- the report ------------------------------------------------------------------------------

@dataclass
class StudyDiff:
    study: str
    status: str
    here: int | None = None          # instances here (None: study not here)
    there: int | None = None         # instances at the peer / in the manifest
    missing_here: list[str] = field(default_factory=list)
    missing_there: list[str] = field(default_factory=list)   # at the peer / extra
    different_hash: list[str] = field(default_factory=list)  # manifest mode


@dataclass
class Reconciliation:
    source: str                       # "peer AET" or "manifest FILE"
    studies: list[StudyDiff] = field(default_factory=list)
    fetched: dict[str, str] = field(default_factory=dict)   # study -> outcome
    sent: dict[str, str] = field(default_factory=dict)      # study -> outcome
    errors: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for s in self.studies if s.status == status)

    @property
    def equal(self) -> bool:
        return all(s.status == "equal" for s in self.studies)

    def summary(self) -> dict:
        out = {status: self.count(status) for status in STATUSES}
        out["studies"] = len(self.studies)
        out["instances missing here"] = sum(len(s.missing_here) for s in self.studies)
        out["instances missing there"] = sum(len(s.missing_there) for s in self.studies)
        out["instances with a different hash"] = sum(len(s.different_hash)
                                                     for s in self.studies)
        return out

    def as_json(self) -> bytes:
        return orjson.dumps({"source": self.source, "summary": self.summary(),
                             "studies": [asdict(s) for s in self.studies],
                             "fetched": self.fetched, "sent": self.sent,
                             "errors": self.errors}, option=orjson.OPT_INDENT_2)

    def lines(self, cap: int, manifest: bool) -> list[str]:
        there = "MANIFEST" if manifest else "PEER"
        other = "extra here" if manifest else "missing at peer"
        out = [f"reconcile with {self.source}"]
        diffs = [s for s in self.studies if s.status != "equal"]
        if diffs:
            out.append(f"{'STATUS':<16} {'HERE':>6} {there:>8}  STUDY")
            for s in diffs:
                out.append(f"{s.status:<16} {_n(s.here):>6} {_n(s.there):>8}  {s.study}")
                for label, uids in (("missing here", s.missing_here), (other, s.missing_there),
                                    ("different hash", s.different_hash)):
                    for uid in uids[:cap]:
                        out.append(f"    {label}: {uid}")
                    if len(uids) > cap:
                        out.append(f"    {label}: ... {len(uids) - cap} more (see --json)")
        for key, value in self.summary().items():
            out.append(f"{key}: {value}")
        out += [f"fetched {study}: {outcome}" for study, outcome in self.fetched.items()]
        out += [f"sent {study}: {outcome}" for study, outcome in self.sent.items()]
        out += [f"error: {e}" for e in self.errors]
        return out


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


# --- the local side --------------------------------------------------------------------------

async def _local_studies(archive, filters: dict) -> dict[str, int]:
    """StudyInstanceUID -> instances here, for the filters (the whole archive without)."""
    from .services import QueryService, RetrieveService
    from .services.security import LOCAL

    retrieve = RetrieveService(archive)
    out: dict[str, int] = {}
    query = QueryService(archive)
    params = [(k, v) for k, v in (
        ("StudyDate", filters.get("study_date", "")),
        ("PatientID", filters.get("patient_id", "")),
        ("StudyInstanceUID", ",".join(filters.get("study_uids") or []))) if v]
    page = max(1, archive.settings.dicomweb.qido_max_limit)
    offset = 0
    while True:
        result = await query.search("study", params + [
            ("includefield", "NumberOfStudyRelatedInstances"), ("limit", str(page)),
            ("offset", str(offset))], base_url="", actor=LOCAL)
        for item in result.items:
            uid = (item.get("0020000D", {}).get("Value") or [""])[0]
            n = (item.get("00201208", {}).get("Value") or [None])[0]
            if uid:
                out[uid] = int(n) if n is not None else len(
                    await retrieve.instances(uid, actor=LOCAL))
        if len(result.items) < page:
            return out
        offset += page


async def _local_instances(archive, study: str) -> dict:
    """SOP Instance UID -> InstanceRow of one study here (empty when absent)."""
    from .services import RetrieveService
    from .services.security import LOCAL
    try:
        rows = await RetrieveService(archive).instances(study, actor=LOCAL)
    except errors.NotFound:
        return {}
    return {r.sop_instance_uid: r for r in rows}


# --- peer mode -------------------------------------------------------------------------------

async def reconcile_peer(settings: Settings, peer: str, *, filters: dict, deep: bool = False,
                         fetch: bool = False, send: bool = False, method: str = "get",
                         send_to: str | None = None, progress=None) -> Reconciliation:
    from .dimse.pull import PullError, RemoteStudy
    from .import_pull import console_puller, peer_address
    from .services import Archive, RetrieveService
    from .services.audit import AuditTrail
    from .services.forward import ForwardingService, SendError
    from .services.jobs import queue_from_settings
    from .services.security import LOCAL

    host, port = peer_address(settings, peer)
    destination = _send_destination(settings, peer, host, port, send_to) if send else None
    report = Reconciliation(f"peer {peer}")
    archive = Archive.open(settings)
    audit = AuditTrail(archive.catalogue, run=archive.run)
    try:
        retrieve = RetrieveService(archive)
        puller = console_puller(settings, archive, peer)
        try:
            remote = {s.study_uid: s for s in await asyncio.to_thread(
                puller.find_studies, **filters)}
        except PullError as exc:
            raise errors.OutOfResources(f"C-FIND at {peer}: {exc.reason}") from None
        local = await _local_studies(archive, filters)
        uids = sorted(set(remote) | set(local))
        placement: dict[str, dict[str, str]] = {}  # study -> peer's SOP UID -> series
        for i, uid in enumerate(uids, 1):
            r = remote.get(uid)
            there = r.instances if r is not None else None
            here = local.get(uid)
            if r is None:
                rows = await _local_instances(archive, uid)
                report.studies.append(StudyDiff(uid, "missing-at-peer", here, None,
                                                missing_there=sorted(rows)))
            elif here is None:
                try:
                    sops = await asyncio.to_thread(puller.find_instances, uid)
                except PullError as exc:
                    sops = {}
                    report.errors.append(f"IMAGE-level C-FIND of a study: {exc.reason}")
                report.studies.append(StudyDiff(uid, "missing-here", None, there,
                                                missing_here=sorted(sops)))
            elif there is not None and there == here and not deep:
                report.studies.append(StudyDiff(uid, "equal", here, there))
            else:
                try:
                    sops = await asyncio.to_thread(puller.find_instances, uid)
                except PullError as exc:
                    raise errors.OutOfResources(f"C-FIND at {peer}: {exc.reason}") from None
                placement[uid] = sops
                rows = await _local_instances(archive, uid)
                d = StudyDiff(uid, "equal", len(rows), there if there is not None
                              else len(sops), missing_here=sorted(set(sops) - set(rows)),
                              missing_there=sorted(set(rows) - set(sops)))
                if d.missing_here or d.missing_there:
                    d.status = "different"
                report.studies.append(d)
            if progress is not None:
                progress("compare", i, len(uids))
        if progress is not None and uids:
            progress("compare", len(uids), len(uids), final=True)
        audit.record("reconcile", actor=LOCAL, device=DEVICE, location=f"dicom://{peer}",
                     object_count=len(uids),
                     outcome="success",
                     detail={"action": "compare", "mode": "peer", **{
                         k.replace(" ", "_"): v for k, v in report.summary().items()}})

        if fetch:
            routing = ForwardingService(archive, queue_from_settings(archive))
            if routing.enabled:  # fetched objects are routed like any arrival
                archive.plugins.register(routing, "pacsd-forward")
            todo = [s for s in report.studies if s.missing_here]
            for i, s in enumerate(todo, 1):
                study = RemoteStudy(s.study, s.there, ())
                get = puller.get_study if method == "get" else puller.move_study
                before = len(await _local_instances(archive, s.study))
                try:
                    if s.here is None:  # the whole study
                        ops = await asyncio.to_thread(get, study)
                    else:  # only the missing instances: IMAGE level, per series
                        ops = SimpleNamespace(failed=0, completed=0)
                        for sops in _batches(s.missing_here, placement.get(s.study, {})):
                            part = await asyncio.to_thread(get, study, sops)
                            ops.failed += part.failed
                            ops.completed += part.completed
                except PullError as exc:
                    report.fetched[s.study] = f"failed: {exc.reason}"
                    outcome = "failure"
                else:
                    after = await _local_instances(archive, s.study)
                    still = [u for u in s.missing_here if u not in after]
                    report.fetched[s.study] = (
                        f"{ops.completed} sent by the peer, {len(after) - before} "
                        "instances stored"
                        + (f", {ops.failed} sub-operations failed" if ops.failed else "")
                        + (f", {len(still)} still missing" if still else ""))
                    outcome = "failure" if still else "success"
                audit.record("reconcile", actor=LOCAL, device=DEVICE, study_uid=s.study,
                             object_count=len(s.missing_here), outcome=outcome,
                             location=f"dicom://{peer}",
                             detail={"action": "fetch", "method": method})
                if progress is not None:
                    progress("fetch", i, len(todo), final=i == len(todo))

        if send and destination is not None:
            from .dimse.scu import CStoreSender
            sender = CStoreSender(settings)
            todo = [s for s in report.studies if s.missing_there]
            for i, s in enumerate(todo, 1):
                rows = await _local_instances(archive, s.study)
                batch = [rows[u] for u in s.missing_there if u in rows]
                confirmed: list = []

                async def on_sent(sent: list, confirmed=confirmed) -> None:
                    confirmed.extend(sent)
                try:
                    await sender.send(destination, batch, retrieve, on_sent)
                except SendError as exc:
                    report.sent[s.study] = (f"failed after {len(confirmed)} of {len(batch)}"
                                            f" instances: {exc.reason}")
                    outcome = "failure"
                else:
                    report.sent[s.study] = f"{len(confirmed)} instances sent"
                    outcome = "success"
                audit.record("reconcile", actor=LOCAL, device=DEVICE, study_uid=s.study,
                             object_count=len(confirmed), outcome=outcome,
                             location=destination.where(),
                             detail={"action": "send", "instances": len(batch)})
                if progress is not None:
                    progress("send", i, len(todo), final=i == len(todo))
        await audit.flush()
    finally:
        archive.close()
    return report


def _batches(missing: list[str], series_of: dict[str, str], size: int = FETCH_BATCH):
    """``{sop: series}`` groups of one series and at most ``size`` instances."""
    by_series: dict[str, list[str]] = {}
    for sop in missing:
        by_series.setdefault(series_of.get(sop, ""), []).append(sop)
    for series, sops in by_series.items():
        for start in range(0, len(sops), size):
            yield {sop: series for sop in sops[start:start + size]}


def _send_destination(settings: Settings, peer: str, host: str, port: int,
                      name: str | None) -> ForwardDestination:
    if name is None:
        return ForwardDestination(name=peer, type="dimse", ae_title=peer, host=host,
                                  port=port)
    dest = settings.forward.parsed_destinations().get(name)
    if dest is None:
        raise ConfigError(f"--send-to: no [forward.destinations] entry {name!r}")
    if dest.type != "dimse":
        raise ConfigError(f"--send-to: destination {name!r} must be of type \"dimse\"")
    return dest


# --- manifest mode ---------------------------------------------------------------------------

def read_manifest(path: str) -> dict[str, dict[str, str]]:
    """StudyInstanceUID -> {SOPInstanceUID: sha256 or ""}. A pacsd export manifest.csv
    (header with study_instance_uid, sop_instance_uid, sha256; the current version of an
    object wins over older ones) or plain ``study,sop[,sha256]`` rows (header optional)."""
    if os.path.isdir(path):  # an export folder: its manifest.csv
        path = os.path.join(path, "manifest.csv")
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the manifest ({exc.strerror or exc})") from None
    rows = list(csv.reader(io.StringIO(text)))
    out: dict[str, dict[str, str]] = {}
    if not rows:
        return out
    head = [c.strip().lower() for c in rows[0]]
    if "sop_instance_uid" in head and "study_instance_uid" in head:
        st, sop = head.index("study_instance_uid"), head.index("sop_instance_uid")
        sha = head.index("sha256") if "sha256" in head else None
        ver = head.index("version") if "version" in head else None
        current: dict[str, bool] = {}
        for n, row in enumerate(rows[1:], 2):
            if not row:
                continue
            if len(row) <= max(st, sop):
                raise ConfigError(f"manifest line {n}: too few columns")
            is_current = ver is None or len(row) <= ver or not row[ver].strip()
            uid = row[sop].strip()
            if uid in current and current[uid] and not is_current:
                continue
            current[uid] = is_current
            out.setdefault(row[st].strip(), {})[uid] = (
                row[sha].strip().lower() if sha is not None and len(row) > sha else "")
        return out
    start = 1 if head and not head[0].replace(".", "").isdigit() else 0
    for n, row in enumerate(rows[start:], start + 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise ConfigError(f"manifest line {n}: expected StudyInstanceUID,SOPInstanceUID"
                              "[,sha256]")
        out.setdefault(row[0].strip(), {})[row[1].strip()] = (
            row[2].strip().lower() if len(row) > 2 else "")
    return out


async def reconcile_manifest(settings: Settings, path: str, *, filters: dict,
                             progress=None) -> Reconciliation:
    from .services import Archive
    from .services.audit import AuditTrail
    from .services.security import LOCAL

    listed = read_manifest(path)
    if filters.get("study_uids"):
        listed = {k: v for k, v in listed.items() if k in filters["study_uids"]}
    report = Reconciliation(f"manifest {path}")
    archive = Archive.open(settings)
    audit = AuditTrail(archive.catalogue, run=archive.run)
    try:
        local = await _local_studies(archive, filters)
        uids = sorted(set(listed) | set(local))
        for i, uid in enumerate(uids, 1):
            rows = await _local_instances(archive, uid)
            want = listed.get(uid)
            if want is None:
                report.studies.append(StudyDiff(uid, "missing-at-peer", len(rows), None,
                                                missing_there=sorted(rows)))
            elif not rows:
                report.studies.append(StudyDiff(uid, "missing-here", None, len(want),
                                                missing_here=sorted(want)))
            else:
                d = StudyDiff(uid, "equal", len(rows), len(want),
                              missing_here=sorted(set(want) - set(rows)),
                              missing_there=sorted(set(rows) - set(want)),
                              different_hash=sorted(u for u, sha in want.items()
                                                    if sha and u in rows
                                                    and rows[u].sha256 != sha))
                if d.missing_here or d.missing_there or d.different_hash:
                    d.status = "different"
                report.studies.append(d)
            if progress is not None:
                progress("compare", i, len(uids), final=i == len(uids))
        audit.record("reconcile", actor=LOCAL, device=DEVICE, object_count=len(uids),
                     detail={"action": "compare", "mode": "manifest", **{
                         k.replace(" ", "_"): v for k, v in report.summary().items()}})
        await audit.flush()
    finally:
        archive.close()
    return report


# --- the command -----------------------------------------------------------------------------

def run(args: argparse.Namespace, settings: Settings) -> int:
    filters = {"study_date": args.study_date, "patient_id": args.patient_id,
               "study_uids": list(args.study)}
    peer = (args.reconcile_peer or "").strip()
    if bool(peer) == bool(args.manifest):
        print("pacsd: reconcile needs --peer AET or --manifest FILE", file=sys.stderr)
        return 2
    if args.manifest and (args.fetch or args.send):
        print("pacsd: --fetch and --send need --peer", file=sys.stderr)
        return 2
    progress = ProgressBar("reconcile")
    try:
        if peer:
            report = asyncio.run(reconcile_peer(
                settings, peer, filters=filters, deep=args.deep, fetch=args.fetch,
                send=args.send, method=args.method, send_to=args.send_to,
                progress=progress))
        else:
            report = asyncio.run(reconcile_manifest(settings, args.manifest,
                                                    filters=filters, progress=progress))
    except ConfigError:
        raise
    except errors.PacsdError as exc:
        print(f"pacsd: reconcile stopped: {exc.reason}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "wb") as fh:
            fh.write(report.as_json())
    for line in report.lines(max(0, args.list_cap), manifest=bool(args.manifest)):
        print(line)
    return 0 if report.equal else 1
