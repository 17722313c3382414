"""L2: pure DICOM, no network/DB IO: parse, DICOM JSON, frame offsets, lossless transcode,
rendering (ARCHITECTURE "Layout"). May import pacsd.errors/model, pydicom, numpy, Pillow.

Public API (everything else in this package is internal):

* :func:`parse_instance` - ingest: validate a stored Part 10 file, return
  :class:`pacsd.model.ParsedInstance` (BI-1 .. BI-10, BI-28/29).
* :func:`is_valid_uid` - PS3.5 §9.1 UID syntax (BI-6); used for URL path UIDs too.
* :func:`decode_frame` - one frame as native little-endian bytes (PS3.18 octet-stream).
* :func:`transcode` / :data:`SUPPORTED_TRANSCODE_TARGETS` - lossless re-encoding (R-A5).
* :func:`render` / :func:`thumbnail` - consumer images (/rendered, /thumbnail, WADO-URI).
* ``*_LEVEL_TAGS`` / ``*_LEVEL_KEYWORDS`` - attributes stored per QIDO level.

:mod:`pacsd.dicom.testing` builds synthetic Part 10 instances for tests (not imported
here, never used at run time).
"""
from pacsd.dicom.levels import (INSTANCE_LEVEL_KEYWORDS, INSTANCE_LEVEL_TAGS,
                                SERIES_LEVEL_KEYWORDS, SERIES_LEVEL_TAGS,
                                STUDY_LEVEL_KEYWORDS, STUDY_LEVEL_TAGS)
from pacsd.dicom.parse import parse_instance
from pacsd.dicom.pixels import decode_frame
from pacsd.dicom.rendering import render, thumbnail
from pacsd.dicom.transcoding import SUPPORTED_TRANSCODE_TARGETS, transcode
from pacsd.dicom.uids import is_valid_uid

__all__ = [
    "parse_instance", "is_valid_uid", "decode_frame", "transcode", "render", "thumbnail",
    "SUPPORTED_TRANSCODE_TARGETS", "STUDY_LEVEL_TAGS", "SERIES_LEVEL_TAGS",
    "INSTANCE_LEVEL_TAGS", "STUDY_LEVEL_KEYWORDS", "SERIES_LEVEL_KEYWORDS",
    "INSTANCE_LEVEL_KEYWORDS",
]
