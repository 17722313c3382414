"""QIDO-RS query execution: :class:`QidoQuery` -> SQL (bound parameters only) -> DICOM JSON.

Security (BI-30): user values only ever reach the database as bind parameters. Wildcards
are translated by :func:`like_pattern`, which first escapes LIKE's own metacharacters
(``%``, ``_`` and the escape character ``\\``), so ``%' OR 1=1--`` is a literal string that
matches nothing.

Speed (R-H1): statements are built once per query shape (see "matching" below); a
wildcard with a literal prefix (``Smi*``) is also given a prefix range
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

import functools
import math
import operator
from typing import Any, NamedTuple

import orjson
import sqlalchemy as sa
import xxhash
from pydicom.datadict import tag_for_keyword
from sqlalchemy.sql.util import find_tables

from pacsd.dicom.levels import (CUTS_VERSION, INSTANCE_CUT_KEYS, SERIES_CUT_KEYS,
                                STUDY_CUT_KEYS, cuts_struct)
from pacsd.index import names
from pacsd.index.qido import (MATCHABLE, ORDER_KEYS, PRIVATE_KEYS, Match, QidoQuery,
                              QidoResult)
from pacsd.index.schema import instances, patients, qido_generation, series, studies
from pacsd.index.writes import split_list

ESCAPE = "\\"
#: Query shapes whose statements are kept (a shape: level, keys, wildcard forms).
STATEMENT_CACHE = 512
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
#
# A query is taken apart in two steps (R-H1: building and caching a SQLAlchemy statement
# per request cost more GIL time than the SQL itself). :func:`shape` reads the query and
# returns a *key* that holds its whole structure (which conditions, which wildcard forms)
# and the *values*, in the order the builder binds them; :func:`_statements` builds the
# (page, count) statements from the key alone, with named bind parameters p0, p1, ..., and
# is cached per key. The builder never looks at a value, so two queries with one key get
# one statement, and every value reaches the database as a bind parameter (BI-30).

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


def _wild_key(text: str, values: list) -> tuple:
    """Key of a wildcard match against a DICOM pattern (``*``, ``?``; equality if none).
    A literal prefix (``Smi*``) adds a prefix range (``col >= 'Smi' AND col < 'Smj'``) so
    both databases use the column's B-tree index (SQLite never optimises a LIKE with an
    ESCAPE clause)."""
    cut = min((i for i in (text.find("*"), text.find("?")) if i >= 0), default=-1)
    if cut < 0:
        values.append(text)
        return ("eq",)
    prefix = text[:cut]
    upper = _successor(prefix) if prefix else None
    if prefix:
        values.append(prefix)
    if upper is not None:
        values.append(upper)
        if cut == len(text) - 1 and text[-1] == "*":
            # ``prefix*`` alone: the range holds exactly the strings that start with the
            # prefix (code point order), so no LIKE (it cost 3x the range per row when
            # counting 15,000 ``Smi*`` matches at 1M instances).
            return ("prefix",)
    values.append(like_pattern(text))
    return ("like", bool(prefix), upper is not None)


def _values_key(m: Match, values: list) -> tuple:
    if m.op == "range":
        low, high = m.values
        if low is not None and low == high:
            values.append(low)
            return ("eq",)
        values.extend(v for v in (low, high) if v is not None)
        return ("range", low is not None, high is not None)
    if m.op == "eq":
        values.append(m.values[0])
        return ("eq",)
    if m.op == "like":
        return _wild_key(m.values[0], values)
    # 'in': exact elements in one IN list (one expanding parameter), wildcards OR-ed.
    exact = [v for v in m.values if "*" not in v and "?" not in v]
    if exact:
        values.append(exact)
    return ("in", bool(exact),
            tuple(_wild_key(v, values) for v in m.values if v not in exact))


def _pn_key(raw: str, fuzzy: bool, values: list) -> tuple | None:
    """Person-name matching on the normalised columns (rule in ``names.py``)."""
    if fuzzy:
        words = names.query_words(raw)
        for w in words:
            values.append("% " + like_pattern(w) + "%")
        return ("fuzzy", len(words)) if words else None
    if "=" in raw:
        groups = []
        for i, g in enumerate(names.split_groups(raw)):
            text = names.compact(g)
            if text:
                groups.append((i, _wild_key(text, values)))
        return ("groups", tuple(groups)) if groups else None
    text = names.compact(raw)
    if not text:
        return None
    return ("any", tuple(_wild_key(text, values) for _ in range(3)))


class Shape(NamedTuple):
    """The structure of a query (:func:`shape`): everything its statements depend on."""

    level: str
    conds: tuple
    study: bool  # the study UID is fixed (a URL below /studies/{uid})
    series_uid: bool  # the series UID is fixed
    order: tuple  # orderby keys
    upper: bool  # upper-level JSON is read (:func:`needs_upper`)
    walk: bool  # the page walks the default study order (:func:`_walk_order`)
    lean: bool  # no study counters / lists below the study level (:func:`_lean`)
    deep: bool  # offset > 0: the page's pks first, then their rows (:func:`_build`)
    stamp: bool  # the page's stamp columns only (:func:`stamp_of`), not its items


def shape(q: QidoQuery) -> tuple[Shape, dict[str, Any]]:
    """(key, parameters) of the query: the key fixes the statements, the parameters are
    every value, named as the builder binds them (``p0``..., ``lim``, ``off``)."""
    values: list = []
    conds = []
    for m in q.matches:
        attr = m.attr
        if attr.kind == "pn":
            k = _pn_key(m.values[0], q.fuzzy, values)
            if k is not None:
                conds.append(("pn", attr.table, attr.column, k))
        else:
            conds.append((attr.table, attr.column, _values_key(m, values)))
    study = q.study_uid is not None
    if study:
        values.append(q.study_uid)
    series_uid = q.series_uid is not None and q.level != "study"
    if series_uid:
        values.append(q.series_uid)
    key = Shape(q.level, tuple(conds), study, series_uid, q.order, needs_upper(q), False,
                _lean(q), q.offset > 0, False)
    params = {f"p{i}": v for i, v in enumerate(values)}
    params["lim"] = q.limit
    params["off"] = q.offset
    return key, params


class _Binds:
    """The next bind parameter, p0, p1, ... in the order :func:`shape` added values."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, *, expanding: bool = False) -> sa.BindParameter:
        name = f"p{self.n}"
        self.n += 1
        return sa.bindparam(name, expanding=expanding)


