"""A rich synthetic instance for the de-identification tests (invented identities)."""
from __future__ import annotations

from dicomgen import make_dataset
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

STUDY = "1.2.826.0.1.3680043.9.77.1"
SERIES = STUDY + ".1"
FOR = STUDY + ".99"
NAME = "Zhangsan^Lisi"
PID = "MRN-7731995"


def rich_dataset(sop: str, *, ref_sop: str | None = None, seed: int = 0) -> Dataset:
    ds = make_dataset(study=STUDY, series=SERIES, sop=sop, seed=seed)
    ds.PatientName = NAME
    ds.PatientID = PID
    ds.IssuerOfPatientID = "HOSP-A"
    ds.PatientBirthDate = "19700412"
    ds.PatientAddress = "12 Quietstreet, Hangzhou"
    ds.PatientSex = "F"
    ds.PatientAge = "055Y"
    ds.PatientWeight = "61.5"
    ds.PatientSize = "1.65"
    ds.OtherPatientIDs = "OLD-99887"
    ds.PatientTelephoneNumbers = "0571-5550123"
    ds.InstitutionName = "Westlake General Hospital"
    ds.InstitutionAddress = "1 Lakeside Road"
    ds.InstitutionalDepartmentName = "Radiology West"
    ds.ReferringPhysicianName = "Wang^Doctor"
    ds.PerformingPhysicianName = "Li^Tech"
    ds.OperatorsName = "Chen^Operator"
    ds.NameOfPhysiciansReadingStudy = "Zhao^Reader"
    ds.AccessionNumber = "ACC55501"
    ds.StudyID = "S4711"
    ds.StudyDate, ds.StudyTime = "20240301", "101500"
    ds.SeriesDate, ds.SeriesTime = "20240301", "101600"
    ds.AcquisitionDate, ds.ContentDate = "20240301", "20240301"
    ds.StudyDescription = f"CT chest for {NAME.split('^')[0]} follow-up"
    ds.SeriesDescription = "Axial 1mm"
    ds.ProtocolName = "Chest routine"
    ds.ImageComments = f"patient {PID} moved"
    ds.StationName = "CT-WEST-01"
    ds.DeviceSerialNumber = "SN-0042"
    ds.Manufacturer = "Acme"
    ds.FrameOfReferenceUID = FOR
    ds.Modality = "CT"
    ds.BurnedInAnnotation = "NO"
    ds.BodyPartExamined = "CHEST"
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = ref_sop or sop
    ds.ReferencedImageSequence = Sequence([ref])
    src = Dataset()
    src.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    src.ReferencedSOPInstanceUID = ref_sop or sop
    src.PatientName = NAME                           # PN not in the table, in a sequence
    ds.SourceImageSequence = Sequence([src])
    ds.RequestAttributesSequence = Sequence([Dataset()])
    ds.RequestAttributesSequence[0].RequestedProcedureID = "RP1"
    ds.add_new(0x00091010, "LO", "ACME private " + PID)
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x50000010, "US", 1)                  # a curve element
    ds.add_new(0x60003000, "OW", b"\0" * 32)         # overlay data
    ds.add_new(0x60000010, "US", 16)                 # overlay rows (kept)
    return ds
