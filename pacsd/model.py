"""L0: frozen dataclasses passed between layers.

``dicom/`` produces a :class:`ParsedInstance` from a file at ingest; ``index/`` stores it;
``services/`` hands :class:`InstanceRow` to the retrieve path. Everything a read needs
(DICOM JSON metadata, frame byte offsets, bulk data offsets, per-frame CRC32) is computed
once here at ingest and never recomputed per request (ARCHITECTURE: "precompute at ingest").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

#: Placeholder at the start of every BulkDataURI in stored metadata. The retrieve path
#: replaces ``b'"BulkDataURI":"' + BULK_BASE`` with the request's DICOMweb base URL, so the
#: stored bytes do not depend on the host name the client used.
BULK_BASE = "@@BASE@@"


@dataclass(frozen=True)
class FrameIndex:
    """Where each frame's bytes lie in the stored Part 10 file, as stored (R-A1 frames).

    ``fragments[i]`` lists the (absolute file offset, length) of the bytes that make up
    frame i+1: one range for native pixel data, one or more fragment *values* (item
    headers excluded) for encapsulated data. ``crc32[i]`` is zlib.crc32 over the
    concatenation of those ranges, checked on every frame read (hash is the arbiter).
    ``needs_decode`` is True when frames cannot be cut from the file by byte range
    (e.g. BitsAllocated 1 with frames not byte-aligned, or an encapsulated layout whose
    frame boundaries are ambiguous); the retrieve path then decodes the instance.
    """

    transfer_syntax_uid: str
    encapsulated: bool
    fragments: tuple[tuple[tuple[int, int], ...], ...]
    crc32: tuple[int, ...]
    needs_decode: bool = False

    @property
    def number_of_frames(self) -> int:
        return len(self.fragments)

    def to_json(self) -> bytes:
        return orjson.dumps({
            "ts": self.transfer_syntax_uid, "enc": self.encapsulated,
            "f": [[list(r) for r in fr] for fr in self.fragments],
            "crc": list(self.crc32), "dec": self.needs_decode,
        })

    @classmethod
    def from_json(cls, data: bytes | str) -> "FrameIndex":
        d = orjson.loads(data)
        return cls(
            transfer_syntax_uid=d["ts"], encapsulated=d["enc"],
            fragments=tuple(tuple((int(o), int(n)) for o, n in fr) for fr in d["f"]),
            crc32=tuple(d["crc"]), needs_decode=d.get("dec", False),
        )


#: The worklist's visit types (R-D2): [worklist] visit_type_map values, QIDO ``visittype``.
VISIT_TYPES = ("outpatient", "inpatient", "emergency", "physical-exam")


@dataclass(frozen=True)
class ParsedInstance:
    """Everything ingest learns from one Part 10 file, ready for the index.

    Attribute dicts hold index column values (str/int/None; dates as 'YYYYMMDD', times as
    stored, person names decoded to Unicode in DICOM PN form 'Alpha=Ideographic=Phonetic').
    ``*_json`` are DICOM JSON objects (bytes, orjson) of the attributes QIDO returns at
    that level (PS3.18 Tables 10.6.3-3/4/5 plus the module's other attributes), so a QIDO
    response is assembled from stored bytes. ``metadata`` is the instance's full DICOM
    JSON object with BulkDataURI values starting with :data:`BULK_BASE`; ``bulk`` maps the
    tag in a BulkDataURI (8 upper-case hex digits, e.g. '7FE00010') to (file offset,
    length) of that element's value in the stored file.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    specific_character_set: str
    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    study_json: bytes
    series_json: bytes
    instance_json: bytes
    metadata: bytes
    frames: FrameIndex | None
    bulk: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Hospital / campus code of the study (R-A12), filled in by the catalogue from
    #: ``[security] institution_attribute`` when the study row is created.
    institution: str = ""
    #: Raw values of ``pacsd.dicom.parse.VISIT_KEYWORDS`` found in the instance (R-D2).
    visit: dict[str, str | None] = field(default_factory=dict)
    #: The study's worklist columns (visit_number, card_number, ordering_department,
    #: visit_type), filled in by the catalogue from ``[worklist]`` (services/visit.py).
    worklist: dict[str, str | None] | None = None
    #: Where QIDO-RS adds its computed attributes in each level JSON
    #: (pacsd.dicom.levels.level_json; None: the level JSON is decoded instead, R-H1).
    study_cuts: bytes | None = None
    series_cuts: bytes | None = None
    instance_cuts: bytes | None = None


@dataclass(frozen=True)
class InstanceRow:
    """What the retrieve path needs to serve one stored instance."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    sha256: str
    size: int
    frames: FrameIndex | None
    bulk: dict[str, tuple[int, int]]
    instance_number: int | None = None
    #: Fast read-time digest recorded at ingest (store.base.fast_digest); None: the
    #: object is verified by its SHA-256 (rows from before migration 10).
    digest: str | None = None


@dataclass(frozen=True)
class StoreOutcome:
    """Result of committing one instance to the index."""

    created: bool  # False: identical instance was already stored (idempotent re-send, BI-25)
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