def _wild_sql(col: sa.ColumnElement, key: tuple, p: _Binds) -> sa.ColumnElement:
    if key[0] == "eq":
        return col == p()
    if key[0] == "prefix":
        return sa.and_(col >= p(), col < p())
    _, lower, upper = key
    bounds = ([col >= p()] if lower else []) + ([col < p()] if upper else [])
    cond = col.like(p(), escape=ESCAPE)
    return sa.and_(*bounds, cond) if bounds else cond


def _values_sql(col: sa.ColumnElement, key: tuple, p: _Binds) -> sa.ColumnElement:
    op = key[0]
    if op == "eq":
        return col == p()
    if op == "range":
        _, low, high = key
        return sa.and_(*([col >= p()] if low else []), *([col <= p()] if high else []))
    if op in ("like", "prefix"):
        return _wild_sql(col, key, p)
    _, exact, wild = key
    conds = [col.in_(p(expanding=True))] if exact else []
    conds += [_wild_sql(col, k, p) for k in wild]
    return sa.or_(*conds)


def _pn_sql(table: sa.Table, base: str, key: tuple, p: _Binds, walk: bool
            ) -> sa.ColumnElement:
    kind, arg = key
    if kind == "fuzzy":
        col = table.c[f"{base}_words"]
        return sa.and_(*[col.like(p(), escape=ESCAPE) for _ in range(arg)])
    cols = [table.c[f"{base}_{g}"] for g in ("alpha", "ideo", "phon")]
    if walk:  # ``col || ''``: same values (NULL stays NULL), but no index can serve it
        cols = [col.op("||")(sa.literal_column("''")) for col in cols]
    if kind == "groups":
        return sa.and_(*[_wild_sql(cols[i], k, p) for i, k in arg])
    return sa.or_(*[_wild_sql(col, k, p) for col, k in zip(cols, arg)])


