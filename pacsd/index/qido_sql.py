"""QIDO-RS query execution: :class:`QidoQuery` -> SQL (bound parameters only) -> DICOM JSON.

Security (BI-30): user values only ever reach the database as bind parameters. Wildcards
are translated by :func:`like_pattern`, which first escapes LIKE's own metacharacters
(``%``, ``_`` and the escape character ``\\``), so ``%' OR 1=1--`` is a literal string that
matches nothing.

Speed (R-H1): a wildcard with a literal prefix (``Smi*``) is also given a prefix range
(``col >= 'Smi' AND col < 'Smj'``) so both databases use the column's B-tree index even
though SQLite never optimises a LIKE that has an ESCAPE clause. Patient identity matches go
through an ``IN (SELECT pk FROM patients ..)`` subquery, ModalitiesInStudy and
SOPClassesInStudy through correlated ``EXISTS`` on indexed child columns; QIDO never
aggregates at query time (counters are maintained at ingest, LD-6).

Result assembly: each item is the stored level JSON, plus, from upper levels, the
attributes named by includefield (or all of them for ``includefield=all``) and the
matching keys used, plus computed attributes (ModalitiesInStudy, NumberOf*Related*,
SOPClassesInStudy when asked, InstanceAvailability ONLINE) and the parent UIDs.
RetrieveURL is left to the web layer. Keys are sorted tags.
"""
from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from pydicom.datadict import tag_for_keyword
from sqlalchemy.sql.util import find_tables

from pacsd.index import names
from pacsd.index.qido import (MATCHABLE, ORDER_KEYS, PRIVATE_KEYS, Match, QidoQuery,
                              QidoResult)
from pacsd.index.schema import instances, patients, series, studies
from pacsd.index.writes import split_list

ESCAPE = "\\"
TABLES = {"patients": patients, "studies": studies, "series": series, "instances": instances}

TAG_STUDY_UID = "0020000D"
TAG_SERIES_UID = "0020000E"
TAG_MODALITIES = "00080061"
TAG_SOP_CLASSES = "00080062"
TAG_AVAILABILITY = "00080056"
TAG_STUDY_SERIES = "00201206"
TAG_STUDY_INSTANCES = "00201208"
TAG_SERIES_INSTANCES = "00201209"
TAG_BODY_PARTS = "00180015"
#: The worklist visit columns in responses (R-D2): private attributes of the block
#: "PACSD WORKLIST" (0077,0010) -> (0077,10xx); documented in docs/conformance.md.
PRIVATE_GROUP_CREATOR = ("00770010", "PACSD WORKLIST")
PRIVATE_TAGS = {"visitnumber": ("00771001", "LO"), "cardnumber": ("00771002", "LO"),
                "department": ("00771003", "LO"), "visittype": ("00771004", "CS")}
#: Computed attributes per level (what the level's counters/lists provide).
COMPUTED = {
    "study": frozenset({TAG_MODALITIES, TAG_SOP_CLASSES, TAG_STUDY_SERIES,
                        TAG_STUDY_INSTANCES, TAG_AVAILABILITY}),
    "series": frozenset({TAG_SERIES_INSTANCES, TAG_AVAILABILITY}),
    "instance": frozenset({TAG_AVAILABILITY}),
}


# --- matching ----------------------------------------------------------------------------

