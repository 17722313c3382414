"""De-identification (issue 5 item 5; R-E7, R-H3, R-G2; MLPS 22 个人信息保护; SEC-25):
the PS3.15 Annex E Basic Application Level Confidentiality Profile and its options on a
rich synthetic instance, consistent UID remapping within one export, and the research
export end to end against a real ``pacsd serve``: STOW, ``pacsd export --deidentify``,
every output byte scanned for the original identity, pixel data identical, authorization
on the audit trail, refusal without one."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import urllib.request

import orjson
import pydicom
import pytest
from deidhelpers import FOR, NAME, PID, SERIES, STUDY, rich_dataset
from dicomgen import multipart, to_part10
from pacsd_server import Server

from pacsd.config import Settings
from pacsd.dicom.deid import (OPTIONS, RULES, BurnedInAnnotationRefused, Profile,
                              deidentify, remap_uid, resolve_action)
from pacsd.services.archive import Archive
from pacsd.services.audit import EVENT_TYPES, AuditTrail

SOP1, SOP2 = STUDY + ".1.1", STUDY + ".1.2"
SECRET = b"s" * 32


def deid(ds=None, *options, secret=SECRET, **kw):
    ds = ds if ds is not None else rich_dataset(SOP1)
    return deidentify(ds, Profile(secret=secret, options=frozenset(options), **kw))


# --- the table ---------------------------------------------------------------------------

def test_R_E7_SEC_25_table_keywords_match_the_data_dictionary():
    from pydicom.datadict import keyword_for_tag
    assert len(RULES) > 300
    for tag, rule in RULES.items():
        assert keyword_for_tag(tag) == rule.keyword, hex(tag)
        assert rule.basic in {"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D",
                              "X/Z/U*"}
        assert set(rule.options) <= {"dates", "pat", "dev", "inst", "desc", "uids"}
        assert set(rule.options.values()) <= {"K", "C"}


def test_R_E7_option_resolution_retain_wins_over_clean():
    occ = RULES[0x00102180]   # Occupation: X, Retain Patient Characteristics K, Clean Desc C
    assert resolve_action(occ, set()) == "X"
    assert resolve_action(occ, {"desc"}) == "C"
    assert resolve_action(occ, {"desc", "pat"}) == "K"


# --- the basic profile -------------------------------------------------------------------

def test_R_E7_R_H3_MLPS22_basic_profile_actions_on_a_rich_instance():
    src = rich_dataset(SOP1)
    pixels = src.PixelData
    ds = deid(src)
    # Z: present, empty (PatientID / PatientName: a keyed pseudonym, allowed by Z)
    assert ds.PatientID.startswith("ANON") and ds.PatientID != PID
    assert str(ds.PatientName) == ds.PatientID
    for kw in ("PatientBirthDate", "AccessionNumber", "StudyID", "ReferringPhysicianName",
               "StudyDate", "StudyTime", "PatientSex"):
        assert kw in ds and ds[kw].value in ("", None), kw
    # X: removed
    for kw in ("PatientAddress", "OtherPatientIDs", "PatientTelephoneNumbers",
               "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
               "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy",
               "IssuerOfPatientID", "StudyDescription", "SeriesDescription", "ImageComments",
               "ProtocolName", "StationName", "DeviceSerialNumber", "PatientAge",
               "PatientWeight", "PatientSize", "SeriesDate", "SeriesTime", "AcquisitionDate",
               "RequestAttributesSequence"):
        assert kw not in ds, kw
    # Z/D: ContentDate emptied
    assert ds.ContentDate == ""
    # U: every instance / study / series / frame-of-reference UID replaced by 2.25.
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert str(ds[kw].value).startswith("2.25."), kw
        assert len(str(ds[kw].value)) <= 64
    assert ds.SOPInstanceUID == remap_uid(SOP1, SECRET)
    assert ds.FrameOfReferenceUID == remap_uid(FOR, SECRET)
    # X/Z/U*: reference sequences kept with their UIDs remapped consistently
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert ds.ReferencedImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"          # class UIDs kept
    # pacsd hardening: a person name outside the table (in a sequence) emptied
    assert ds.SourceImageSequence[0].PatientName == ""
    # private tags, curves, overlay data removed; other overlay attributes kept
    assert not any(e.tag.is_private for e in ds.iterall())
    assert 0x50000010 not in ds and 0x60003000 not in ds and 0x60000010 in ds
    # K: not in the table, kept
    assert ds.Modality == "CT" and ds.Manufacturer == "Acme" and ds.BodyPartExamined == "CHEST"
    # recorded: (0012,0062) / (0012,0063) / (0012,0064) with CID 7050 113100
    assert ds.PatientIdentityRemoved == "YES"
    assert list(ds.DeidentificationMethod) == ["Basic Application Confidentiality Profile"] \
        or ds.DeidentificationMethod == "Basic Application Confidentiality Profile"
    codes = [(i.CodeValue, i.CodingSchemeDesignator) for i in
             ds.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM")]
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    # file meta rebuilt, pixel data untouched (R-A5)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.preamble == b"\0" * 128
    assert ds.PixelData == pixels
    # nothing identifying left anywhere in the written object
    raw = to_part10(ds)
    for needle in (PID, "Zhangsan", "Westlake", "Wang^Doctor", "ACC55501", "19700412",
                   STUDY, SOP1, FOR, "0571-5550123", "OLD-99887", "HOSP-A"):
        assert needle.encode() not in raw, needle


def test_R_E7_R_H3_options_change_the_result_as_specified():
    ds = deid(None, "retain-full-dates")
    assert ds.StudyDate == "20240301" and ds.SeriesDate == "20240301"
    assert ds.AcquisitionDate == "20240301" and ds.StudyTime == "101500"
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert ds.PatientBirthDate == ""                       # birth date is not a study date
    ds = deid(None, "retain-patient-characteristics")
    assert (ds.PatientSex, ds.PatientAge, str(ds.PatientWeight)) == ("F", "055Y", "61.5")
    assert "StudyDate" in ds and ds.StudyDate == ""
    ds = deid(None, "retain-device-identity")
    assert ds.StationName == "CT-WEST-01" and ds.DeviceSerialNumber == "SN-0042"
    assert "InstitutionName" not in ds
    ds = deid(None, "retain-institution-identity")
    assert ds.InstitutionName == "Westlake General Hospital" and "StationName" not in ds
    ds = deid(None, "clean-descriptors")
    # C: kept, with the patient's name / ID cut out
    assert ds.StudyDescription == "CT chest for * follow-up"
    assert ds.ImageComments == "patient * moved"
    assert ds.SeriesDescription == "Axial 1mm" and ds.ProtocolName == "Chest routine"
    ds = deid(None, *OPTIONS)
    codes = {i.CodeValue for i in ds.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113105", "113106", "113108", "113109", "113112"}
    assert len(ds.DeidentificationMethod) == 6
    assert all(len(v) <= 64 for v in ds.DeidentificationMethod)
    with pytest.raises(ValueError):
        Profile(secret=SECRET, options=frozenset({"retain-everything"}))


def test_R_E7_SEC_25_gb18030_person_name_removed_and_cleaned_from_descriptors():
    ds = rich_dataset(SOP1)
    ds.SpecificCharacterSet = "GB18030"
    ds.PatientName = "Zhang^Sanfeng=张^三丰"
    ds.StudyDescription = "张三丰 胸部CT Zhang Sanfeng"
    raw_name = "张三丰".encode("gb18030")
    assert raw_name in to_part10(ds)
    out = deid(ds, "clean-descriptors")
    assert out.StudyDescription == "* 胸部CT *"
    raw = to_part10(out)
    assert raw_name not in raw and "张".encode("gb18030") + "^".encode() not in raw
    assert b"Sanfeng" not in raw


def test_R_H3_SEC_25_uid_mapping_consistent_within_an_export_different_across_exports():
    a1 = deid(rich_dataset(SOP1, ref_sop=SOP2))
    a2 = deid(rich_dataset(SOP2, ref_sop=SOP1, seed=1))
    # same export (same secret): shared UIDs agree, references point at the other instance
    assert a1.StudyInstanceUID == a2.StudyInstanceUID
    assert a1.SeriesInstanceUID == a2.SeriesInstanceUID
    assert a1.FrameOfReferenceUID == a2.FrameOfReferenceUID
    assert a1.SOPInstanceUID != a2.SOPInstanceUID
    assert a1.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a2.SOPInstanceUID
    assert a2.SourceImageSequence[0].ReferencedSOPInstanceUID == a1.SOPInstanceUID
    assert a1.PatientID == a2.PatientID                   # one pseudonym per patient
    # another export (another secret): unrelated UIDs and pseudonym
    b1 = deid(rich_dataset(SOP1, ref_sop=SOP2), secret=b"t" * 32)
    assert b1.StudyInstanceUID != a1.StudyInstanceUID
    assert b1.SOPInstanceUID != a1.SOPInstanceUID
    assert b1.PatientID != a1.PatientID
    assert str(STUDY) not in (a1.StudyInstanceUID, b1.StudyInstanceUID)


def test_R_E7_SEC_25_burned_in_annotation_refused_unless_allowed():
    ds = rich_dataset(SOP1)
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotationRefused):
        deid(ds)
    us = rich_dataset(SOP1)
    del us.BurnedInAnnotation
    us.Modality = "US"                                     # absent on US: may burn in
    with pytest.raises(BurnedInAnnotationRefused):
        deid(us)
    ds = rich_dataset(SOP1)
    ds.BurnedInAnnotation = "YES"
    assert deid(ds, allow_burned_in=True).PatientIdentityRemoved == "YES"


# --- end to end: real server, the CLI, every output byte --------------------------------

def _stow(url: str, parts: list[bytes]) -> None:
    body, ctype = multipart(parts)
    req = urllib.request.Request(url + "/dicom-web/studies", data=body, method="POST",
                                 headers={"Content-Type": ctype,
                                          "Accept": "application/dicom+json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pacsd.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_R_H3_R_G2_R_E7_MLPS22_research_export_end_to_end(tmp_path):
    assert "research-export" in EVENT_TYPES
    data_dir = str(tmp_path / "data")
    os.makedirs(data_dir)
    originals = {SOP1: to_part10(rich_dataset(SOP1, ref_sop=SOP2)),
                 SOP2: to_part10(rich_dataset(SOP2, ref_sop=SOP1, seed=1))}
    burned = rich_dataset(STUDY + ".1.3", seed=2)
    burned.BurnedInAnnotation = "YES"
    originals[STUDY + ".1.3"] = to_part10(burned)
    pixels = {sop: pydicom.dcmread(io.BytesIO(b)).PixelData for sop, b in originals.items()}
    srv = Server(data_dir)
    try:
        _stow(srv.url, list(originals.values()))
        out = tmp_path / "research"
        # refused without an authorization record (and nothing written)
        r = _cli("export", "--deidentify", "--to", str(out), "--data-dir", data_dir)
        assert r.returncode == 2 and "authorization" in r.stderr
        assert not out.exists() or not any(out.iterdir())
        r = _cli("export", "--deidentify", "--authorization", "no-reason-given",
                 "--to", str(out), "--data-dir", data_dir)
        assert r.returncode == 2
        r = _cli("export", "--deidentify", "--deid-option", "retain-everything",
                 "--authorization", "IRB-1: x", "--to", str(out), "--data-dir", data_dir)
        assert r.returncode == 2 and "unknown --deid-option" in r.stderr
        # the export, with an authorization and an option
        r = _cli("export", "--deidentify", "--deid-option", "retain-patient-characteristics",
                 "--authorization", "IRB-2026-017: lung nodule cohort", "--to", str(out),
                 "--data-dir", data_dir)
        assert r.returncode == 0, r.stderr
        assert "objects: 2 written of 3" in r.stdout and "skipped: 1" in r.stdout
        assert NAME not in r.stdout + r.stderr and PID not in r.stdout + r.stderr
    finally:
        srv.stop()

    # every byte of the output: no original identity, UID or patient ID
    needles = [NAME.encode(), b"Zhangsan", PID.encode(), STUDY.encode(), SERIES.encode(),
               FOR.encode(), b"Westlake", b"19700412", b"ACC55501", b"HOSP-A",
               *(s.encode() for s in originals)]
    files = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs]
    assert len(files) == 5                     # 2 objects, manifest.csv/json, README.txt
    for path in files:
        rel = os.path.relpath(path, out).encode()
        blob = open(path, "rb").read()
        for n in needles:
            assert n not in blob and n not in rel, (rel, n)
    assert not (out / "index").exists()        # no index dump
    manifest = list(csv.DictReader(open(out / "manifest.csv", newline="")))
    assert len(manifest) == 2
    summary = orjson.loads((out / "manifest.json").read_bytes())
    assert summary["objects"] == 2 and summary["skipped_burned_in"] == 1
    assert [c["code"] for c in summary["deidentification"]["codes"]] == ["113100", "113108"]
    assert summary["authorization_reference"] == "IRB-2026-017"
    new_sops = set()
    for row in manifest:
        ds = pydicom.dcmread(out / row["path"])
        assert ds.PatientIdentityRemoved == "YES"
        assert "Basic Application Confidentiality Profile" in ds.DeidentificationMethod
        assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == \
            ["113100", "113108"]
        assert ds.PatientSex == "F"                        # the option took effect
        assert ds.SOPInstanceUID == row["sop_instance_uid"]
        new_sops.add(ds.SOPInstanceUID)
        ref = ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID
        assert ref in new_sops or ref in {r["sop_instance_uid"] for r in manifest}
        assert ds.PixelData in (pixels[SOP1], pixels[SOP2])   # byte-identical pixels
        assert ds.StudyInstanceUID == manifest[0]["study_instance_uid"]
    assert {ds_pix for ds_pix in (pydicom.dcmread(out / r["path"]).PixelData
                                  for r in manifest)} == {pixels[SOP1], pixels[SOP2]}
    # the export verifies against its manifest
    r = _cli("export", "--verify", str(out), "--data-dir", data_dir)
    assert r.returncode == 0 and "result: OK" in r.stdout

    # the audit trail: the refusals, the authorization, options, counts, target
    s = Settings()
    s.server.data_dir = data_dir
    archive = Archive.open(s)
    try:
        audit = AuditTrail(archive.catalogue)
        events = audit.query(event_type="research-export", limit=100)
        assert audit.verify().ok
    finally:
        archive.close()
    for e in events:
        e["detail"] = orjson.loads(e["detail"]) if isinstance(e["detail"], str) \
            else (e["detail"] or {})
    denied = [e for e in events if e["outcome"] == "denied"]
    assert len(denied) == 3
    summary_ev = [e for e in events if e["outcome"] == "success" and
                  "authorization" in e["detail"]]
    assert len(summary_ev) == 1
    d = summary_ev[0]["detail"]
    assert d["authorization"] == {"reference": "IRB-2026-017",
                                  "reason": "lung nodule cohort"}
    assert d["options"] == ["retain-patient-characteristics"]
    assert d["objects"] == 2 and d["skipped_burned_in"] == 1 and d["complete"] is True
    assert summary_ev[0]["location"] == str(out)
    per_study = [e for e in events if e["study_uid"] == STUDY]
    assert len(per_study) == 1 and per_study[0]["object_count"] == 2
    for e in events:                                        # no patient data in the trail
        assert PID not in orjson.dumps(e).decode() and "Zhangsan" not in \
            orjson.dumps(e).decode()
