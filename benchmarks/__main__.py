"""Command line of the benchmark driver.

    python -m benchmarks run --target http://127.0.0.1:8042/dicom-web [--label pacsd]
        [--dicom 127.0.0.1:4242:ORTHANC [--move-port 11199]]   # + the DIMSE phases
    python -m benchmarks side-by-side [--profile] [--pacsd-workers N|auto]  # starts both
    python -m benchmarks compare out/pacsd-*.json out/orthanc-*.json
    python -m benchmarks report out/side-by-side-*.json  # rewrite RESULTS.md (notes.md)
    python -m benchmarks scale [--sizes 10000,100000,1000000] [--db sqlite,postgresql]
    python -m benchmarks memory [--size-mb 2048] [--concurrency 8] [--with-orthanc]
    python -m benchmarks soak [--minutes 10] [--concurrency 4] [--slices 40]

``run`` measures any DICOMweb root that holds no studies yet (the expected answers of
name, date and modality queries count only the run's own data: use a fresh server). ``side-by-side`` installs nothing: it needs the Debian
packages ``orthanc`` and ``orthanc-dicomweb`` and writes ``benchmarks/RESULTS.md``.

Single-path tools, run as their own modules: ``benchmarks.stow_only`` (STOW A/B),
``benchmarks.floor`` (the least a durable Python STOW server can do, against Orthanc:
the upper bound for pacsd's runtime), ``benchmarks.qido_ab``, ``benchmarks.wado_ab``,
``benchmarks.dimse_ab``, ``benchmarks.stow_micro``, ``benchmarks.scale_probe``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from pathlib import Path

from . import report
from .phases import Target
from .runner import Config, Runner


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data set and repetitions")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--ct-studies", type=int, default=2)
    g.add_argument("--slices", type=int, default=100, help="CT slices per study (<= 300 "
                   "keeps a side-by-side run near 10 minutes on 2 cores)")
    g.add_argument("--tiny", type=int, default=3000, help="tiny instances (fill the index)")
    g.add_argument("--stow-ct-batch", type=int, default=48,
                   help="fresh CT instances per measured STOW repetition")
    g.add_argument("--ct-per-request", type=int, default=1)
    g.add_argument("--tiny-per-request", type=int, default=5)
    g.add_argument("--reps", type=int, default=3, help="repetitions per phase (medians)")
    g.add_argument("--smoke", action="store_true", help="smallest size (seconds)")
    g.add_argument("--no-ceiling", action="store_true",
                   help="skip the client-ceiling measurement")
    g.add_argument("--dimse-tiny", type=int, default=200,
                   help="tiny files per measured C-STORE repetition")
    g.add_argument("--dimse-find", type=int, default=20,
                   help="C-FIND queries per repetition")


def _workers_arg(text: str) -> str:
    text = text.strip().lower()
    if text != "auto" and not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError('a positive number or "auto"')
    return text


def _config(args: argparse.Namespace, **extra) -> Config:
    kw = dict(seed=args.seed, ceiling=not args.no_ceiling, **extra)
    if args.smoke:
        return Config.smoke(**kw)
    kw.update(dimse_tiny=args.dimse_tiny, dimse_find_n=args.dimse_find)
    return Config(ct_studies=args.ct_studies, ct_slices=args.slices, tiny=args.tiny,
                  stow_ct_batch=args.stow_ct_batch, ct_per_request=args.ct_per_request,
                  tiny_per_request=args.tiny_per_request, reps=args.reps, **kw)


def log(msg: str) -> None:
    print(msg, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    import aiohttp

    from .dimse import DicomAddress

    cfg = _config(args, profile=args.pid is not None, dimse_move_port=args.move_port)
    target = Target(args.label, args.target.rstrip("/"), pid=args.pid)
    if args.dicom:
        host, port, aet = args.dicom.rsplit(":", 2)
        target.dicom = DicomAddress(host, int(port), aet)
    try:
        result = asyncio.run(Runner(cfg, [target], log).run())
    except (RuntimeError, aiohttp.ClientError, OSError) as exc:
        log(f"benchmarks: {exc}")
        return 2
    path = report.save_json(result, args.label)
    report.print_summary(result, log)
    log(f"\nresults: {path}")
    return 0 if all(r["verified"] for r in target.rows) else 1


def cmd_side_by_side(args: argparse.Namespace) -> int:
    from .dimse import MOVE_AET, DicomAddress
    from .servers import OrthancProcess, PacsdProcess, effective_workers, free_port

    # The driver's storage SCP (C-MOVE destination) port: both servers must know it.
    move_port = 0 if args.no_dimse else free_port()
    peers = {MOVE_AET: move_port} if move_port else None
    cfg = _config(args, profile=args.profile, dimse_move_port=move_port)
    if args.profile and effective_workers(args.pacsd_workers) > 1:
        log("--profile attaches py-spy to one pacsd process: add --pacsd-workers 1")
        return 2
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    t0 = time.monotonic()
    orthanc = OrthancProcess(peers=peers or {})
    try:
        pacsd = PacsdProcess(dicom=not args.no_dimse, peers=peers, workers=args.pacsd_workers)
        try:
            log(f"orthanc: {orthanc.version} at {orthanc.url}")
            log(f"pacsd:   {pacsd.version} at {pacsd.url}")
            targets = [Target("pacsd", pacsd.url, pid=pacsd.pid, version=pacsd.version),
                       Target("orthanc", orthanc.url, version=orthanc.version)]
            if not args.no_dimse:
                targets[0].dicom = DicomAddress("127.0.0.1", pacsd.dicom_port, pacsd.aet)
                targets[1].dicom = DicomAddress("127.0.0.1", orthanc.dicom_port,
                                                orthanc.aet)
            result = asyncio.run(Runner(cfg, targets, log).run())
        finally:
            pacsd.stop()
    finally:
        orthanc.stop()
    result["orthanc_config"] = orthanc.config
    result["command"] = command
    path = report.save_json(result, "side-by-side")
    report.print_summary(result, log)
    if not args.no_results:
        out = Path(args.results)
        out.write_text(report.results_md(result, command, path, ("pacsd", "orthanc")))
        log(f"\nwrote {out}")
    log(f"results: {path} ({time.monotonic() - t0:.0f} s in all)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Rewrite RESULTS.md from a saved side-by-side JSON (e.g. after editing notes.md)."""
    path = Path(args.file).resolve()
    result = json.loads(path.read_text())
    names = tuple(result["targets"])
    if len(names) != 2:
        log("report needs a side-by-side result file (two targets)")
        return 2
    Path(args.results).write_text(report.results_md(
        result, result.get("command", "python -m benchmarks side-by-side"), path, names))
    log(f"wrote {args.results}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    docs = [json.loads(Path(p).read_text()) for p in args.files]
    targets: list[tuple[str, dict]] = []
    for d in docs:
        targets += list(d["targets"].items())
    if len(targets) != 2:
        log(f"compare needs exactly two targets, got {len(targets)} "
            "(two single-target files or one side-by-side file)")
        return 2
    (na, ta), (nb, tb) = targets
    if na == nb:
        na, nb = f"{na}#1", f"{nb}#2"
    sa, sb = report.summarise(ta["rows"]), report.summarise(tb["rows"])
    log(report.compare_table(sa, sb, na, nb))
    log("\n" + report.targets_table(report.targets(sa, sb)))
    return 0


def _machine_line(mi: dict, started: str) -> str:
    return (f"{mi['nproc']} CPUs ({mi['cpu']}), {mi['ram']} RAM; started {started}, "
            f"load average at start {'/'.join(f'{x:.2f}' for x in mi['loadavg_start'])}")


def _write_section(args: argparse.Namespace, section: str, name: str, path: Path) -> None:
    """Print a RESULTS.md section, keep it as benchmarks/NAME (report.py includes it in
    the next side-by-side RESULTS.md) and splice it into --results now."""
    log(section)
    if not args.no_results:
        (Path(__file__).resolve().parent / name).write_text(section)
        report.splice_section(Path(args.results), section)
        log(f"written: {args.results}")
    log(f"results: {path}")


def cmd_scale(args: argparse.Namespace) -> int:
    from . import scale
    from .runner import machine_info

    sizes = sorted(int(x) for x in args.sizes.split(","))
    dbs = [d.strip() for d in args.db.split(",") if d.strip()]
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    mi = machine_info()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results = scale.run(sizes, dbs, n1=args.queries, n16=4 * args.queries, log=log,
                        fill_mode=args.fill, fill_nice=args.fill_nice)
    section = scale.markdown(results, command, _machine_line(mi, started))
    _write_section(args, section, "scale.md", report.save_json(results, "scale"))
    return 0 if all(v["verified"] for r in results["rows"] for v in r["kinds"].values()) \
        else 1


def cmd_memory(args: argparse.Namespace) -> int:
    """Peak RSS of pacsd (and Orthanc) while a large study is retrieved (issue 6 item 4)."""
    from . import memory
    from .runner import machine_info
    from .servers import OrthancProcess, PacsdProcess

    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    mi = machine_info()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results: dict[str, dict] = {}
    kinds = [("pacsd", PacsdProcess)] + ([("orthanc", OrthancProcess)]
                                          if args.with_orthanc else [])
    for name, cls in kinds:
        server = cls()
        try:
            log(f"{name}: {server.version} at {server.url} (pid {server.pid})")
            target = Target(name, server.url, pid=server.pid, version=server.version)
            try:
                results[name] = asyncio.run(memory.measure(
                    target, size_mb=args.size_mb, concurrency=args.concurrency,
                    requests=args.requests, seed=args.seed, log=log))
            except RuntimeError as exc:   # one server failing keeps the other's numbers
                log(f"{name}: {exc}")
                results[name] = {"error": str(exc)}
            results[name]["version"] = server.version
        finally:
            server.stop()
    machine = _machine_line(mi, started) + "; versions: " + "; ".join(
        f"{n} {r['version']}" for n, r in results.items())
    section = memory.markdown(results, command, machine)
    _write_section(args, section, "memory.md", report.save_json(
        {"command": command, "machine": machine, "targets": results}, "memory"))
    return 0 if all("retrieve" in r and r["retrieve"]["verified"]
                    for r in results.values()) else 1


def cmd_soak(args: argparse.Namespace) -> int:
    """Mixed load for --minutes with the server's RSS sampled every second (issue 6 item 4)."""
    from . import soak
    from .runner import machine_info
    from .servers import PacsdProcess

    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    mi = machine_info()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    server = PacsdProcess(workers=args.pacsd_workers)
    try:
        log(f"pacsd: {server.version} at {server.url} (pid {server.pid})")
        result = asyncio.run(soak.soak(
            server.url, server.pid, minutes=args.minutes, concurrency=args.concurrency,
            seed=args.seed, ct_studies=args.ct_studies, slices=args.slices, log=log,
            rotation=args.rotation))
        version = server.version
    finally:
        server.stop()
    mi_end = machine_info()
    machine = (_machine_line(mi, started) + ", at end " + "/".join(
        f"{x:.2f}" for x in mi_end["loadavg_start"]) + f"; pacsd {version}")
    result.update({"command": command, "machine": machine})
    path = report.save_json(result, "soak")
    soak.write_series(result, path.with_suffix(".csv"))
    _write_section(args, soak.markdown(result, command, machine), "soak.md", path)
    return 0 if result["verified"] else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks",
                                description="DICOMweb benchmark driver (pacsd vs others)")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure one DICOMweb root")
    r.add_argument("--target", required=True, help="DICOMweb root URL, e.g. "
                   "http://127.0.0.1:8042/dicom-web")
    r.add_argument("--label", default="target", help="name in tables and the JSON file")
    r.add_argument("--pid", type=int, help="server process id to profile with py-spy "
                   "(a Python server on this machine)")
    r.add_argument("--dicom", metavar="HOST:PORT:AET",
                   help="the target's DICOM address: adds the DIMSE phases (DCMTK)")
    r.add_argument("--move-port", type=int, default=0,
                   help="port for the driver's storescp (AE BENCHSCP), which the target "
                   "must know as a C-MOVE destination; 0 = no C-MOVE phase")
    _data_args(r)
    s = sub.add_parser("side-by-side", aliases=["sbs"],
                       help="start Orthanc and pacsd on loopback and measure both")
    s.add_argument("--profile", action="store_true",
                   help="after the measured phases, profile pacsd with py-spy")
    s.add_argument("--results", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    s.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    s.add_argument("--no-dimse", action="store_true",
                   help="skip the DIMSE phases (C-STORE, C-FIND, C-GET, C-MOVE with DCMTK)")
    s.add_argument("--pacsd-workers", metavar="N|auto", type=_workers_arg,
                   help="pacsd serve --workers (R-H1); default: pacsd's own default "
                   "([server] workers); RESULTS.md names the worker processes")
    _data_args(s)
    c = sub.add_parser("compare", help="ratios of two result files (first / second)")
    c.add_argument("files", nargs="+")
    rp = sub.add_parser("report", help="rewrite RESULTS.md from a side-by-side JSON file")
    rp.add_argument("file")
    rp.add_argument("--results", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    sc = sub.add_parser("scale", help="QIDO / metadata latency as the index grows "
                        "(issue 6 item 3)")
    sc.add_argument("--sizes", default="10000,100000,1000000",
                    help="comma-separated instance counts, filled in this order")
    sc.add_argument("--db", default="sqlite,postgresql", help="sqlite and/or postgresql")
    sc.add_argument("--queries", type=int, default=200,
                    help="queries per kind at concurrency 1 (4x that at 16)")
    sc.add_argument("--fill", choices=("auto", "rows", "write"), default="auto",
                    help="rows: the write path's rows built and COPYed in (auto: for "
                    "postgresql); write: pacsd's write path, one instance at a time")
    sc.add_argument("--fill-nice", type=int, default=0,
                    help="lower the driver's priority by this much while filling only")
    sc.add_argument("--results", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    sc.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    me = sub.add_parser("memory", help="peak RSS while a large study is retrieved "
                        "(issue 6 item 4)")
    me.add_argument("--size-mb", type=int, default=2048, help="study size (MB, 10^6 bytes)")
    me.add_argument("--concurrency", type=int, default=8)
    me.add_argument("--requests", type=int, default=8, help="whole-study retrievals")
    me.add_argument("--seed", type=int, default=1)
    me.add_argument("--with-orthanc", action="store_true",
                    help="measure Orthanc the same way afterwards")
    me.add_argument("--results", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    me.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    so = sub.add_parser("soak", help="RSS of pacsd over a mixed load of --minutes "
                        "(issue 6 item 4)")
    so.add_argument("--minutes", type=float, default=10.0)
    so.add_argument("--concurrency", type=int, default=4)
    so.add_argument("--ct-studies", type=int, default=2)
    so.add_argument("--slices", type=int, default=40, help="CT slices per study")
    so.add_argument("--seed", type=int, default=1)
    so.add_argument("--rotation", choices=("standard", "metadata"), default="standard",
                    help="metadata: four series-metadata reads per STOW (fills the cache)")
    so.add_argument("--pacsd-workers", metavar="N|auto", type=_workers_arg, default="1",
                    help="pacsd serve --workers (default 1; with more, the cached bytes "
                    "subtracted are summed over the workers' metrics answers)")
    so.add_argument("--results", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    so.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    args = p.parse_args(argv)
    if args.cmd == "soak":
        return cmd_soak(args)
    if args.cmd == "memory":
        return cmd_memory(args)
    if args.cmd == "scale":
        return cmd_scale(args)
    if args.cmd == "run":
        return cmd_run(args)
    if args.cmd in ("side-by-side", "sbs"):
        return cmd_side_by_side(args)
    if args.cmd == "report":
        return cmd_report(args)
    return cmd_compare(args)


if __name__ == "__main__":
    sys.exit(main())