def like_pattern(text: str) -> str:
    """DICOM wildcards -> LIKE pattern with every literal %, _ and \\ escaped (BI-30)."""
    out = []
    for ch in text:
        if ch in ("%", "_", ESCAPE):
            out.append(ESCAPE + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _successor(prefix: str) -> str | None:
    """Smallest string greater than every string starting with ``prefix`` (code point
    order = SQLite BINARY = PostgreSQL "C" collation order), None if there is none."""
    while prefix:
        code = ord(prefix[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000  # surrogates cannot be encoded
        if code <= 0x10FFFF:
            return prefix[:-1] + chr(code)
        prefix = prefix[:-1]
    return None


def wildcard(col: sa.ColumnElement, text: str) -> sa.ColumnElement:
    """Wildcard match of ``col`` against a DICOM pattern (``*``, ``?``); equality if none."""
    cut = min((i for i in (text.find("*"), text.find("?")) if i >= 0), default=-1)
    if cut < 0:
        return col == text
    cond = col.like(like_pattern(text), escape=ESCAPE)
    prefix = text[:cut]
    if prefix:
        upper = _successor(prefix)
        bounds = [col >= prefix] + ([col < upper] if upper is not None else [])
        cond = sa.and_(*bounds, cond)
    return cond


def _values_cond(col: sa.ColumnElement, m: Match) -> sa.ColumnElement:
    if m.op == "range":
        low, high = m.values
        if low is not None and low == high:
            return col == low
        parts = ([col >= low] if low is not None else []) + \
                ([col <= high] if high is not None else [])
        return sa.and_(*parts)
    if m.op == "eq":
        return col == m.values[0]
    if m.op == "like":
        return wildcard(col, m.values[0])
    # 'in': exact elements in one IN list, wildcard elements OR-ed.
    exact = [v for v in m.values if "*" not in v and "?" not in v]
    conds = [wildcard(col, v) for v in m.values if v not in exact]
    if exact:
        conds.insert(0, col.in_(exact))
    return sa.or_(*conds)


def pn_condition(table: sa.Table, base: str, raw: str, fuzzy: bool) -> sa.ColumnElement | None:
    """Person-name matching on the normalised columns (rule in ``names.py``)."""
    if fuzzy:
        words = names.query_words(raw)
        if not words:
            return None
        col = table.c[f"{base}_words"]
        return sa.and_(*[col.like("% " + like_pattern(w) + "%", escape=ESCAPE)
                         for w in words])
    cols = [table.c[f"{base}_{g}"] for g in ("alpha", "ideo", "phon")]
    if "=" in raw:
        conds = [wildcard(col, names.compact(g))
                 for col, g in zip(cols, names.split_groups(raw)) if names.compact(g)]
        return sa.and_(*conds) if conds else None
    text = names.compact(raw)
    if not text:
        return None
    return sa.or_(*[wildcard(col, text) for col in cols])


def _conditions(q: QidoQuery) -> list[sa.ColumnElement]:
    conds: list[sa.ColumnElement] = []
    patient_conds: list[sa.ColumnElement] = []
    for m in q.matches:
        attr = m.attr
        if attr.kind == "pn":
            cond = pn_condition(TABLES[attr.table], attr.column, m.values[0], q.fuzzy)
            if cond is not None:
                conds.append(cond)
        elif attr.column == "modalities":
            ms = series.alias("ms")  # aliased: the outer query may select from series
            conds.append(sa.exists().where(ms.c.study_fk == studies.c.pk,
                                           _values_cond(ms.c.modality, m)))
        elif attr.column == "body_parts":  # study level (qido.STUDY_VIA_SERIES)
            bs = series.alias("bs")
            conds.append(sa.exists().where(bs.c.study_fk == studies.c.pk,
                                           _values_cond(bs.c.body_part_examined, m)))
        elif attr.column == "sop_classes":
            si = instances.alias("si")
            conds.append(sa.exists().where(si.c.study_fk == studies.c.pk,
                                           _values_cond(si.c.sop_class_uid, m)))
        elif attr.table == "patients":
            patient_conds.append(_values_cond(patients.c[attr.column], m))
        else:
            conds.append(_values_cond(TABLES[attr.table].c[attr.column], m))
    if patient_conds:
        conds.append(studies.c.patient_fk.in_(
            sa.select(patients.c.pk).where(*patient_conds)))
    if q.study_uid is not None:
        conds.append(studies.c.study_instance_uid == q.study_uid)
    if q.series_uid is not None and q.level != "study":
        conds.append(series.c.series_instance_uid == q.series_uid)
    return conds


# --- statements --------------------------------------------------------------------------

_STUDY_COLS = (studies.c.study_instance_uid, studies.c.modalities_in_study,
               studies.c.sop_classes_in_study, studies.c.num_series,
               studies.c.num_instances.label("study_num_instances"),
               studies.c.body_parts_in_study,
               *[studies.c[a.column] for a in PRIVATE_KEYS.values()])
_SERIES_COLS = (series.c.series_instance_uid,
                series.c.num_instances.label("series_num_instances"))


def _tag(keyword: str) -> str:
    return f"{tag_for_keyword(keyword):08X}"


#: Tags the level's own JSON / computed attributes provide: no upper-level read needed.
_LEVEL_TAGS = {
    level: frozenset(_tag(kw) for kw, a in MATCHABLE.items() if a.level == level)
    | COMPUTED[level]
    for level in ("study", "series", "instance")
}


def needs_upper(q: QidoQuery) -> bool:
    """Whether upper-level JSON must be read (includefield=all or an attribute that the
    level's own JSON and computed attributes cannot hold)."""
    return q.level != "study" and (q.include_all or bool(q.includefields - _LEVEL_TAGS[q.level]))


def build(q: QidoQuery, extra_filter: sa.ColumnElement | None = None
          ) -> tuple[sa.Select, sa.Select]:
    """(page statement, count statement) for the query."""
    where = _conditions(q)
    if extra_filter is not None:
        where.append(extra_filter)  # access control AND-ed into every query (later issue)
    upper = needs_upper(q)
    if q.level == "study":
        cols = [studies.c.pk, studies.c.study_json, *_STUDY_COLS]
        source = studies
        order = [studies.c.study_date.desc().nulls_last(),
                 studies.c.study_time.desc().nulls_last(), studies.c.pk.desc()]
        if q.order:  # orderby (qido.ORDER_KEYS), then the default order breaks ties
            first = [(studies.c[c].desc() if desc else studies.c[c].asc()).nulls_last()
                     for key, desc in q.order for c in ORDER_KEYS[key]]
            order = first + order
    elif q.level == "series":
        cols = [series.c.pk, series.c.series_json, *_SERIES_COLS, *_STUDY_COLS]
        if upper:
            cols.append(studies.c.study_json)
        source = series.join(studies, series.c.study_fk == studies.c.pk)
        order = [series.c.series_number.asc().nulls_last(), series.c.pk]
    else:
        cols = [instances.c.pk, instances.c.instance_json, *_SERIES_COLS, *_STUDY_COLS]
        if upper:
            cols += [studies.c.study_json, series.c.series_json]
        source = instances.join(series, instances.c.series_fk == series.c.pk).join(
            studies, instances.c.study_fk == studies.c.pk)
        order = [instances.c.instance_number.asc().nulls_last(), instances.c.pk]
    page = (sa.select(*cols).select_from(source).where(*where).order_by(*order)
            .limit(q.limit).offset(q.offset))
    count = sa.select(sa.func.count()).select_from(_count_source(q.level, where)).where(*where)
    return page, count


def _count_source(level: str, where: list) -> sa.FromClause:
    """The FROM of the COUNT: only the upper tables a condition names (issue 6: the total
    of a series-by-Modality query joined every series to its study for nothing). Every
    series has its study and every instance its series and study, so leaving a join out
    never changes the count."""
    used: set = set()
    for clause in where:
        used.update(find_tables(clause, check_columns=True, include_aliases=True))
    if level == "study":
        return studies
    if level == "series":
        return series.join(studies, series.c.study_fk == studies.c.pk) \
            if studies in used else series
    source: sa.FromClause = instances
    if series in used:
        source = source.join(series, instances.c.series_fk == series.c.pk)
    if studies in used:
        source = source.join(studies, instances.c.study_fk == studies.c.pk)
    return source


# --- result assembly ---------------------------------------------------------------------

def _cs(values: list[str], vr: str = "CS") -> dict[str, Any]:
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _computed(level: str, row: sa.Row) -> dict[str, Any]:
    if level == "study":
        return {
            TAG_MODALITIES: _cs(split_list(row.modalities_in_study)),
            TAG_SOP_CLASSES: _cs(split_list(row.sop_classes_in_study), "UI"),
            TAG_STUDY_SERIES: {"vr": "IS", "Value": [row.num_series]},
            TAG_STUDY_INSTANCES: {"vr": "IS", "Value": [row.study_num_instances]},
        }
    if level == "series":
        return {TAG_SERIES_INSTANCES: {"vr": "IS", "Value": [row.series_num_instances]}}
    return {}


def _pick(target: dict, source: dict, q: QidoQuery) -> None:
    if q.include_all:
        target.update(source)
    else:
        for tag in q.includefields & source.keys():
            target[tag] = source[tag]


def _item(q: QidoQuery, row: sa.Row, upper: bool) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if q.level != "study":
        if upper:
            _pick(obj, orjson.loads(row.study_json), q)
        _pick(obj, _computed("study", row), q)
    if q.level == "instance":
        if upper:
            _pick(obj, orjson.loads(row.series_json), q)
        _pick(obj, _computed("series", row), q)
        obj.update(orjson.loads(row.instance_json))
    elif q.level == "series":
        obj.update(orjson.loads(row.series_json))
    else:
        obj.update(orjson.loads(row.study_json))
    own = _computed(q.level, row)
    if q.level == "study" and not (q.include_all or TAG_SOP_CLASSES in q.includefields):
        own.pop(TAG_SOP_CLASSES)  # only when asked (not a default return key)
    obj.update(own)
    if q.level == "study":
        if TAG_BODY_PARTS in q.includefields:
            obj[TAG_BODY_PARTS] = _cs(split_list(row.body_parts_in_study))
        names = q.private  # only when asked: includefield=all stays standard (C-FIND)
        if names:
            obj[PRIVATE_GROUP_CREATOR[0]] = {"vr": "LO", "Value": [PRIVATE_GROUP_CREATOR[1]]}
            for name in names:
                tag, vr = PRIVATE_TAGS[name]
                value = getattr(row, PRIVATE_KEYS[name].column)
                obj[tag] = {"vr": vr, "Value": [value]} if value else {"vr": vr}
    obj[TAG_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
    obj[TAG_STUDY_UID] = {"vr": "UI", "Value": [row.study_instance_uid]}
    if q.level != "study":
        obj[TAG_SERIES_UID] = {"vr": "UI", "Value": [row.series_instance_uid]}
    return dict(sorted(obj.items()))


def run(conn: sa.Connection, q: QidoQuery, extra_filter: sa.ColumnElement | None = None
        ) -> QidoResult:
    """Execute the query on ``conn`` (one read transaction)."""
    page, count = build(q, extra_filter)
    rows = conn.execute(page).all() if q.limit > 0 else []
    if rows and len(rows) < q.limit:
        # A page that is not full, and not empty, holds the last matches: the total is
        # known without a COUNT query (the common case for narrow queries; R-H1).
        total = q.offset + len(rows)
    else:
        total = conn.scalar(count) or 0
    upper = needs_upper(q)
    return QidoResult([_item(q, row, upper) for row in rows], total)
