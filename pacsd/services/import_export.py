"""Import an export made by ``pacsd export`` (R-A11: "another pacsd can import the export
and serve it unchanged"; also cut-over between archives, R-H2).

``pacsd import-export --from URL`` reads the export's ``manifest.csv``:

* every current object (``version`` empty) is streamed into a staging file, its SHA-256
  compared with the manifest (a damaged file is refused and reported, never stored), and
  stored through the one ingest path (``IngestService``) with compression off, so the
  bytes served afterwards are exactly the exported ones; re-running the import is
  idempotent (BI-25: an instance already stored with the same bytes is found present);
* every kept earlier version (``version`` N) is stored as a blob on every copy and,
  with ``index/corrections.jsonl`` and ``index/instance_versions.jsonl``, recorded as
  version N of its instance (R-A8); ``index/study_retention.jsonl`` brings the visit
  data and legal holds (R-A7).

Audited like any archiving (``instances-stored``, one event per study, ``detail``
``source: import``). The old archive's audit trail stays a file of the export
(``index/audit_events.jsonl``): it is a hash chain of its own and is not merged.
"""
from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from ..errors import InstanceError, PacsdError
from ..index.lifecycle import import_history
from .archive import Archive
from .audit import AuditTrail
from .export_target import Target, redacted
from .ingest import IngestService, StagedFile
from .security import LOCAL

log = logging.getLogger(__name__)


@dataclass
class ImportReport:
    source: str
    stored: int = 0
    present: int = 0
    versions: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> list[str]:
        return [f"import from {self.source}",
                f"objects: {self.stored} stored, {self.present} already present; "
                f"earlier versions: {self.versions}",
                *self.problems[:1000],
                "result: OK" if self.ok else "result: PROBLEMS FOUND"]


def _jsonl(target: Target, rel: str) -> list[dict]:
    raw = target.read_bytes(rel)
    return [orjson.loads(line) for line in (raw or b"").splitlines() if line.strip()]


class Importer:
    def __init__(self, archive: Archive, source: Target, *, audit: AuditTrail | None = None,
                 actor: Any = None,
                 progress: Callable[[str, int, "int | None"], None] | None = None) -> None:
        self.archive = archive
        self.source = source
        self.audit = audit
        self.actor = actor
        self.progress = progress

    def _stage(self, rel: str, sha: str, size: int) -> StagedFile | None:
        """The file copied into staging, or None (problem recorded) when it does not
        match the manifest."""
        with self.archive.store.new_staging_file() as w:
            try:
                with self.source.open_read(rel) as fh:
                    while True:
                        chunk = fh.read(1 << 20)
                        if not chunk:
                            break
                        w.write(chunk)
            except FileNotFoundError:
                return None
            path, got, n = w.finish()
            if (got, n) != (sha, size):
                w.abort()
                return None
        return StagedFile(path, got, n, w.digest)

    async def run(self) -> ImportReport:
        report = ImportReport(redacted(self.source.url))
        summary = self.source.read_bytes("manifest.json")
        if summary is None:
            report.problems.append("MISSING            manifest.json (not a complete export)")
            return report
        total = int(orjson.loads(summary).get("objects") or 0)
        # Stored exactly as exported: no compression on the way in (this process only).
        self.archive.settings.storage.compress = "none"
        ingest = IngestService(self.archive)
        per_study: Counter = Counter()
        versions: list[tuple[str, str, int]] = []
        with self.source.open_read("manifest.csv") as fh:
            rows = csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8", newline=""))
            for n, row in enumerate(rows, 1):
                rel, sha, size = row["path"], row["sha256"], int(row["size"])
                if rel.startswith("/") or ".." in rel.split("/"):
                    report.problems.append(f"BAD_PATH           {rel[:200]}")
                    continue
                if row.get("version"):
                    versions.append((rel, sha, size))
                    continue
                staged = await self.archive.run(self._stage, rel, sha, size)
                if staged is None:
                    report.problems.append(f"NOT_AS_IN_MANIFEST {rel}")
                    continue
                try:
                    outcome = await ingest.ingest(staged, actor=LOCAL)  # console (R-A12)
                except (InstanceError, PacsdError) as e:
                    report.problems.append(f"REFUSED            {rel}: {e.reason}")
                    continue
                if outcome.created:
                    report.stored += 1
                    per_study[outcome.study_instance_uid] += 1
                else:
                    report.present += 1
                if self.progress is not None:
                    self.progress("objects", n, total)
        stored_versions: set[str] = set()
        for rel, sha, size in versions:  # kept earlier versions: blobs first, rows after
            staged = await self.archive.run(self._stage, rel, sha, size)
            if staged is None:
                report.problems.append(f"NOT_AS_IN_MANIFEST {rel}")
                continue
            await self.archive.run(self.archive.store.put_file, staged.path, staged.sha256,
                                   staged.size, move=True)
            stored_versions.add(sha)
        version_rows = [v for v in _jsonl(self.source, "index/instance_versions.jsonl")
                        if v.get("sha256") in stored_versions]
        report.versions = await self.archive.run(
            import_history, self.archive.catalogue,
            _jsonl(self.source, "index/study_retention.jsonl"),
            _jsonl(self.source, "index/corrections.jsonl"), version_rows)
        if self.audit is not None:
            for study, count in per_study.items():
                self.audit.record("instances-stored", actor=self.actor, study_uid=study,
                                  object_count=count, detail={"source": "import",
                                                              "from": report.source})
        return report
