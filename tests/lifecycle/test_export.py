"""Export and hand-back (R-A11): every object as Part 10 bytes identical to what was
stored, a manifest with SHA-256 sums, the index as a portable dump; to a local directory
and to S3 (real S3-protocol server); resumable (FT-13 style); ``--verify`` finds damage;
every exported object audited (R-E4)."""
from __future__ import annotations

import csv
import hashlib
import io
import os

import orjson
import pytest
from dicomgen import make_instance

from pacsd import cli
from pacsd.index.lifecycle import ExportFilter
from pacsd.services.audit import AuditTrail
from pacsd.services.export import (STATE_DIR, Exporter, Target, object_path, safe_uid,
                                   verify_export)

from .conftest import ingest

pytestmark = pytest.mark.asyncio

STUDY_A, STUDY_B = "1.2.826.0.1.3680043.9.8.1", "1.2.826.0.1.3680043.9.8.2"


async def populate(archive) -> dict[str, bytes]:
    """Two patients, two studies, five instances; returns SOPInstanceUID -> bytes."""
    out = {}
    for i in range(5):
        study = STUDY_A if i < 3 else STUDY_B
        sop = f"1.2.826.0.1.3680043.9.8.3.{i}"
        data = make_instance(seed=i, study=study, series=study + ".1", sop=sop,
                             PatientID="PID-A" if i < 3 else "PID/../B",
                             StudyDate="20100101" if i < 3 else "20200101")
        await ingest(archive, data)
        out[sop] = data
    return out


def manifest_rows(root) -> list[dict]:
    with open(os.path.join(root, "manifest.csv"), newline="") as fh:
        return list(csv.DictReader(fh))


async def test_R_A11_export_local_dir_bytes_identical_manifest_and_dump(archive, tmp_path):
    objects = await populate(archive)
    out = tmp_path / "export"
    report = Exporter(archive, Target(str(out))).run()
    assert report.complete and report.written == 5 and report.present == 0
    rows = manifest_rows(out)
    assert {r["sop_instance_uid"] for r in rows} == set(objects)
    for r in rows:
        data = (out / r["path"]).read_bytes()
        assert data == objects[r["sop_instance_uid"]]          # byte for byte
        assert hashlib.sha256(data).hexdigest() == r["sha256"]
        assert int(r["size"]) == len(data)
        # No raw patient data in paths: PatientID "PID/../B" never reaches a path.
        assert "PID" not in r["path"] and ".." not in r["path"].split("/")
        assert r["path"].startswith("DICOM/P")
    summary = orjson.loads((out / "manifest.json").read_bytes())
    assert summary["objects"] == 5 and summary["bytes"] == sum(map(len, objects.values()))
    dumped = (out / "index/instances.jsonl").read_bytes().splitlines()
    assert len(dumped) == 5
    assert {orjson.loads(x)["sop_instance_uid"] for x in dumped} == set(objects)
    assert len((out / "index/studies.jsonl").read_bytes().splitlines()) == 2
    assert (out / "index/audit_events.jsonl").exists()  # full export: the trail too
    assert (out / "index/audit_anchor.jsonl").exists()  # and where it starts (pruning)
    assert not (out / STATE_DIR / "state.json").exists()
    assert verify_export(Target(str(out))).ok


async def test_R_A11_every_exported_object_is_audited(archive, tmp_path):
    objects = await populate(archive)
    audit = AuditTrail(archive.catalogue)
    Exporter(archive, Target(str(tmp_path / "e")), audit=audit).run()
    events = audit.query(event_type="export", limit=100)
    per_object = [e for e in events if orjson.loads(e["detail"]).get("sop_instance_uid")]
    assert sorted(orjson.loads(e["detail"])["sop_instance_uid"] for e in per_object) == \
        sorted(objects)
    assert all(e["location"] == str(tmp_path / "e") for e in events)
    assert any(orjson.loads(e["detail"]).get("complete") for e in events)
    assert audit.verify().ok


async def test_R_A11_filters_study_patient_dates(archive, tmp_path):
    objects = await populate(archive)
    r = Exporter(archive, Target(str(tmp_path / "s"))).run(ExportFilter(study_uid=STUDY_B))
    assert r.complete and r.written == 2
    assert {x["study_instance_uid"] for x in manifest_rows(tmp_path / "s")} == {STUDY_B}
    assert not (tmp_path / "s/index/audit_events.jsonl").exists()  # filtered: no trail
    r = Exporter(archive, Target(str(tmp_path / "p"))).run(ExportFilter(patient_id="PID-A"))
    assert r.written == 3
    r = Exporter(archive, Target(str(tmp_path / "d"))).run(
        ExportFilter(date_from="20150101", date_to="20251231"))
    assert {x["sop_instance_uid"] for x in manifest_rows(tmp_path / "d")} == \
        {s for s, d in objects.items() if s.endswith((".3", ".4"))}


async def test_R_A11_FT13_resume_after_interruption_skips_present_objects(archive, tmp_path):
    objects = await populate(archive)
    out = tmp_path / "export"
    first = Exporter(archive, Target(str(out))).run(limit=2)
    assert not first.complete and first.written == 2
    assert (out / STATE_DIR / "state.json").exists() and not (out / "manifest.json").exists()
    second = Exporter(archive, Target(str(out))).run()
    assert second.complete and second.resumed_after_pk > 0
    assert second.written == 3 and second.present == 0
    assert len(manifest_rows(out)) == 5 and verify_export(Target(str(out))).ok
    # A run that lost its checkpoint (or repeats the export) writes nothing present again.
    third = Exporter(archive, Target(str(out))).run()
    assert third.complete and third.written == 0 and third.present == 5
    assert {r["sop_instance_uid"] for r in manifest_rows(out)} == set(objects)


