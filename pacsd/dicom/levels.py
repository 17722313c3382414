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

import functools
import struct

import orjson
import xxhash
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


# --- cut points (R-H1, issue 6) -----------------------------------------------------------
#
# A QIDO-RS item is the stored level JSON plus a few attributes the query layer adds
# (InstanceAvailability, the parent UIDs, ModalitiesInStudy, NumberOf*Related*, ...) in tag
# order. So that an item can be spliced from the stored bytes instead of decoded, merged,
# sorted and encoded again, ingest records where each of those attributes goes in the
# level JSON. Positions count as if the JSON's opening brace were a comma, so that every
# element is ``,"tag":{...}``: for each *cut key* K (sorted), (start, end) is the range of
# K's own element with its leading comma when the JSON holds one, else an empty range
# where ``,K`` would be inserted. What lies between two ranges is a run of whole elements,
# each with its leading comma.
# The record starts with a format version, the JSON's length and its XXH3-64, so a record
# that does not describe the JSON next to it (a writer that changed the JSON and not the
# cuts, an older row) is ignored and the item is built the general way.

#: Tags the query layer may add at each level (pacsd.index.qido_sql: COMPUTED, the parent
#: UIDs and the worklist private block), 8 upper-case hex digits, sorted.
STUDY_CUT_KEYS: tuple[str, ...] = (
    "00080056", "00080061", "00080062", "00180015", "0020000D", "00201206", "00201208",
    "00770010", "00771001", "00771002", "00771003", "00771004")
SERIES_CUT_KEYS: tuple[str, ...] = (
    "00080056", "00080061", "00080062", "0020000D", "0020000E", "00201206", "00201208",
    "00201209")
INSTANCE_CUT_KEYS: tuple[str, ...] = SERIES_CUT_KEYS
CUTS_VERSION = 1
MAX_CUT_JSON = 0xFFFF


@functools.lru_cache(maxsize=16)
def cuts_struct(keys: tuple[str, ...]) -> struct.Struct:
    """version, JSON length, XXH3-64 of the JSON, then (start, end) per cut key."""
    return struct.Struct(f"<BHQ{2 * len(keys)}H")


@functools.lru_cache(maxsize=16)
def _plan(keys: tuple[str, ...], cut_keys: tuple[str, ...]
          ) -> tuple[tuple[str, bool, bool], ...]:
    """(key, is a cut key, is a level key) for every key of either tuple, sorted."""
    cuts, level = set(cut_keys), set(keys)
    return tuple((k, k in cuts, k in level) for k in sorted(level | cuts))


def level_json(meta: dict, keys: tuple[str, ...], cut_keys: tuple[str, ...]
               ) -> tuple[bytes, bytes | None]:
    """(level JSON, cut record) of the attributes ``keys`` (sorted) found in ``meta``.
    The JSON is byte for byte ``orjson.dumps({k: meta[k] for k in keys if k in meta})``;
    the record is None when the JSON is too long for it (the reader then decodes).
    One pass over the level's and the cut keys in order (:func:`_plan`): the elements
    between two cut keys are encoded together, each present cut key alone."""
    out = [b"{"]
    pos = 0  # end of what is written, counting the brace as the first element's comma
    bounds: list[int] = []
    run: dict = {}
    dumps = orjson.dumps
    get = meta.get
    for key, cut, in_level in _plan(keys, cut_keys):
        if not cut:
            if in_level:
                value = get(key)
                if value is not None:
                    run[key] = value
            continue
        if run:
            piece = dumps(run)[1:-1]
            if pos:
                out.append(b",")
            out.append(piece)
            pos += 1 + len(piece)
            run = {}
        start = pos
        value = get(key) if in_level else None
        if value is not None:
            piece = dumps({key: value})[1:-1]
            if pos:
                out.append(b",")
            out.append(piece)
            pos += 1 + len(piece)
        bounds += (start, pos)
    if run:
        if pos:
            out.append(b",")
        out.append(dumps(run)[1:-1])
    out.append(b"}")
    data = b"".join(out)
    if len(data) > MAX_CUT_JSON:
        return data, None
    return data, cuts_struct(cut_keys).pack(CUTS_VERSION, len(data),
                                            xxhash.xxh3_64_intdigest(data), *bounds)