def _conditions(key: Shape, p: _Binds
                ) -> tuple[list[sa.ColumnElement], tuple[int, list] | None]:
    """(WHERE clauses, (position, OR branches) of the first any-group name match)."""
    level, conds_key, study, series_uid = key[:4]
    walk = key.walk
    conds: list[sa.ColumnElement] = []
    patient_conds: list[sa.ColumnElement] = []
    split = None
    for c in conds_key:
        if c[0] == "pn":
            _, table, column, k = c
            cond = _pn_sql(TABLES[table], column, k, p, walk)
            if k[0] == "any" and split is None:
                split = (len(conds), list(cond.clauses))
            conds.append(cond)
            continue
        table, column, k = c
        if column == "modalities":
            ms = series.alias("ms")  # aliased: the outer query may select from series
            conds.append(sa.exists().where(ms.c.study_fk == studies.c.pk,
                                           _values_sql(ms.c.modality, k, p)))
        elif column == "body_parts":  # study level (qido.STUDY_VIA_SERIES)
            bs = series.alias("bs")
            conds.append(sa.exists().where(bs.c.study_fk == studies.c.pk,
                                           _values_sql(bs.c.body_part_examined, k, p)))
        elif column == "sop_classes":
            si = instances.alias("si")
            conds.append(sa.exists().where(si.c.study_fk == studies.c.pk,
                                           _values_sql(si.c.sop_class_uid, k, p)))
        elif table == "patients":
            patient_conds.append(_values_sql(patients.c[column], k, p))
        else:
            conds.append(_values_sql(TABLES[table].c[column], k, p))
    if patient_conds:
        conds.append(studies.c.patient_fk.in_(
            sa.select(patients.c.pk).where(*patient_conds)))
    if study:
        conds.append(studies.c.study_instance_uid == p())
    if series_uid:
        conds.append(series.c.series_instance_uid == p())
    return conds, split


# --- statements --------------------------------------------------------------------------

_STUDY_COLS = (studies.c.study_instance_uid, studies.c.modalities_in_study,
               studies.c.sop_classes_in_study, studies.c.num_series,
               studies.c.num_instances.label("study_num_instances"),
               studies.c.body_parts_in_study,
               *[studies.c[a.column] for a in PRIVATE_KEYS.values()])
_SERIES_COLS = (series.c.series_instance_uid,
                series.c.num_instances.label("series_num_instances"))
#: What a kept answer of a study / series page is checked against (:func:`stamp_of`): per
#: row its pk, revision (bumped by every ingest, delete and correction at or below it:
#: writes.py, versions.py) and last change (read as stored: with the pk it tells a row
#: deleted and stored again from the one before), and at the study level the HIS visit
#: columns, which ``lifecycle.set_visit`` changes without a revision.
_STAMP_COLS = {
    level: (table.c.pk, table.c.revision,
            sa.type_coerce(table.c.updated_at, sa.String).label("stamp_at"),
            *([table.c[a.column] for a in PRIVATE_KEYS.values()] if level == "study" else []))
    for level, table in (("study", studies), ("series", series))}


def _tag(keyword: str) -> str:
    return f"{tag_for_keyword(keyword):08X}"


#: Tags the level's own JSON / computed attributes provide: no upper-level read needed.
_LEVEL_TAGS = {
    level: frozenset(_tag(kw) for kw, a in MATCHABLE.items() if a.level == level)
    | COMPUTED[level]
    for level in ("study", "series", "instance")
}


def _lean(q: QidoQuery) -> bool:
    """Whether a series / instance page can leave out the study's counters, lists and
    visit columns (R-H1: 300 instance rows carried 10 study columns each for nothing):
    only an includefield of a computed study attribute (or ``all``) reads them."""
    return q.level != "study" and not q.include_all and q.includefields.isdisjoint(
        COMPUTED["study"])


def needs_upper(q: QidoQuery) -> bool:
    """Whether upper-level JSON must be read (includefield=all or an attribute that the
    level's own JSON and computed attributes cannot hold)."""
    return q.level != "study" and (q.include_all or bool(q.includefields - _LEVEL_TAGS[q.level]))


