"""Data-scoping constraints (R-A12, MLPS 7, 8) and their SQL, plus study labels.

A *scope* is a tuple of constraints, all of which a study must satisfy (AND). pacsd's own
institution and sensitivity-label rules and every plugin's ``query_filter`` hook produce
constraints of the kinds below; :func:`scope_clause` turns them into one SQLAlchemy clause
on ``studies`` that the catalogue AND-s into every read: QIDO-RS / C-FIND, the instance
lists of WADO-RS / WADO-URI / C-GET / C-MOVE, metadata, frames and DELETE. Values only
ever reach the database as bound parameters; each kind uses an indexed column
(``ix_studies_institution``, the study UID / accession / patient indexes, the primary key
of ``study_labels``). A study outside the scope is simply not found (no existence leak).

Constraint kinds (frozen dataclasses, importable by plugins via
``pacsd.services.scoping``):

* ``OneOf(field, values)`` / ``NoneOf(field, values)`` — the study's ``field`` is (not) one
  of ``values``. Fields: ``institution``, ``study_instance_uid``, ``accession_number``,
  ``patient_id``, ``issuer_of_patient_id``, ``label`` (the study carries one of the labels).
* ``LabelsWithin(clearances)`` — every label of the study is among ``clearances``.
* ``AnyOf(parts)`` — at least one of the constraints ``parts`` holds (OR).
* ``SamePatientAs(inner)`` — the study's patient (PatientID + IssuerOfPatientID) has some
  study satisfying ``inner`` (cross-institution history, R-A12).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from dataclasses import dataclass

import sqlalchemy as sa

from pacsd.errors import BadRequest
from pacsd.index.access_schema import study_labels
from pacsd.index.engine import translate_errors
from pacsd.index.schema import patients, studies

if TYPE_CHECKING:
    from pacsd.index.catalogue import Catalogue

STUDY_FIELDS = ("institution", "study_instance_uid", "accession_number")
PATIENT_FIELDS = ("patient_id", "issuer_of_patient_id")
FIELDS = frozenset(STUDY_FIELDS + PATIENT_FIELDS + ("label",))


def _values(values: Iterable[str]) -> tuple[str, ...]:
    out = tuple(sorted({str(v) for v in values}))
    return out


@dataclass(frozen=True, init=False)
class OneOf:
    field: str
    values: tuple[str, ...]

    def __init__(self, field: str, values: Iterable[str]) -> None:
        if field not in FIELDS:
            raise ValueError(f"unknown scope field {field!r}; one of {sorted(FIELDS)}")
        object.__setattr__(self, "field", field)
        object.__setattr__(self, "values", _values(values))


@dataclass(frozen=True, init=False)
class NoneOf(OneOf):
    pass


@dataclass(frozen=True, init=False)
class LabelsWithin:
    clearances: tuple[str, ...]

    def __init__(self, clearances: Iterable[str]) -> None:
        object.__setattr__(self, "clearances", _values(clearances))


@dataclass(frozen=True, init=False)
class AnyOf:
    parts: tuple

    def __init__(self, *parts) -> None:
        object.__setattr__(self, "parts", tuple(parts))


@dataclass(frozen=True)
class SamePatientAs:
    inner: object


Constraint = OneOf | NoneOf | LabelsWithin | AnyOf | SamePatientAs


def _clause(c, st: sa.Table) -> sa.ColumnElement:
    if isinstance(c, OneOf):  # and NoneOf
        negate = isinstance(c, NoneOf)
        if c.field == "label":
            cond = sa.exists().where(
                study_labels.c.study_instance_uid == st.c.study_instance_uid,
                study_labels.c.label.in_(c.values))
        elif c.field in PATIENT_FIELDS:
            cond = st.c.patient_fk.in_(sa.select(patients.c.pk).where(
                patients.c[c.field].in_(c.values)))
        else:
            cond = st.c[c.field].in_(c.values)
        return sa.not_(cond) if negate else cond
    if isinstance(c, LabelsWithin):
        other = study_labels.c.label.not_in(c.clearances) if c.clearances else sa.true()
        return ~sa.exists().where(
            study_labels.c.study_instance_uid == st.c.study_instance_uid, other)
    if isinstance(c, AnyOf):
        return sa.or_(sa.false(), *[_clause(p, st) for p in c.parts])
    if isinstance(c, SamePatientAs):
        inner = studies.alias("scope_same_patient")
        return st.c.patient_fk.in_(sa.select(inner.c.patient_fk).where(_clause(c.inner, inner)))
    raise TypeError(f"not a scope constraint: {type(c).__name__}")


def scope_clause(scope: Iterable | None, st: sa.Table = studies) -> sa.ColumnElement | None:
    """One clause on ``st`` (the ``studies`` table) for all constraints of ``scope``
    (AND); None for an unrestricted scope (``None`` or empty)."""
    if not scope:
        return None
    return sa.and_(*[_clause(c, st) for c in scope])


# --- labels ------------------------------------------------------------------------------

LABEL_MAX = 32


def check_label(label: str) -> str:
    if not isinstance(label, str) or not 1 <= len(label) <= LABEL_MAX or not all(
            c.isalnum() or c in "-_." for c in label):
        raise BadRequest(f"a label is 1-{LABEL_MAX} letters, digits or - _ .")
    return label


class StudyLabels:
    """Rows of ``study_labels`` (policy and audit are the service's business)."""

    def __init__(self, catalogue: "Catalogue") -> None:
        self.catalogue = catalogue

    def get(self, study_uid: str) -> list[str]:
        with translate_errors("reading labels"), self.catalogue.engine.connect() as conn:
            return list(conn.scalars(sa.select(study_labels.c.label).where(
                study_labels.c.study_instance_uid == study_uid)
                .order_by(study_labels.c.label)))

    def replace(self, study_uid: str, labels: Iterable[str], now: float, by: str
                ) -> tuple[list[str], list[str]]:
        """Set the study's labels to exactly ``labels``; returns (added, removed)."""
        wanted = {check_label(x) for x in labels}

        def tx(conn: sa.Connection) -> tuple[list[str], list[str]]:
            have = set(conn.scalars(sa.select(study_labels.c.label).where(
                study_labels.c.study_instance_uid == study_uid)))
            added, removed = sorted(wanted - have), sorted(have - wanted)
            if removed:
                conn.execute(sa.delete(study_labels).where(
                    study_labels.c.study_instance_uid == study_uid,
                    study_labels.c.label.in_(removed)))
            if added:
                conn.execute(sa.insert(study_labels), [
                    {"study_instance_uid": study_uid, "label": x, "set_at": now,
                     "set_by": by[:64]} for x in added])
            return added, removed
        return self.catalogue.run_write("setting labels", tx)
