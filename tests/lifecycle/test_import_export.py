"""Hand-back round trip (R-A11): an export imported by another pacsd serves the same
objects byte for byte, with their kept versions (R-A8) and legal holds (R-A7); the import
refuses files that do not match the manifest, and is idempotent."""
from __future__ import annotations

import os

import pytest
from dicomgen import make_instance

from pacsd import cli
from pacsd.services import Archive, RetrieveService
from pacsd.services.export import Exporter, Target
from pacsd.services.import_export import Importer
from pacsd.services.retention import RetentionService, policy_of
from pacsd.services.versions import VersionService

from .conftest import ingest, lifecycle_settings

pytestmark = pytest.mark.asyncio
STUDY = "1.2.826.0.1.3680043.9.15.1"


async def test_R_A11_export_import_round_trip(archive, tmp_path):
    originals = {}
    for i in range(3):
        sop = f"{STUDY}.{i}"
        originals[sop] = make_instance(seed=i, study=STUDY, series=STUDY + ".1", sop=sop)
        await ingest(archive, originals[sop])
    VersionService(archive).correct(STUDY, {"PatientName": "Right^Name"}, "fix")
    RetentionService(archive).set_hold(STUDY, True, "litigation 9")
    current = {r.sop_instance_uid: await RetrieveService(archive).read_verified(r)
               for r in archive.catalogue.iter_instances(STUDY)}
    out = tmp_path / "export"
    assert Exporter(archive, Target(str(out))).run().complete

    other = Archive.open(lifecycle_settings(tmp_path / "other"))
    try:
        report = await Importer(other, Target(str(out))).run()
        assert report.ok and report.stored == 3 and report.versions == 3
        rows = list(other.catalogue.iter_instances(STUDY))
        assert {r.sop_instance_uid: await RetrieveService(other).read_verified(r)
                for r in rows} == current                       # served unchanged
        svc = VersionService(other)
        for sop, data in originals.items():
            assert svc.version_bytes(STUDY, STUDY + ".1", sop, 1) == data
        h = svc.history(STUDY)
        assert [c["reason"] for c in h["corrections"]] == ["fix"]
        assert policy_of(other).decide(STUDY).legal_hold is True
        again = await Importer(other, Target(str(out))).run()   # idempotent
        assert again.ok and again.stored == 0 and again.present == 3 and again.versions == 0
        assert len(svc.history(STUDY)["corrections"]) == 1
    finally:
        other.close()


async def test_R_A11_import_refuses_a_damaged_file(archive, tmp_path, capsys):
    for i in range(2):
        await ingest(archive, make_instance(seed=i, study=STUDY, series=STUDY + ".1",
                                            sop=f"{STUDY}.{i}"))
    out = tmp_path / "export"
    assert Exporter(archive, Target(str(out))).run().complete
    import csv
    with open(out / "manifest.csv", newline="") as fh:
        first = next(csv.DictReader(fh))["path"]
    with open(out / first, "r+b") as fh:
        fh.seek(300)
        fh.write(b"\x00\x01")
    s = lifecycle_settings(tmp_path / "cli")
    args = ["import-export", "--from", str(out), "--data-dir", s.server.data_dir]
    for c in s.storage.copies:
        args += ["--store", c["url"]]
    import asyncio
    assert await asyncio.to_thread(cli.main, args) == 1   # the CLI runs its own loop
    text = capsys.readouterr().out
    assert "NOT_AS_IN_MANIFEST" in text and first in text and "objects: 1 stored" in text
    assert not os.listdir(os.path.join(s.storage.copies[0]["url"], "staging"))