def build(q: QidoQuery, extra_filter: sa.ColumnElement | None = None, *,
          walk: bool = False) -> tuple[sa.Select, sa.Select]:
    """(page statement, count statement) for the query, its values bound (for EXPLAIN
    and tests; :func:`run` executes the cached statements with the parameters).
    ``walk``: the page that walks the default study order (:func:`_walk_order`)."""
    key, params = shape(q)
    if walk:
        key = key._replace(walk=True)
    page, count = _build(key, extra_filter) if extra_filter is not None \
        else _statements(key)
    return page.params(params), count.params({**{k: v for k, v in params.items()
                                                 if k not in ("lim", "off")},
                                              "cap": _count_cap(q)})


def _order_column(name: str) -> sa.ColumnElement:
    """A study-level ``orderby`` column: the study's own, or its patient row's."""
    table, _, column = name.rpartition(".")
    if table == "patients":
        return (sa.select(patients.c[column]).where(patients.c.pk == studies.c.patient_fk)
                .scalar_subquery())
    return studies.c[column]


@functools.lru_cache(maxsize=STATEMENT_CACHE)
def _statements(key: Shape) -> tuple[sa.Select, sa.Select]:
    """The statements of a query shape, built once: SQLAlchemy memoises a statement
    object's cache key, so executing the same object again skips building, cache-key
    generation and compilation."""
    return _build(key, None)


def _build(key: Shape, extra_filter: sa.ColumnElement | None
           ) -> tuple[sa.Select, sa.Select]:
    level, order_key, upper = key.level, key.order, key.upper
    study_cols = (studies.c.study_instance_uid,) if key.lean else _STUDY_COLS
    where, split = _conditions(key, _Binds())
    if extra_filter is not None:
        where.append(extra_filter)  # the actor's data scope (R-A12), AND-ed in
    if level == "study":
        own = studies
        cols = [studies.c.pk, studies.c.study_json, studies.c.study_cuts, *_STUDY_COLS,
                *_STAMP_COLS["study"][1:3]]
        source = studies
        order = [studies.c.study_date.desc().nulls_last(),
                 studies.c.study_time.desc().nulls_last(), studies.c.pk.desc()]
        if order_key:  # orderby (qido.ORDER_KEYS), then the default order breaks ties
            first = [(_order_column(c).desc() if desc else _order_column(c).asc())
                     .nulls_last() for name, desc in order_key for c in ORDER_KEYS[name]]
            order = first + order
    elif level == "series":
        own = series
        cols = [series.c.pk, series.c.series_json, series.c.series_cuts, *_SERIES_COLS,
                *study_cols, *_STAMP_COLS["series"][1:]]
        if upper:
            cols.append(studies.c.study_json)
        source = series.join(studies, series.c.study_fk == studies.c.pk)
        order = [series.c.series_number.asc().nulls_last(), series.c.pk]
    else:
        own = instances
        cols = [instances.c.pk, instances.c.instance_json, instances.c.instance_cuts,
                instances.c.sop_instance_uid, *_SERIES_COLS, *study_cols]
        if upper:
            cols += [studies.c.study_json, series.c.series_json]
        source = instances.join(series, instances.c.series_fk == series.c.pk).join(
            studies, instances.c.study_fk == studies.c.pk)
        order = [instances.c.instance_number.asc().nulls_last(), instances.c.pk]
    if key.stamp:
        cols = list(_STAMP_COLS[level])
    lim = sa.bindparam("lim", type_=sa.Integer)
    off = sa.bindparam("off", type_=sa.Integer)
    if (key.walk and level == "study") or key.deep:
        # The page's pks first, read from the smallest source the conditions allow
        # (:func:`_count_source`), then the rows of those pks only. The walk of the study
        # order (:func:`_walk_order`) reads only ix_studies_order_* (it carries the
        # PatientName search columns, migration 13; index-only on PostgreSQL): reading
        # the study row of every walked entry cost ~1,300 table reads for 25 ``Chen*``
        # matches at 1M instances. A deep page (``offset`` > 0) steps over the skipped
        # matches in an index instead of reading and joining each one's row: page 32 of
        # ``Modality=MR`` (25 series from offset 775) 4.7 -> 0.18 ms at 50k instances.
        picked = (sa.select(own.c.pk).select_from(_count_source(level, where)).where(*where)
                  .order_by(*order).limit(lim).offset(off).subquery("picked"))
        page = (sa.select(*cols).select_from(source.join(picked, own.c.pk == picked.c.pk))
                .order_by(*order))
    else:
        page = (sa.select(*cols).select_from(source).where(*where).order_by(*order)
                .limit(lim).offset(off))
    source = _count_source(level, where)
    if split is None:
        return page, _bounded_count(source, where)
    # A name matched in any of its three groups: the matches counted per group, each
    # study under the first group it matches in (``IS NOT TRUE`` is NULL-safe). Each
    # count then reads one name index (covering on SQLite, index-only on PostgreSQL)
    # instead of merging three into a row set or bitmap and visiting the table: the
    # COUNT was most of a ``Smi*`` answer at 1M instances (15,000 matches).
    i, branches = split
    rest = where[:i] + where[i + 1:]
    parts = [_bounded_count(source, [*rest, branch,
                                     *[b.is_not(sa.true()) for b in branches[:n]]]
                            ).scalar_subquery()
             for n, branch in enumerate(branches)]
    count = sa.select(sum(parts[1:], parts[0]))
    return page, count


