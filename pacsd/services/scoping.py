"""Data scoping: which studies an actor may see, on every path (R-A12, MLPS 7, 8).

:meth:`Scoping.scope_for` turns an actor into a tuple of constraints (``index/access.py``)
that the catalogue AND-s into every read the services make for that actor: QIDO-RS and
C-FIND (``QueryService``), WADO-RS / WADO-URI / metadata / frames / rendered / C-GET /
C-MOVE (``RetrieveService``), DELETE and writes (STOW-RS, C-STORE: ``IngestService``,
action ``write``; checked in the index transaction against the study as it stands after
the write, so a new study is judged by the institution computed from its data). Adapters only pass the actor:
no adapter can forget the filter, and a study outside the scope looks exactly like a
missing one (404, empty result, no C-FIND match; SEC-1, SEC-9).

The constraints, all AND-ed:

1. **Institutions** (pacsd's own): an actor whose ``institutions`` is not None sees the
   studies whose ``studies.institution`` (captured at ingest, :func:`institution_getter`)
   is one of them. Actors holding a role listed in ``[security]
   cross_institution_roles`` also see the other studies of a patient who has a study at
   one of their institutions (same PatientID + IssuerOfPatientID: cross-hospital history).
2. **Sensitivity labels** (pacsd's own): an actor whose ``clearances`` is not None does
   not see a study carrying a label outside its clearances.
3. **Plugins**: every ``query_filter(actor, action)`` hook implementation's constraint(s).
"""
from __future__ import annotations

from typing import Any, Callable

import orjson

from ..config import Settings
from ..index.access import (FIELDS, AnyOf, LabelsWithin, NoneOf, OneOf, SamePatientAs,
                            check_label)
from ..model import ParsedInstance
from ..plugins import Plugins

__all__ = ["AnyOf", "FIELDS", "LabelsWithin", "NoneOf", "OneOf", "SamePatientAs",
           "Scoping", "check_institution", "check_label", "institution_getter"]

CONSTRAINT_TYPES = (OneOf, LabelsWithin, AnyOf, SamePatientAs)  # NoneOf is a OneOf
#: Institution codes: what ``studies.institution`` holds and users/tokens carry.
INSTITUTION_MAX = 64
ALL = "*"


def check_institution(code: str) -> str:
    """A code: 1-64 printable characters without a comma (``*`` = every institution)."""
    if not isinstance(code, str) or not 1 <= len(code) <= INSTITUTION_MAX or "," in code \
            or not code.isprintable():
        raise ValueError("an institution code is 1-64 printable characters, no comma")
    return code


def institution_getter(settings: Settings) -> Callable[[ParsedInstance], str]:
    """The function the catalogue calls when it creates a study row: the value of
    ``[security] institution_attribute`` (a DICOM keyword; InstitutionName by default),
    mapped through ``institution_map``; ``institution_default`` when absent."""
    conf = settings.security
    keyword = conf.institution_attribute
    mapping = dict(conf.institution_map)
    default = conf.institution_default
    tag = None
    if keyword:
        from pydicom.datadict import tag_for_keyword
        t = tag_for_keyword(keyword)
        tag = f"{t:08X}" if t is not None else None

    def institution_of(p: ParsedInstance) -> str:
        value: Any = None
        for level in (p.series, p.study, p.patient, p.instance):
            if keyword in level:
                value = level[keyword]
                break
        else:
            if tag is not None:  # any other attribute: from the instance's DICOM JSON
                element = orjson.loads(p.metadata).get(tag) or {}
                values = element.get("Value") or []
                value = values[0] if values else None
                if isinstance(value, dict):  # PN
                    value = value.get("Alphabetic")
        text = str(value).strip() if value not in (None, "") else ""
        code = mapping.get(text, text) if text else default
        return code[:INSTITUTION_MAX].replace(",", " ")
    return institution_of


class Scoping:
    """Scope decisions of one archive (settings + plugins)."""

    def __init__(self, settings: Settings, plugins: Plugins) -> None:
        self.settings = settings
        self.plugins = plugins

    def scope_for(self, actor: Any, action: str = "read") -> tuple:
        """The constraints for ``actor`` doing ``action`` (module docstring); empty =
        unrestricted (the local operator of an archive without security)."""
        cons: list = []
        institutions = getattr(actor, "institutions", None)
        if institutions is not None:
            own = OneOf("institution", institutions)
            cross = set(self.settings.security.cross_institution_roles)
            # Cross-hospital history is for reading priors; a write (STOW-RS, C-STORE)
            # always needs the study's own institution (R-A12).
            if action != "write" and cross & set(getattr(actor, "roles", ())):
                own = AnyOf(own, SamePatientAs(own))
            cons.append(own)
        clearances = getattr(actor, "clearances", None)
        if clearances is not None:
            cons.append(LabelsWithin(clearances))
        for result in self.plugins.collect("query_filter", actor=actor, action=action):
            if result is None:
                continue
            for c in (result if isinstance(result, (list, tuple)) else [result]):
                if not isinstance(c, CONSTRAINT_TYPES):
                    raise TypeError("query_filter must return constraints from "
                                    f"pacsd.services.scoping, not {type(c).__name__}")
                cons.append(c)
        return tuple(cons)
