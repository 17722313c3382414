"""Which attributes QIDO-RS returns at each level (R-A1; PS3.18 Tables 10.6.3-3/4/5).

Ingest stores, per level, a DICOM JSON object holding these attributes
(``ParsedInstance.study_json`` / ``series_json`` / ``instance_json``) so a QIDO response is
assembled from stored bytes. The lists are the PS3.18 required return keys plus the
other attributes of the Patient/Study, Series and Image modules that viewers commonly ask
for with ``includefield``. Attributes the archive *computes* (InstanceAvailability,
ModalitiesInStudy, NumberOfStudyRelated*, RetrieveURL, ...) are not here: the query
service adds them. SpecificCharacterSet (0008,0005) is deliberately absent: DICOM JSON
is always UTF-8 (PS3.18 F.2), it is kept only in the full ``metadata``.

Each level has ``*_LEVEL_KEYWORDS`` (readable) and ``*_LEVEL_TAGS`` (sorted ints, what the
JSON keys are made from). TimezoneOffsetFromUTC appears at every level, as in PS3.18.
"""
from __future__ import annotations

from pydicom.datadict import tag_for_keyword

STUDY_LEVEL_KEYWORDS: tuple[str, ...] = (
    # PS3.18 Table 10.6.3-3 (stored ones)
    "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
    "TimezoneOffsetFromUTC", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyID",
    # rest of the Patient and General/Patient Study modules
    "IssuerOfAccessionNumberSequence", "StudyDescription", "ProcedureCodeSequence",
    "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "AdmittingDiagnosesDescription",
    "ReferencedStudySequence", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthTime", "OtherPatientIDsSequence", "OtherPatientNames", "PatientAge",
    "PatientSize", "PatientWeight", "EthnicGroup", "PatientComments",
    "AdditionalPatientHistory", "PatientSpeciesDescription", "PatientBreedDescription",
    "ResponsiblePerson", "ResponsibleOrganization", "PatientIdentityRemoved",
    # Visit Identification / Admission and Imaging Service Request attributes the
    # worklist searches (R-D2; [worklist] settings)
    "AdmissionID", "IssuerOfAdmissionIDSequence", "RouteOfAdmissions", "RequestingService",
    "RequestingServiceCodeSequence",
)

SERIES_LEVEL_KEYWORDS: tuple[str, ...] = (
    # PS3.18 Table 10.6.3-4 (stored ones)
    "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "SeriesInstanceUID",
    "SeriesNumber", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
    # rest of the General Series / General Equipment / Frame of Reference modules
    "SeriesDate", "SeriesTime", "BodyPartExamined", "Laterality", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "Manufacturer",
    "ManufacturerModelName", "OperatorsName", "PerformingPhysicianName", "ProtocolName",
    "PerformedProcedureStepID", "PerformedProcedureStepDescription", "FrameOfReferenceUID",
    "PatientPosition", "SeriesType", "SeriesDescriptionCodeSequence",
)

INSTANCE_LEVEL_KEYWORDS: tuple[str, ...] = (
    # PS3.18 Table 10.6.3-5 (stored ones)
    "SOPClassUID", "SOPInstanceUID", "TimezoneOffsetFromUTC", "InstanceNumber", "Rows",
    "Columns", "BitsAllocated", "NumberOfFrames",
    # General Image / Image Pixel / SR / Presentation State attributes viewers ask for
    "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
    "PhotometricInterpretation", "ContentDate", "ContentTime", "AcquisitionDate",
    "AcquisitionTime", "AcquisitionDateTime", "AcquisitionNumber", "InstanceCreationDate",
    "InstanceCreationTime", "ImageType", "ImageComments", "WindowCenter", "WindowWidth",
    "WindowCenterWidthExplanation", "RescaleIntercept", "RescaleSlope", "RescaleType",
    "PixelSpacing", "SliceThickness", "SliceLocation", "ImagePositionPatient",
    "ImageOrientationPatient", "LossyImageCompression", "LossyImageCompressionRatio",
    "LossyImageCompressionMethod", "BurnedInAnnotation", "FrameTime",
    "ConceptNameCodeSequence", "CompletionFlag", "VerificationFlag", "DocumentTitle",
    "ContentLabel", "ContentDescription", "ContentCreatorName", "PresentationCreationDate",
    "PresentationCreationTime",
)


def _tags(keywords: tuple[str, ...]) -> tuple[int, ...]:
    tags = []
    for kw in keywords:
        tag = tag_for_keyword(kw)
        if tag is None:  # pragma: no cover - guarded by a unit test
            raise ValueError(f"unknown keyword {kw}")
        tags.append(tag)
    return tuple(sorted(set(tags)))


STUDY_LEVEL_TAGS: tuple[int, ...] = _tags(STUDY_LEVEL_KEYWORDS)
SERIES_LEVEL_TAGS: tuple[int, ...] = _tags(SERIES_LEVEL_KEYWORDS)
INSTANCE_LEVEL_TAGS: tuple[int, ...] = _tags(INSTANCE_LEVEL_KEYWORDS)