def _bounded_count(source: sa.FromClause, where: list) -> sa.Select:
    """``SELECT count(*) FROM (SELECT 1 FROM source WHERE .. LIMIT :cap)``: the matches,
    counted up to ``cap`` (:func:`run`: the page plus COUNT_AHEAD more), so a page of a
    match set that grows with the archive stays O(page) (issue 6 item 3)."""
    return sa.select(sa.func.count()).select_from(
        sa.select(sa.literal_column("1")).select_from(source).where(*where)
        .limit(sa.bindparam("cap", type_=sa.BigInteger)).subquery())


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
        if q.include_all or not q.includefields.isdisjoint(COMPUTED["study"]):
            _pick(obj, _computed("study", row), q)  # built only when one is asked for
    if q.level == "instance":
        if upper:
            _pick(obj, orjson.loads(row.series_json), q)
        if q.include_all or not q.includefields.isdisjoint(COMPUTED["series"]):
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


#: Studies at most (offset + limit) * studies / matches rows into the default order,
#: against all matches for the name indexes: see :func:`_walk_order`.
_MAX_STUDY_PK = sa.select(sa.func.max(studies.c.pk))


def _walks(key: Shape) -> bool:
    """Whether a page could walk the default study order instead: a study-level query in
    the default order whose conditions include a person-name match on the name indexes
    (a wildcard such as ``Smi*`` matches a share of all studies that grows with the
    archive; issue 6: 18 ms at 1M instances, 3.2-3.6x its 10k value)."""
    return key.level == "study" and not key.order and any(
        c[0] == "pn" and c[3][0] != "fuzzy" for c in key.conds)


def _walk_order(conn: sa.Connection, q: QidoQuery, total: int,
                studies_n: int | None = None) -> bool:
    """Choose the plan of a name match from its number of matches (the COUNT the answer
    needs anyway). Through the name indexes the database reads and sorts every match;
    walking the (study_date, study_time, pk) index newest first it reads about
    (offset + limit) * studies / matches rows until the page is full. Walk when that is
    well under the matches: a common prefix in a big archive (``Smi*``: 15,000 matches of
    200,000 studies -> ~330 rows instead of 15,000 and a sort); a rare name keeps the
    indexes. max(pk) over-counts after deletes, which only favours the indexes
    (``studies_n``: max(pk) when the caller read it already)."""
    if studies_n is None:
        studies_n = conn.execute(_MAX_STUDY_PK).scalar() or 0
    return (q.offset + q.limit) * studies_n * 2 < total * total


#: How many matches past the page a QIDO answer counts (issue 6 item 3): the total is
#: exact up to offset + limit + COUNT_AHEAD matches; past that the answer says "more than
#: COUNT_AHEAD additional results" and X-Total-Count is that lower bound (docs/conformance.md).
COUNT_AHEAD = 1000
#: ``limit=0`` asks for the number of matches alone: counted exactly.
_NO_CAP = 2 ** 62


def _count_cap(q: QidoQuery) -> int:
    return q.offset + q.limit + COUNT_AHEAD + 1 if q.limit > 0 else _NO_CAP