async def test_R_A11_resume_rewrites_a_half_written_object(archive, tmp_path):
    await populate(archive)
    out = tmp_path / "export"
    Exporter(archive, Target(str(out))).run(limit=1)
    # The next object was being written when the process died: a truncated file.
    rows = list(Exporter(archive, Target(str(out))).lifecycle.iter_export(ExportFilter()))
    victim = out / object_path(rows[1])
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(b"DICM-truncated")
    report = Exporter(archive, Target(str(out))).run()
    assert report.complete and report.written == 4
    assert verify_export(Target(str(out))).ok


async def test_R_A11_verify_detects_corrupted_and_missing_files(archive, tmp_path):
    await populate(archive)
    out = tmp_path / "export"
    Exporter(archive, Target(str(out))).run()
    rows = manifest_rows(out)
    flipped = out / rows[0]["path"]
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0x01
    flipped.write_bytes(bytes(data))
    os.unlink(out / rows[1]["path"])
    report = verify_export(Target(str(out)))
    assert not report.ok
    assert any(p.startswith("DIFFERING_CHECKSUM") and rows[0]["path"] in p
               for p in report.problems)
    assert any(p.startswith("MISSING") and rows[1]["path"] in p for p in report.problems)
    assert len(report.problems) == 2
    # A tampered index dump is caught through manifest.json.
    with open(out / "index/studies.jsonl", "ab") as fh:
        fh.write(b"{}\n")
    assert any("index/studies.jsonl" in p for p in verify_export(Target(str(out))).problems)


async def test_R_A11_export_to_s3_and_verify(archive, tmp_path, s3_endpoint):
    objects = await populate(archive)
    opts = s3_endpoint.store_options()
    url = "s3://pacsd-e2e/export-" + os.urandom(4).hex()
    report = Exporter(archive, Target(url, **opts)).run()
    assert report.complete and report.written == 5
    client = s3_endpoint.client()
    bucket, prefix = url[5:].split("/", 1)
    body = client.get_object(Bucket=bucket, Key=f"{prefix}/manifest.csv")["Body"].read()
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    for r in rows:
        got = client.get_object(Bucket=bucket, Key=f"{prefix}/{r['path']}")["Body"].read()
        assert got == objects[r["sop_instance_uid"]]
    assert verify_export(Target(url, **opts)).ok
    # Damage one object in the bucket: verify says so.
    client.put_object(Bucket=bucket, Key=f"{prefix}/{rows[2]['path']}", Body=b"x")
    bad = verify_export(Target(url, **opts))
    assert [p.split()[0] for p in bad.problems] == ["DIFFERING_SIZE"]


async def test_safe_uid_never_passes_path_syntax():
    assert safe_uid("1.2.3") == "1.2.3"
    for bad in ("../../etc", "1.2/3", "1.2\\3", "a" * 10, "1." * 40 + "1", "1.2\x00"):
        s = safe_uid(bad)
        assert s.startswith("X") and len(s) == 41 and s[1:].isalnum()


async def test_R_A11_cli_export_and_verify_exit_status(archive, settings, tmp_path, capsys):
    await populate(archive)
    archive.close()
    copies = [c["url"] for c in settings.storage.copies]
    common = ["--data-dir", settings.server.data_dir]
    for c in copies:
        common += ["--store", c]
    out = str(tmp_path / "cli-export")
    assert cli.main(["export", "--to", out, *common]) == 0
    text = capsys.readouterr().out
    assert "objects: 5 written" in text and "result: COMPLETE" in text
    assert cli.main(["export", "--verify", out, *common]) == 0
    assert "result: OK" in capsys.readouterr().out
    first = manifest_rows(out)[0]["path"]
    with open(os.path.join(out, first), "r+b") as fh:
        fh.seek(200)
        b = fh.read(1)
        fh.seek(200)
        fh.write(bytes([b[0] ^ 0xFF]))
    assert cli.main(["export", "--verify", out, *common]) == 1
    assert "DIFFERING_CHECKSUM" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # argparse: bad date, exit status 2
        cli.main(["export", "--to", out, "--date-from", "2010-01-01", *common])
    assert exc.value.code == 2


async def test_R_A11_R_A8_export_includes_kept_versions(archive, tmp_path):
    from pacsd.services.versions import VersionService
    objects = await populate(archive)
    VersionService(archive).correct(STUDY_A, {"StudyDescription": "fixed"}, "typo")
    out = tmp_path / "export"
    first = Exporter(archive, Target(str(out))).run(limit=6)  # stops inside the versions
    assert not first.complete
    report = Exporter(archive, Target(str(out))).run()
    assert report.complete
    rows = manifest_rows(out)
    assert len(rows) == 8  # 5 current + 3 originals of the corrected study
    kept = [r for r in rows if r["version"]]
    assert sorted(r["sop_instance_uid"] for r in kept) == sorted(
        s for s in objects if s.endswith((".0", ".1", ".2")))
    for r in kept:
        assert r["version"] == "1" and r["path"].endswith(".v1.dcm")
        assert (out / r["path"]).read_bytes() == objects[r["sop_instance_uid"]]
    current = [r for r in rows if not r["version"] and r["study_instance_uid"] == STUDY_A]
    assert all((out / r["path"]).read_bytes() != objects[r["sop_instance_uid"]]
               for r in current)
    assert verify_export(Target(str(out))).ok
    assert len((out / "index/instance_versions.jsonl").read_bytes().splitlines()) == 3
