"""Summaries, printed tables, ratios, issue-6 targets and ``benchmarks/RESULTS.md``.

Medians are taken over repetitions. A phase with any wrong answer is *unverified*: its
numbers are shown struck out as ``n/a`` and it scores nothing (no ratio, target failed).
Ratios are always pacsd / Orthanc (or first / second target): above 1 is better for
throughput (MB/s, inst/s, q/s), below 1 is better for latency (ms).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
METRICS = ("mb_s", "inst_s", "qps", "p50_ms", "p95_ms", "p99_ms", "client_cpu_pct")
HIGHER_BETTER = {"mb_s", "inst_s", "qps"}


def headline(phase: str, concurrency: int) -> str:
    """The metric a phase is judged by."""
    if phase in ("load_ct", "stow_ct", "wado_study", "dimse_store_ct", "dimse_get",
                 "dimse_move"):
        return "mb_s"
    if phase in ("stow_tiny", "dimse_store_tiny"):
        return "inst_s"
    if phase.startswith("qido_"):
        return "p50_ms" if concurrency == 1 else "qps"
    return "p50_ms"


def summarise(rows: list[dict]) -> dict[str, dict]:
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["phase"], r["concurrency"]), []).append(r)
    out: dict[str, dict] = {}
    for (phase, c), rs in groups.items():
        s: dict[str, Any] = {"phase": phase, "concurrency": c, "reps": len(rs),
                             "verified": all(r["verified"] for r in rs),
                             "errors": sum(r["errors"] for r in rs),
                             "error_sample": next((r["error_sample"] for r in rs
                                                   if r["error_sample"]), ""),
                             "requests": sum(r["requests"] for r in rs)}
        for m in METRICS:
            vals = [r[m] for r in rs if m in r and r[m] == r[m]]
            if vals:
                s[m] = statistics.median(vals)
        s["headline"] = headline(phase, c)
        out[f"{phase}@{c}"] = s
    return out


def _fmt(v: Any, metric: str) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if metric.endswith("_ms"):
        return f"{v:.2f}" if v < 100 else f"{v:.0f}"
    return f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def ratio(a: dict | None, b: dict | None, metric: str) -> float | None:
    if not a or not b or not a["verified"] or not b["verified"]:
        return None
    va, vb = a.get(metric), b.get(metric)
    if not va or not vb:
        return None
    return va / vb


def table(summary: dict[str, dict]) -> str:
    head = ("phase", "c", "ok", "MB/s", "inst/s", "q/s", "p50 ms", "p95 ms", "p99 ms", "cli CPU%")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, s in summary.items():
        ok = "yes" if s["verified"] else f"NO ({s['errors']})"
        vals = [s["phase"], str(s["concurrency"]), ok] + [
            _fmt(s.get(m), m) if s["verified"] or m == "client_cpu_pct" else "n/a"
            for m in ("mb_s", "inst_s", "qps", "p50_ms", "p95_ms", "p99_ms", "client_cpu_pct")]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def compare_table(a: dict[str, dict], b: dict[str, dict], na: str, nb: str) -> str:
    head = ("phase", "c", "metric", na, nb, f"{na}/{nb}", "better")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in list(a) + [k for k in b if k not in a]:
        sa, sb = a.get(key), b.get(key)
        s = sa or sb
        metrics = [s["headline"]]
        if s["phase"] in ("stow_ct", "dimse_store_ct"):
            metrics = ["mb_s", "inst_s"]
        if s["phase"].startswith("qido_"):
            metrics = ["p50_ms", "p95_ms", "qps"] if s["concurrency"] == 1 else ["qps", "p50_ms"]
        for m in metrics:
            r = ratio(sa, sb, m)
            better = "-" if r is None else (
                na if (r > 1) == (m in HIGHER_BETTER) and abs(r - 1) > 0.02 else
                (nb if abs(r - 1) > 0.02 else "="))
            lines.append("| " + " | ".join([
                s["phase"], str(s["concurrency"]), m.replace("_", " "),
                _cell(sa, m), _cell(sb, m), "-" if r is None else f"{r:.2f}", better]) + " |")
    return "\n".join(lines)


def _cell(s: dict | None, m: str) -> str:
    if s is None:
        return "-"
    if not s["verified"]:
        why = s.get("error_sample", "").replace("wrong answer: ", "").split("(")[0].strip()
        return f"n/a: {s['errors']}/{s['requests']} wrong or failed ({why[:40]})"
    return _fmt(s.get(m), m)


def targets(p: dict[str, dict], o: dict[str, dict]) -> list[tuple[str, str, str]]:
    """(goal, where pacsd stands, met?) for the issue-6 targets."""
    out = []

    def add(goal: str, measured: str, ok: bool | None) -> None:
        out.append((goal, measured, "-" if ok is None else ("met" if ok else "NOT met")))

    def why(key: str) -> str:
        """Why a ratio is missing: which side answered wrong (or not at all)."""
        sp, so = p.get(key), o.get(key)
        if sp is None or not sp["verified"]:
            return "pacsd answered wrong / failed"
        if so is None or not so["verified"]:
            return "only pacsd answered right (no ratio)"
        return "-"

    for key in sorted(k for k in p if k.startswith("stow_ct@")):
        r = ratio(p.get(key), o.get(key), "mb_s")
        add(f"STOW CT MB/s >= 1.3x Orthanc ({key})", why(key) if r is None else f"{r:.2f}x",
            None if r is None else r >= 1.3)
    for key in sorted(k for k in p if k.startswith("stow_tiny@")):
        r = ratio(p.get(key), o.get(key), "inst_s")
        add(f"STOW tiny inst/s >= 2x Orthanc ({key})", why(key) if r is None else f"{r:.2f}x",
            None if r is None else r >= 2)
    for key in sorted(k for k in p if k.startswith("qido_") and k.endswith("@1")):
        s = p[key]
        add(f"QIDO p50 < 3 ms ({key})", f"{s['p50_ms']:.2f} ms" if s["verified"] else "n/a",
            s["verified"] and s["p50_ms"] < 3)
    for key in sorted(k for k in p if k.startswith("qido_") and k.endswith("@16")):
        r = ratio(p.get(key), o.get(key), "qps")
        add(f"QIDO q/s >= 10x Orthanc at c=16 ({key})", why(key) if r is None else f"{r:.2f}x",
            None if r is None else r >= 10)
    for key in ("metadata_series@1", "metadata_series_gzip@1"):
        if key in p:
            s = p[key]
            add(f"series metadata < 10 ms ({key})",
                f"{s['p50_ms']:.2f} ms" if s["verified"] else "n/a",
                s["verified"] and s["p50_ms"] < 10)
    if "frame@1" in p:
        s = p["frame@1"]
        add("frames p50 < 3 ms", f"{s['p50_ms']:.2f} ms" if s["verified"] else "n/a",
            s["verified"] and s["p50_ms"] < 3)
    for key in sorted(k for k in p if k.startswith("wado_study@")):
        r = ratio(p.get(key), o.get(key), "mb_s")
        add(f"WADO study MB/s >= 1.3x Orthanc ({key})", why(key) if r is None else f"{r:.2f}x",
            None if r is None else r >= 1.3)
    for key, metric, what in (("dimse_store_ct@1", "inst_s", "C-STORE CT files/s"),
                              ("dimse_store_tiny@1", "inst_s", "C-STORE tiny files/s"),
                              ("dimse_get@1", "mb_s", "C-GET study MB/s"),
                              ("dimse_move@1", "mb_s", "C-MOVE study MB/s")):
        if key in p:
            r = ratio(p.get(key), o.get(key), metric)
            add(f"DIMSE {what} >= Orthanc's", why(key) if r is None else f"{r:.2f}x",
                None if r is None else r >= 1)
    return out


def targets_table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| goal (issue 6) | pacsd | status |", "|---|---|---|"]
    lines += [f"| {g} | {m} | {s} |" for g, m, s in rows]
    return "\n".join(lines)


def save_json(result: dict, label: str, out_dir: Path | None = None) -> Path:
    out_dir = out_dir or HERE / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False, default=str))
    return path


def profile_md(profiles: dict[str, dict]) -> str:
    if not profiles:
        return "_No profile in this run (side-by-side --profile attaches py-spy to pacsd)._\n"
    out = ["After the measured phases, py-spy (100 Hz, non-blocking) was attached to pacsd "
           "while the driver repeated STOW (3 fresh CT series + 100 tiny studies at c=4), "
           "every QIDO kind at c=16, series metadata and frames at c=8. `self` = the "
           "function was on top of the stack (a C call such as `orjson.loads` or `os.fsync` "
           "is counted in its Python caller); `incl.` = anywhere on the stack.\n"]
    for target, groups in profiles.items():
        for key, prof in groups.items():
            if "error" in prof:
                out.append(f"**{target} / {key}**: {prof['error']}\n")
                continue
            name, _, mode = key.partition("/")
            pk = ", ".join(f"{x['package']} {x['pct']}%" for x in prof["by_package"][:6])
            if mode == "all":
                leaves = ", ".join(f"`{h['function']}` {h['pct']}%" for h in prof["self"][:8])
                out.append(f"All non-idle threads ({prof['samples']} samples): leaf time by "
                           f"package {pk}. Top leaves: {leaves}.\n")
                continue
            out.append(f"### {name} ({target})\n")
            out.append(f"GIL holder, {prof['samples']} samples over {prof.get('seconds', '?')} s "
                       f"(py-spy --gil: where the Python CPU goes)\n")
            out.append("| self % | function (leaf) | incl. % | pacsd function (inclusive) |")
            out.append("|---:|---|---:|---|")
            left, right = prof["self"][:12], prof["inclusive_pacsd"][:12]
            for k in range(max(len(left), len(right))):
                l = left[k] if k < len(left) else None
                r = right[k] if k < len(right) else None
                out.append(f"| {l['pct'] if l else ''} | {('`' + l['function'] + '`') if l else ''} "
                           f"| {r['pct'] if r else ''} | "
                           f"{('`' + r['function'] + '`') if r else ''} |")
            out.append(f"\nLeaf time by package: {pk}\n")
    return "\n".join(out) + "\n"


def results_md(result: dict, command: str, json_path: Path, names: tuple[str, str]) -> str:
    na, nb = names
    ta, tb = result["targets"][na], result["targets"][nb]
    sa, sb = summarise(ta["rows"]), summarise(tb["rows"])
    mi, cfg = result["machine"], result["config"]
    notes_file = HERE / "notes.md"
    ceiling = result.get("client_ceiling") or {}
    checks = []
    for name in names:
        for c in result["targets"][name]["checks"]:
            checks.append(f"- {name}: {c['check']}: {'ok' if c['ok'] else 'FAILED — ' + c.get('error', '')}")
    parts = [
        "# Benchmarks: pacsd vs Orthanc, side by side",
        "",
        "Generated by `benchmarks/report.py` — rerun the command below to refresh; the "
        "hand-written analysis comes from `benchmarks/notes.md`.",
        "",
        f"- **Date:** {result['started']} (run took {result['duration_s']:.0f} s)",
        f"- **Command:** `{command}`",
        f"- **Machine:** {mi['nproc']} CPUs ({mi['cpu']}), {mi['ram']} RAM, Linux "
        f"{mi['kernel']}; load average at start {_load(mi['loadavg_start'])}, at end "
        f"{_load(mi.get('loadavg_end'))} (shared machine: other engineers' tests run "
        "concurrently, so absolute numbers are noisy; ratios within this run are the signal)",
        f"- **Versions:** {na} {ta['version']}; {nb}: {tb['version']}; Python "
        f"{mi['python']}, aiohttp {mi['aiohttp']} (driver), numpy {mi['numpy']}",
        f"- **Data set:** seed {cfg['seed']}; {cfg['ct_studies']} CT studies x "
        f"{cfg['ct_slices']} slices of 512x512x16-bit (~0.5 MB each); {cfg['tiny']} tiny "
        f"instances (16x16, ~1.4 kB; ASCII, GB18030 and UTF-8 names); STOW CT "
        f"{cfg['stow_ct_batch']} fresh instances per repetition, {cfg['ct_per_request']} "
        f"per request; tiny {cfg['tiny_per_request']} per request; {cfg['reps']} "
        "repetitions per phase, medians quoted; targets interleaved per repetition.",
        *([f"- **DIMSE:** DCMTK 3.6 tools with TCP_NODELAY=1 (as Orthanc); each timing covers "
            f"the whole tool run (start, association, operations, release). C-STORE: one "
            f"storescu association per repetition with {cfg['stow_ct_batch']} fresh CT / "
            f"{cfg.get('dimse_tiny', '?')} fresh tiny files; C-FIND: one findscu run per study-"
            "level query by PatientID; C-GET / C-MOVE: one whole CT study (getscu into a temp "
            "dir; movescu to the driver's storescp). Verified: QIDO-RS lists exactly the "
            "stored instances; C-FIND names exactly the patient's studies; every retrieved "
            "file has the right SOP Instance UID and byte-exact pixel data."]
          if any(r["phase"].startswith("dimse") for r in ta["rows"]) else []),
        f"- **Raw results:** `{json_path.relative_to(HERE.parent) if json_path.is_relative_to(HERE.parent) else json_path}` (git-ignored)",
        "",
        "Every answer was verified (exact UID sets and counts, byte-exact instances and "
        "frames, rendered images that show the stored pixels); a phase with a wrong answer "
        "shows `n/a` and scores nothing. MB = 10^6 bytes.",
        "",
        f"## Results ({na}/{nb}: >1 is better for MB/s, inst/s, q/s; <1 is better for ms)",
        "",
        compare_table(sa, sb, na, nb),
        "",
        "## Issue 6 targets",
        "",
        targets_table(targets(sa, sb)),
        "",
        f"## All numbers, {na}",
        "",
        table(sa),
        "",
        f"## All numbers, {nb}",
        "",
        table(sb),
        "",
        "## Completeness checks (untimed)",
        "",
        "\n".join(checks) or "-",
        "",
        "## Client ceiling",
        "",
        "The same driver code against a canned-answer stub on this machine "
        "(`benchmarks/stub.py`): server numbers near these are limited by the driver.",
        "",
        "\n".join(f"- {k}: " + ", ".join(f"{m} {v}" for m, v in val.items())
                  for k, val in ceiling.items()) or "- not measured in this run",
        "",
        "## Where time goes (pacsd, py-spy)",
        "",
        profile_md(result.get("profiles") or {}),
    ]
    # by `python -m benchmarks scale` / `memory` / `soak`
    for extra in ("scale.md", "memory.md", "soak.md"):
        extra_file = HERE / extra
        if extra_file.exists():
            parts += [extra_file.read_text().strip(), ""]
    if notes_file.exists():
        parts += ["## Notes and suggestions", "", notes_file.read_text().strip(), ""]
    return "\n".join(parts)


def splice_section(results: Path, section: str) -> None:
    """Put ``section`` (a markdown text starting with its ``## `` heading) into the file
    ``results``: replacing the section of the same heading, else before the notes."""
    heading = section.split("\n", 1)[0]
    text = results.read_text() if results.exists() else ""
    if heading in text:
        start = text.index(heading)
        nxt = text.find("\n## ", start + len(heading))
        text = text[:start] + section.strip() + "\n" + (text[nxt:] if nxt >= 0 else "")
    elif "## Notes and suggestions" in text:
        i = text.index("## Notes and suggestions")
        text = text[:i] + section.strip() + "\n\n" + text[i:]
    else:
        text = text.rstrip() + "\n\n" + section.strip() + "\n"
    results.write_text(text)


def _load(v: Any) -> str:
    if not v:
        return "?"
    return "/".join(f"{x:.2f}" for x in v)


def print_summary(result: dict, log=print) -> None:
    names = list(result["targets"])
    sums = {n: summarise(result["targets"][n]["rows"]) for n in names}
    for n in names:
        log(f"\n== {n} ({result['targets'][n]['version']})\n")
        log(table(sums[n]))
    if len(names) == 2:
        log(f"\n== {names[0]} / {names[1]}\n")
        log(compare_table(sums[names[0]], sums[names[1]], names[0], names[1]))
        log("\n== issue 6 targets\n")
        log(targets_table(targets(sums[names[0]], sums[names[1]])))