def _name_cap(conn: sa.Connection, q: QidoQuery) -> tuple[int, int]:
    """(count bound, max study pk) of a name match that may walk (:func:`_walk_order`):
    large enough that a total at the bound always decides for the walk, so the choice is
    the one the exact count would make; O(sqrt(page x studies)) rows, not O(matches)."""
    studies_n = conn.execute(_MAX_STUDY_PK).scalar() or 0
    return (max(_count_cap(q), math.isqrt(2 * (q.offset + q.limit) * studies_n) + 2),
            studies_n)


def run(conn: sa.Connection, q: QidoQuery, extra_filter: sa.ColumnElement | None = None,
        *, raw: bool = False) -> QidoResult:
    """Execute the query on ``conn`` (one read transaction). Unscoped queries run the
    statements cached per query shape; a scope clause (``extra_filter``) carries its own
    values, so a scoped query builds its statements. ``raw``: items spliced from the
    stored bytes where possible (:func:`raw_items`). The total is counted up to a bound
    (``exact`` False past it: :data:`COUNT_AHEAD`)."""
    return assemble(q, fetch(conn, q, extra_filter), raw=raw)


class Fetched(NamedTuple):
    """The rows of a page and the (bounded) total, before the items are built."""

    rows: list
    total: int
    exact: bool
    upper: bool


def fetch(conn: sa.Connection, q: QidoQuery,
          extra_filter: sa.ColumnElement | None = None, *, stamp: bool = False) -> Fetched:
    """The SQL part of :func:`run`: the page's rows and the total. ``stamp``: the rows
    carry the stamp columns only (:func:`stamp_of`)."""
    key, params = shape(q)
    if stamp:
        key = key._replace(stamp=True)
    statements = _statements if extra_filter is None else \
        (lambda k: _build(k, extra_filter))
    page, count = statements(key)
    total = None
    cap = _count_cap(q)
    if q.limit > 0 and _walks(key):
        cap, studies_n = _name_cap(conn, q)
        total = conn.execute(count, {**params, "cap": cap}).scalar() or 0
        if total and _walk_order(conn, q, total, studies_n=studies_n):
            page, _ = statements(key._replace(walk=True))
    rows = conn.execute(page, params).all() if q.limit > 0 and total != 0 else []
    if total is not None:
        pass
    elif rows and len(rows) < q.limit:
        # A page that is not full, and not empty, holds the last matches: the total is
        # known without a COUNT query (the common case for narrow queries; R-H1).
        total = q.offset + len(rows)
    else:
        total = conn.execute(count, {**params, "cap": cap}).scalar() or 0
    exact = total < cap
    if not exact:  # the name counts (summed per group) may pass the bound: report it
        total = cap
    return Fetched(rows, total, exact, key.upper)


def stampable(q: QidoQuery) -> bool:
    """Whether the answer of ``q`` is made of its page's own rows alone, so that the
    page's stamp (:func:`stamp_of`) tells whether a kept answer is still the answer: a
    study page, or a series page that reads nothing of the study row but its UID."""
    return q.limit > 0 and (q.level == "study" or (
        q.level == "series" and _lean(q) and not needs_upper(q)))


#: The generation of the studies and series rows (SQLite: schema.qido_generation).
GENERATION = sa.select(qido_generation.c.value).where(qido_generation.c.pk == 1)

_STAMP_OF = {level: operator.attrgetter(*(c.name for c in cols))
             for level, cols in _STAMP_COLS.items()}


def stamp_of(q: QidoQuery, f: Fetched) -> tuple:
    """What an answer of a :func:`stampable` query is built from, besides stored JSON
    that changes only with its row's revision: per row the :data:`_STAMP_COLS`, and the
    (bounded) total. Equal stamps in two read transactions: equal answers (R-H1)."""
    return tuple(map(_STAMP_OF[q.level], f.rows)), f.total, f.exact


def assemble(q: QidoQuery, f: Fetched, *, raw: bool = False) -> QidoResult:
    """The items of fetched rows (no database access: may run on any thread)."""
    if raw and not f.upper:
        return QidoResult(raw_items(q, f.rows), f.total, f.exact)
    return QidoResult([_item(q, row, f.upper) for row in f.rows], f.total, f.exact)


