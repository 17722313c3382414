"""C-FIND with the worklist's standard keys (R-D2, issue 8 item 1): Admission ID and
Requesting Service (the default [worklist] sources of the visit number and the ordering
department) and BodyPartExamined at the STUDY level match as in QIDO-RS; DCMTK findscu
and pynetdicom against a real pacsd."""
from __future__ import annotations

import pydicom
import pytest
from dicomgen import worklist_studies
from dimse_helpers import association, start_server
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind

from test_dimse_query import find, findscu

STUDY_FIND = StudyRootQueryRetrieveInformationModelFind


@pytest.fixture(scope="module")
def wpacs(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("pacsd-wl"), "")
    data = worklist_studies()
    with association(srv.dicom_port, [build_context(CTImageStorage)]) as assoc:
        for ds in data.values():
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            rsp = assoc.send_c_store(ds)
            assert rsp.get("Status") == 0x0000, open(srv.log.name).read()[-3000:]
    yield srv, {ds.StudyInstanceUID: name for name, ds in data.items()}
    srv.stop()


def _query(**keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientName = ""
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def test_RD2_cfind_admission_id_requesting_service_body_part(wpacs):
    srv, names = wpacs
    pending, status = find(srv, _query(AdmissionID="ZY2025*"))
    assert status == 0x0000
    assert sorted(names[d.StudyInstanceUID] for d in pending) == ["li", "zhao"]
    assert sorted(d.AdmissionID for d in pending) == ["ZY2025001", "ZY2025009"]
    pending, _ = find(srv, _query(RequestingService="Cardiology", AdmissionID=""))
    assert sorted(names[d.StudyInstanceUID] for d in pending) == ["li", "zhao"]
    pending, _ = find(srv, _query(BodyPartExamined="KNEE"))
    assert [names[d.StudyInstanceUID] for d in pending] == ["zhang"]
    assert pending[0].BodyPartExamined == "KNEE"


def test_RD2_findscu_admission_id(wpacs, tmp_path):
    srv, names = wpacs
    rsp = findscu(srv, tmp_path / "out", "AdmissionID=ZY2025001", "StudyInstanceUID=")
    assert [names[d.StudyInstanceUID] for d in rsp] == ["li"]
