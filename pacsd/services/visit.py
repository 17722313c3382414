"""The worklist's visit columns of a study (R-D2): visit number, card number, ordering
department and visit type, derived once when the study row is created at ingest.

Sources (``[worklist]`` settings, docs/settings.md):

* visit number: ``visit_number_attribute``, default Admission ID (0038,0010) — the HL7
  PV1-19 visit number of the Visit Identification module;
* card number: ``card_number_attribute``, default Other Patient IDs Sequence (0010,1002),
  its first item's Patient ID (a sequence keyword means the first item's ID);
* ordering department: ``department_attribute``, default Requesting Service (0032,1033)
  of the Imaging Service Request module;
* visit type: ``visit_type_attribute``, default Route of Admissions (0038,0016) (where
  HL7 PV1-2 Patient Class codes are put, as dcm4chee does), upper-cased and mapped through
  ``visit_type_map`` to outpatient / inpatient / emergency / physical-exam. Failing that,
  a study with a visit number is *inpatient* when ``visit_number_means_inpatient`` (the
  same rule as retention, services/retention.py: an Admission ID means an inpatient stay);
  otherwise unknown (NULL), which no ``visittype=`` query matches. A visit class recorded
  from HIS for retention (R-A7) wins over all of this (index/worklist.py).

The parser reads the usual source attributes while the dataset is at hand
(``ParsedInstance.visit``, ``pacsd.dicom.parse.VISIT_KEYWORDS``); another configured
keyword is read from the instance's stored DICOM JSON (one JSON decode per instance).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from pydicom.datadict import tag_for_keyword

from pacsd.config import Settings
from pacsd.dicom.parse import VISIT_KEYWORDS, first_text, visit_values
from pacsd.model import ParsedInstance

#: Longest value kept in a column (LO is 64 characters; longer is not a real value).
MAX_LEN = 64
COLUMNS = ("visit_number", "card_number", "ordering_department", "visit_type")


def visit_columns_getter(settings: Settings
                         ) -> Callable[[dict[str, Any], Callable[[], dict]], dict[str, Any]]:
    """``fn(raw, load_meta) -> {column: value}``: ``raw`` holds the parser's
    :data:`VISIT_KEYWORDS` values, ``load_meta()`` the full DICOM JSON dataset (only
    called for a keyword outside them)."""
    conf = settings.worklist
    mapping = {str(k).strip().upper(): v for k, v in conf.visit_type_map.items()}
    sources = {
        "visit_number": conf.visit_number_attribute,
        "card_number": conf.card_number_attribute,
        "ordering_department": conf.department_attribute,
        "visit_type": conf.visit_type_attribute,
    }
    tags = {kw: f"{tag_for_keyword(kw):08X}" for kw in sources.values() if kw}

    def columns(raw: dict[str, Any], load_meta: Callable[[], dict]) -> dict[str, Any]:
        meta: dict | None = None
        out: dict[str, Any] = {}
        for column, kw in sources.items():
            if not kw:
                value = None
            elif kw in VISIT_KEYWORDS:
                value = raw.get(kw)
            else:
                if meta is None:
                    meta = load_meta()
                value = first_text(meta, tags[kw])
            out[column] = value[:MAX_LEN] if value else None
        code = (out["visit_type"] or "").upper()
        vtype = mapping.get(code)
        if vtype is None and out["visit_number"] and conf.visit_number_means_inpatient:
            vtype = "inpatient"
        out["visit_type"] = vtype
        return out
    return columns


def visit_getter(settings: Settings) -> Callable[[ParsedInstance], dict[str, Any]]:
    """What the catalogue calls for each stored instance (cheap dict look-ups)."""
    columns = visit_columns_getter(settings)

    def visit_of(p: ParsedInstance) -> dict[str, Any]:
        return columns(p.visit, lambda: orjson.loads(p.metadata))
    return visit_of


def columns_from_metadata(settings: Settings) -> Callable[[bytes], dict[str, Any]]:
    """For ``pacsd worklist reindex``: stored instance DICOM JSON -> the study's columns."""
    columns = visit_columns_getter(settings)

    def of(metadata: bytes) -> dict[str, Any]:
        meta = orjson.loads(metadata)
        return columns(visit_values(meta), lambda: meta)
    return of