# --- items spliced from stored bytes (R-H1, issue 6) ---------------------------------------
#
# The general path above decodes the stored level JSON, merges, sorts and encodes it again
# for every row (45 % of the GIL time at c=16, 300 decodes for the instances of a CT
# series). Ingest records where each attribute the query layer may add goes in that JSON
# (pacsd.dicom.levels.level_json), so an item is: the stored runs of elements between
# those cut points, with the computed attributes (encoded on their own, exactly as the
# general path would) in their tag positions. Same attributes, same order, same bytes as
# the general path; a row whose cut record is missing or does not match its JSON (length
# and XXH3-64) is built the general way. Queries that read upper-level JSON (includefield
# of a study attribute at the series level, includefield=all below the study level) use
# the general path.

_CUT_KEYS = {"study": STUDY_CUT_KEYS, "series": SERIES_CUT_KEYS, "instance": INSTANCE_CUT_KEYS}
_CUT_INDEX = {level: {k: i for i, k in enumerate(keys)} for level, keys in _CUT_KEYS.items()}
_CUT_STRUCT = {level: cuts_struct(keys) for level, keys in _CUT_KEYS.items()}
_LEVEL_JSON = {"study": "study_json", "series": "series_json", "instance": "instance_json"}
_LEVEL_CUTS = {"study": "study_cuts", "series": "series_cuts", "instance": "instance_cuts"}


def _frag(tag: str, value: dict) -> bytes:
    """``,"tag":value`` as the general path's encoder writes it."""
    return b',"' + tag.encode() + b'":' + orjson.dumps(value)


_AVAILABILITY = _frag(TAG_AVAILABILITY, {"vr": "CS", "Value": ["ONLINE"]})


def _maker(tag: str, fields: dict[str, int]):
    """The fragment of ``tag`` for a row (row values by position, ``fields``: column
    name -> position): what :func:`_item` builds for that attribute."""
    def cs(col: str, vr: str = "CS"):
        i = fields[col]
        return lambda r: _frag(tag, _cs(split_list(r[i]), vr))

    def count(col: str):
        i = fields[col]
        return lambda r: _frag(tag, {"vr": "IS", "Value": [r[i]]})

    def uid(col: str):
        i = fields[col]
        # The parents repeat row after row: the last one's fragment is kept (one tuple,
        # replaced whole, so threads sharing the cached plan never see half an update).
        last = [("", b"")]

        def make(r: sa.Row) -> bytes:
            value = r[i]
            seen = last[0]
            if seen[0] == value and value:
                return seen[1]
            out = _frag(tag, {"vr": "UI", "Value": [value]})
            last[0] = (value, out)
            return out
        return make

    if tag == TAG_AVAILABILITY:
        return lambda r: _AVAILABILITY
    if tag == PRIVATE_GROUP_CREATOR[0]:
        creator = _frag(tag, {"vr": "LO", "Value": [PRIVATE_GROUP_CREATOR[1]]})
        return lambda r: creator
    for name, (private_tag, vr) in PRIVATE_TAGS.items():
        if tag == private_tag:
            return _private(tag, vr, fields[PRIVATE_KEYS[name].column])
    return {TAG_MODALITIES: lambda: cs("modalities_in_study"),
            TAG_SOP_CLASSES: lambda: cs("sop_classes_in_study", "UI"),
            TAG_STUDY_SERIES: lambda: count("num_series"),
            TAG_STUDY_INSTANCES: lambda: count("study_num_instances"),
            TAG_BODY_PARTS: lambda: cs("body_parts_in_study"),
            TAG_STUDY_UID: lambda: uid("study_instance_uid"),
            TAG_SERIES_INSTANCES: lambda: count("series_num_instances"),
            TAG_SERIES_UID: lambda: uid("series_instance_uid")}[tag]()


def _private(tag: str, vr: str, i: int):
    return lambda r: _frag(tag, {"vr": vr, "Value": [r[i]]} if r[i] else {"vr": vr})


def _plan(q: QidoQuery, fields: tuple[str, ...]) -> list[tuple[int, Any, bool]]:
    """(cut index, fragment of a row, whether it replaces a stored element) for each
    attribute this query adds, in tag order; mirrors :func:`_item` exactly. Cached per
    query form (the fragments are functions of the row alone)."""
    return _plan_of(q.level, q.includefields, q.include_all, q.private, fields)


