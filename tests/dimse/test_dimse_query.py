"""C-FIND SCP (Patient Root, Study Root) with DCMTK findscu and pynetdicom (§6.2).

The server pages the index 5 rows at a time (``qido_max_limit = 5``) so every query
with more matches also checks that C-FIND pages through all of them.
"""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from dicomgen import make_dataset
from dimse_helpers import association, dcmtk, run, start_server
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import build_context
from pynetdicom.sop_class import (CTImageStorage, MRImageStorage,
                                  PatientRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelFind)

STUDY_FIND = StudyRootQueryRetrieveInformationModelFind
PATIENT_FIND = PatientRootQueryRetrieveInformationModelFind
UIDS = {k: generate_uid() for k in ("s1", "s2", "s3", "s4", "s5", "se1", "se2", "se3",
                                     "se4", "se5")}
#: (patient name, id, study, date, series, modality, instances)
STUDIES = [
    ("Smith^John", "PID-A", "s1", "20250110", "se1", "CT", 3),
    ("Smith^John", "PID-A", "s2", "20250305", "se2", "MR", 2),
    ("Wang^XiaoMing=王^小明", "PID-B", "s3", "20250120", "se3", "CT", 1),
    ("Smithers^Waylon", "PID-C", "s4", "20241231", "se4", "CT", 1),
    ("Many^Images", "PID-D", "s5", "20230101", "se5", "CT", 24),
]


@pytest.fixture(scope="module")
def qpacs(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("pacsd-q"), "[dicomweb]\nqido_max_limit = 5\n")
    datasets = []
    for name, pid, study, date, series, modality, count in STUDIES:
        for n in range(count):
            ds = make_dataset(study=UIDS[study], series=UIDS[series], rows=4, columns=4,
                              seed=n, PatientName=name, PatientID=pid, StudyDate=date,
                              Modality=modality, InstanceNumber=n + 1,
                              AccessionNumber=f"ACC-{study}",
                              SOPClassUID=MRImageStorage if modality == "MR" else CTImageStorage)
            if not name.isascii():
                ds.SpecificCharacterSet = "ISO_IR 192"
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            datasets.append(ds)
    contexts = [build_context(CTImageStorage), build_context(MRImageStorage)]
    with association(srv.dicom_port, contexts) as assoc:
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            assert rsp.get("Status") == 0x0000, open(srv.log.name).read()[-3000:]
    yield srv
    srv.stop()


def findscu(srv, out: Path, *keys: str, level: str = "STUDY", extra=()) -> list[Dataset]:
    out.mkdir(exist_ok=True)
    args = [dcmtk("findscu"), "-aec", "PACSD", "-S", "-X", "-od", str(out), *extra,
            "-k", f"QueryRetrieveLevel={level}"]
    for k in keys:
        args += ["-k", k]
    p = run(*args, "127.0.0.1", str(srv.dicom_port))
    assert p.returncode == 0, p.stderr
    return [pydicom.dcmread(f) for f in sorted(out.glob("rsp*.dcm"))]


def find(srv, identifier: Dataset, model=STUDY_FIND) -> tuple[list[Dataset], int]:
    """(pending identifiers, final status) with a pynetdicom SCU."""
    with association(srv.dicom_port, [build_context(model)]) as assoc:
        pending, final = [], None
        for status, ds in assoc.send_c_find(identifier, model):
            if status.Status in (0xFF00, 0xFF01):
                pending.append(ds)
            else:
                final = status.Status
        return pending, final


def test_study_level_wildcard_name(qpacs, tmp_path):
    rsps = findscu(qpacs, tmp_path / "r", "PatientName=Smith*", "StudyInstanceUID",
                   "StudyDate", "NumberOfStudyRelatedInstances")
    got = {(str(r.PatientName), r.StudyDate, int(r.NumberOfStudyRelatedInstances))
           for r in rsps}
    assert got == {("Smith^John", "20250110", 3), ("Smith^John", "20250305", 2),
                   ("Smithers^Waylon", "20241231", 1)}
    for r in rsps:  # only the requested keys, the unique key and the level
        assert set(r.dir()) == {"PatientName", "StudyInstanceUID", "StudyDate",
                                "NumberOfStudyRelatedInstances", "QueryRetrieveLevel"}
        assert r.QueryRetrieveLevel == "STUDY"