@functools.lru_cache(maxsize=STATEMENT_CACHE)
def _plan_of(level: str, inc: frozenset, include_all: bool, private: frozenset,
             names: tuple[str, ...]) -> list[tuple[int, Any, bool]]:
    fields = {name: i for i, name in enumerate(names)}
    add: dict[str, bool] = {}  # tag -> replaces the stored element
    if level != "study":
        # Picked from the study's (and at the instance level the series') computed
        # attributes only when named; the stored level JSON wins over them.
        picks = [TAG_MODALITIES, TAG_SOP_CLASSES, TAG_STUDY_SERIES, TAG_STUDY_INSTANCES]
        if level == "instance":
            picks.append(TAG_SERIES_INSTANCES)
        add.update((tag, False) for tag in picks if tag in inc)
        if level == "series":
            add[TAG_SERIES_INSTANCES] = True
        add[TAG_SERIES_UID] = True
    else:
        add[TAG_MODALITIES] = True
        if include_all or TAG_SOP_CLASSES in inc:
            add[TAG_SOP_CLASSES] = True
        add[TAG_STUDY_SERIES] = True
        add[TAG_STUDY_INSTANCES] = True
        if TAG_BODY_PARTS in inc:
            add[TAG_BODY_PARTS] = True
        if private:
            add[PRIVATE_GROUP_CREATOR[0]] = True
            add.update((PRIVATE_TAGS[name][0], True) for name in private)
    add[TAG_AVAILABILITY] = True
    add[TAG_STUDY_UID] = True
    index = _CUT_INDEX[level]
    return [(3 + 2 * index[tag], _maker(tag, fields), wins)
            for tag, wins in sorted(add.items())]


def raw_items(q: QidoQuery, rows: list[sa.Row]) -> list:
    """The items of ``rows`` for a JSON answer: per row, (pieces whose concatenation is
    the item's DICOM JSON object without its closing brace, StudyInstanceUID,
    SeriesInstanceUID, SOPInstanceUID) when it can be spliced, else the item as a dict
    (:func:`_item`). Pieces, not one bytes object: the caller joins the whole answer
    once."""
    if not rows:
        return []
    level = q.level
    names = tuple(rows[0]._fields)
    fields = {name: i for i, name in enumerate(names)}
    plan = _plan(q, names)
    cuts_struct_ = _CUT_STRUCT[level]
    unpack = cuts_struct_.unpack
    size = cuts_struct_.size
    json_at = fields[_LEVEL_JSON[level]]
    cuts_at = fields[_LEVEL_CUTS[level]]
    study_at = fields["study_instance_uid"]
    series_at = fields.get("series_instance_uid") if level != "study" else None
    sop_at = fields.get("sop_instance_uid") if level == "instance" else None
    first = plan[0][0]
    hash64 = xxhash.xxh3_64_intdigest
    out: list = []
    for row in rows:
        data = row[json_at]
        cuts = row[cuts_at]
        v = unpack(cuts) if cuts is not None and len(cuts) == size else None
        if v is None or v[0] != CUTS_VERSION or v[1] != len(data) or v[2] != hash64(data):
            out.append(_item(q, row, False))
            continue
        # Positions count the opening brace as a comma (levels.level_json): a slice from
        # 0 that comes first starts the object; otherwise the JSON is read with a real
        # comma in front and the result gets its brace back.
        lead = v[first] == 0
        if lead:
            data = b"," + data[1:]
            pieces = [b"{"]
        else:
            pieces = []
        prev = 0
        for at, make, wins in plan:
            start = v[at]
            end = v[at + 1]
            if start > prev:
                pieces.append(data[prev:start])
            pieces.append(make(row) if wins or start == end else data[start:end])
            prev = end
        pieces.append(data[prev:-1])
        if lead:  # the item starts at the first cut: its comma goes, the brace comes first
            pieces[1] = pieces[1][1:]
        out.append((pieces, row[study_at],
                    row[series_at] if series_at is not None else None,
                    row[sop_at] if sop_at is not None else None))
    return out