def test_study_level_date_range(qpacs, tmp_path):
    rsps = findscu(qpacs, tmp_path / "r", "StudyDate=20250101-20250131", "PatientID")
    assert sorted(r.PatientID for r in rsps) == ["PID-A", "PID-B"]
    assert {r.StudyInstanceUID for r in rsps} == {UIDS["s1"], UIDS["s3"]}  # unique key added


def test_series_and_image_levels(qpacs, tmp_path):
    rsps = findscu(qpacs, tmp_path / "se", f"StudyInstanceUID={UIDS['s1']}", "Modality",
                   "SeriesInstanceUID", "NumberOfSeriesRelatedInstances", level="SERIES")
    assert len(rsps) == 1
    assert rsps[0].Modality == "CT" and rsps[0].SeriesInstanceUID == UIDS["se1"]
    assert int(rsps[0].NumberOfSeriesRelatedInstances) == 3
    rsps = findscu(qpacs, tmp_path / "im", f"SeriesInstanceUID={UIDS['se5']}",
                   "SOPInstanceUID", "InstanceNumber", "PatientName", level="IMAGE")
    assert sorted(int(r.InstanceNumber) for r in rsps) == list(range(1, 25))  # 5 pages
    assert all(r.StudyInstanceUID == UIDS["s5"] for r in rsps)
    assert all(str(r.PatientName) == "Many^Images" for r in rsps)


def test_modality_list_and_universal_keys(qpacs, tmp_path):
    rsps = findscu(qpacs, tmp_path / "r", "ModalitiesInStudy=MR\\XA", "AccessionNumber",
                   "RetrieveAETitle")
    assert [r.StudyInstanceUID for r in rsps] == [UIDS["s2"]]
    assert rsps[0].RetrieveAETitle == "PACSD" and rsps[0].AccessionNumber == "ACC-s2"


def test_non_ascii_names_utf8(qpacs):
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.PatientName = "王*"
    q.SpecificCharacterSet = "ISO_IR 192"
    q.PatientID = ""
    pending, final = find(qpacs, q)
    assert final == 0x0000 and len(pending) == 1
    assert pending[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(pending[0].PatientName) == "Wang^XiaoMing=王^小明"
    assert pending[0].PatientID == "PID-B"


def test_patient_level_groups_studies(qpacs):
    q = Dataset()
    q.QueryRetrieveLevel = "PATIENT"
    q.PatientName = "Smith*"
    q.PatientID = ""
    q.NumberOfPatientRelatedStudies = None
    q.NumberOfPatientRelatedInstances = None
    q.StudyDate = ""  # a study key at PATIENT level: returned empty, not matched
    pending, final = find(qpacs, q, PATIENT_FIND)
    assert final == 0x0000
    got = {(p.PatientID, p.NumberOfPatientRelatedStudies, p.NumberOfPatientRelatedInstances,
            p.StudyDate) for p in pending}
    assert got == {("PID-A", 2, 5, ""), ("PID-C", 1, 1, "")}


@pytest.mark.parametrize("level,key,value,status", [
    (None, "PatientName", "*", 0xA900),             # no QueryRetrieveLevel
    ("PATIENT", "PatientName", "*", 0xA900),        # not a Study Root level
    ("STUDY", "StudyDate", "20251345", 0xC000),     # not a date
    ("STUDY", "StudyInstanceUID", "1.2.*", 0xC000),  # no wildcards in UIDs
])
def test_bad_identifiers(qpacs, level, key, value, status):
    q = Dataset()
    if level:
        q.QueryRetrieveLevel = level
    setattr(q, key, value)
    pending, final = find(qpacs, q)
    assert pending == [] and final == status


def test_cancel(qpacs):
    """C-CANCEL after the first match (pynetdicom drops cancels that arrive before the
    SCP starts): the SCP checks between matches and between its 5-row pages, so it stops
    (0xFE00) well before the 24 matches."""
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.SeriesInstanceUID = UIDS["se5"]
    q.SOPInstanceUID = ""
    with association(qpacs.dicom_port, [build_context(STUDY_FIND)]) as assoc:
        responses = assoc.send_c_find(q, STUDY_FIND, msg_id=7)
        statuses = [next(responses)[0].Status]
        assoc.send_c_cancel(7, query_model=STUDY_FIND)
        statuses += [status.Status for status, _ in responses]
    assert statuses[0] == 0xFF00
    assert statuses[-1] == 0xFE00
    assert len(statuses) - 1 < 24
