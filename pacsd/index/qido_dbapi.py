"""QIDO-RS statements run on the DBAPI cursor (R-H1, issue 6).

A QIDO-RS answer of one or two items cost ~0.6 ms of server CPU, a quarter of it in
SQLAlchemy's per-execution work (Connection, the autobegin event that itself executes
``BEGIN`` through SQLAlchemy, execution context, result metadata, row objects), none of
it needed here: :mod:`qido_sql` already caches one statement object per query shape. This
module compiles each such statement once per dialect (SQL text, the order of its bind
parameters, the constants SQLAlchemy bound itself) and executes it on a pooled DBAPI
connection, with the rows as named tuples (same fields, same values: the columns read
have no result processors and the parameters no bind processors; a statement that needs
either, or expands an IN list, raises :class:`Unsupported` and the query runs through
SQLAlchemy as before).

What stays as it was: the pool (PostgreSQL's pre-ping, checkout limits and timeouts), one
read transaction per query (SQLite: ``BEGIN``; PostgreSQL: the driver's implicit one),
rolled back when the connection goes back to the pool; database errors wrapped as the
SQLAlchemy exceptions :func:`engine.translate_errors` maps, a lost connection
invalidated.
"""
from __future__ import annotations

import collections
import operator
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from pacsd.index import qido_sql
from pacsd.index.engine import translate_errors
from pacsd.index.qido import QidoQuery, QidoResult
from pacsd.index.schema import series, studies

T = TypeVar("T")


class Unsupported(Exception):
    """A statement this path does not run (the caller runs the query through SQLAlchemy)."""


class _Compiled:
    __slots__ = ("sql", "names", "defaults", "positional", "row", "pick")

    def __init__(self, stmt: sa.Executable, dialect: sa.Dialect) -> None:
        c = stmt.compile(dialect=dialect)
        if "POSTCOMPILE" in c.string or c._bind_processors or any(
                rc.type._cached_result_processor(dialect, None) is not None
                for rc in c._result_columns):
            raise Unsupported
        self.sql = c.string
        self.positional = bool(c.positional)
        self.names = tuple(c.positiontup) if self.positional else tuple(c.params)
        self.defaults = {k: v for k, v in c.params.items() if v is not None}
        self.pick = operator.itemgetter(*self.names) if self.names else (lambda v: ())
        fields = [rc.keyname for rc in c._result_columns]
        self.row = None  # one column: read as a scalar, by position
        if len(fields) > 1:
            if fields != list(stmt.selected_columns.keys()):
                raise Unsupported  # labels SQLAlchemy would have named differently
            self.row = collections.namedtuple("Row", fields)._make

    def args(self, params: dict[str, Any] | None) -> Any:
        values = {**self.defaults, **params} if params else self.defaults
        if self.positional:
            picked = self.pick(values)
            return picked if len(self.names) != 1 else (picked,)
        return {n: values[n] for n in self.names}


#: statement -> {dialect name: _Compiled | None (unsupported)}. The statements are the
#: ones qido_sql caches per query shape; an evicted one takes its entry with it.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _compiled(stmt: sa.Executable, dialect: sa.Dialect) -> _Compiled:
    per = _COMPILED.get(stmt)
    if per is not None:
        c = per.get(dialect.name, False)
        if c is not False:
            if c is None:
                raise Unsupported
            return c
    try:
        c = _Compiled(stmt, dialect)
    except Unsupported:
        c = None
    with _LOCK:
        _COMPILED.setdefault(stmt, {})[dialect.name] = c
    if c is None:
        raise Unsupported
    return c


class _Result:
    __slots__ = ("rows",)

    def __init__(self, rows: list) -> None:
        self.rows = rows

    def all(self) -> list:
        return self.rows

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None


class _Cursor:
    """What :func:`qido_sql.run` calls on a connection (``execute(stmt, params)`` ->
    ``.all()`` / ``.scalar()``), on a DBAPI cursor."""

    def __init__(self, cursor: Any, dialect: sa.Dialect) -> None:
        self.cursor = cursor
        self.dialect = dialect
        self.last: tuple[str, Any] = ("", None)

    def execute(self, stmt: sa.Executable, params: dict[str, Any] | None = None) -> _Result:
        c = _compiled(stmt, self.dialect)
        args = c.args(params)
        self.last = (c.sql, args)
        cur = self.cursor
        cur.execute(c.sql, args)
        rows = cur.fetchall()
        if c.row is not None:
            rows = list(map(c.row, rows))
        return _Result(rows)


def search(engine: sa.Engine, q: QidoQuery, *, raw: bool = False) -> QidoResult:
    """:func:`qido_sql.run` of an unscoped query on a pooled DBAPI connection; through
    SQLAlchemy when a statement is :class:`Unsupported`."""
    conn = _checkout(engine)
    try:
        fetched = _fetch_on(conn.dbapi_connection, engine.dialect, q, conn)
    finally:
        conn.close()  # back to the pool, rolled back
    if fetched is None:
        with engine.connect() as sa_conn:
            return qido_sql.run(sa_conn, q, raw=raw)
    return qido_sql.assemble(q, fetched, raw=raw)


#: The version of what a page below a study / series reads (R-H1): the row's pk (a series
#: deleted and stored again is another row), its revision (bumped by every ingest,
#: delete and correction below it: index/writes.py, versions.py), its instance count and
#: its last change (with the pk: SQLite may give a series deleted and stored again the
#: same pk and revision); the series form is the metadata ETag's (catalogue._SERIES_ETAG).
#: The time is read as stored (no DateTime result processor: the DBAPI path runs none).
SERIES_VERSION = (sa.select(series.c.pk, series.c.revision, series.c.num_instances,
                            sa.type_coerce(series.c.updated_at, sa.String).label("updated_at"))
                  .select_from(series.join(studies, series.c.study_fk == studies.c.pk))
                  .where(studies.c.study_instance_uid == sa.bindparam("b_study"),
                         series.c.series_instance_uid == sa.bindparam("b_series")))
STUDY_VERSION = (sa.select(studies.c.pk, studies.c.revision, studies.c.num_instances,
                           sa.type_coerce(studies.c.updated_at, sa.String).label("updated_at"))
                 .where(studies.c.study_instance_uid == sa.bindparam("b_study")))


def search_versioned(engine: sa.Engine, q: QidoQuery, version: sa.Select,
                     params: dict[str, Any], known: Callable[[tuple], bool], *,
                     raw: bool = False) -> tuple[tuple | None, QidoResult | None]:
    """(version row, result) of an unscoped query in one read transaction: the row of
    ``version`` (:data:`SERIES_VERSION` / :data:`STUDY_VERSION`), then the query unless
    ``known(row)`` says the caller holds its answer for that version already (result
    None). No row (no such study / series): the query runs, version None. The version is
    read first, so an answer is never older than the version it is filed under."""
    def check(read: Callable) -> tuple[Any, bool]:
        row = read(lambda runner: (runner.execute(version, params).rows or [None])[0])
        token = tuple(row) if row is not None else None
        return token, token is not None and known(token)
    return _search_kept(engine, q, check, raw=raw)


def search_stamped(engine: sa.Engine, q: QidoQuery, held: tuple | None, *,
                   raw: bool = False) -> tuple[tuple | None, QidoResult | None]:
    """(version, result) of an unscoped :func:`qido_sql.stampable` query in one read
    transaction; the version is (generation, stamp): :data:`qido_sql.GENERATION` (SQLite;
    None on PostgreSQL) and the page's stamp (:func:`qido_sql.stamp_of`: pks, revisions,
    total). ``held``: the version of an answer the caller holds (None: none); the result
    is None when that answer is still the answer: the generation is the same (nothing
    of studies and series changed since: not even the stamp is read) or, read without
    the JSON and nothing spliced, the stamp is. The stamp of a query that runs is read off
    its own rows; the version is None when it ran through SQLAlchemy (:class:`Unsupported`)."""
    def check(read: Callable) -> tuple[Any, bool]:
        generation = None
        if engine.dialect.name == "sqlite":
            generation = read(lambda runner: runner.execute(qido_sql.GENERATION).scalar())
            if held is not None and generation is not None and held[0] == generation:
                return held, True
        if held is not None:
            stamped = read(lambda runner: qido_sql.fetch(runner, q, stamp=True))
            if stamped is not None:
                stamp = qido_sql.stamp_of(q, stamped)
                if stamp == held[1]:
                    return (generation, stamp), True
        return (lambda fetched: (generation, qido_sql.stamp_of(q, fetched))), False
    return _search_kept(engine, q, check, raw=raw)


def _search_kept(engine: sa.Engine, q: QidoQuery,
                 check: Callable[[Callable], tuple[Any, bool]], *,
                 raw: bool) -> tuple[tuple | None, QidoResult | None]:
    """What :func:`search_versioned` and :func:`search_stamped` share: one read
    transaction on a pooled DBAPI connection, in which ``check(read)`` reads the version
    (``read(fn)``: ``fn(cursor)`` in that transaction) and returns (version, whether the
    caller's answer stands); when it does not, the page is read in the same transaction.
    A version that is a function is one of the page's rows (None when the query ran
    through SQLAlchemy: :class:`Unsupported`)."""
    with translate_errors("searching"):
        conn = _checkout(engine)
        try:
            dbapi_conn = conn.dbapi_connection
            dialect = engine.dialect
            began: list[bool] = []

            def read(fn: Callable[[_Cursor], T]) -> T | None:
                out = _in_transaction(dbapi_conn, dialect, conn, fn, begin=not began)
                began.append(True)
                return out
            version, stands = check(read)
            if stands:
                return version, None
            fetched = read(lambda runner: qido_sql.fetch(runner, q))
        finally:
            conn.close()  # back to the pool, rolled back
        if fetched is None:
            with engine.connect() as sa_conn:
                return (None if callable(version) else version), qido_sql.run(sa_conn, q,
                                                                                raw=raw)
        if callable(version):
            version = version(fetched)
        return version, qido_sql.assemble(q, fetched, raw=raw)


def _checkout(engine: sa.Engine) -> Any:
    """A pooled connection; a failure to connect raised as SQLAlchemy raises it (the pool
    hands the driver's own exception through)."""
    dialect = engine.dialect
    try:
        return engine.raw_connection()
    except dialect.loaded_dbapi.Error as e:
        raise sa.exc.DBAPIError.instance(None, None, e, dialect.loaded_dbapi.Error,
                                         connection_invalidated=True,
                                         dialect=dialect) from e


def _fetch_on(dbapi_conn: Any, dialect: sa.Dialect, q: QidoQuery, pooled: Any = None
              ) -> qido_sql.Fetched | None:
    """:func:`qido_sql.fetch` in one read transaction on ``dbapi_conn`` (None:
    :class:`Unsupported`); the caller rolls back (the pool does when ``pooled`` goes
    back)."""
    return _in_transaction(dbapi_conn, dialect, pooled, lambda runner: qido_sql.fetch(runner, q))


def _in_transaction(dbapi_conn: Any, dialect: sa.Dialect, pooled: Any,
                    fn: Callable[[_Cursor], T], *, begin: bool = True) -> T | None:
    """``fn(cursor)`` on ``dbapi_conn``, in the read transaction ``begin`` opens on SQLite
    (one snapshot for every statement until the caller rolls back; PostgreSQL's driver
    opens its own); None when a statement is :class:`Unsupported`; database errors
    wrapped as SQLAlchemy wraps them (a lost connection invalidated)."""
    dbapi_error = dialect.loaded_dbapi.Error
    cur = dbapi_conn.cursor()
    runner = _Cursor(cur, dialect)
    try:
        if begin and dialect.name == "sqlite":  # one read snapshot for the page and its count
            cur.execute("BEGIN")
        return fn(runner)
    except Unsupported:
        return None
    except dbapi_error as e:
        lost = dialect.is_disconnect(e, dbapi_conn, cur)
        if lost and pooled is not None:
            pooled.invalidate(e)
        sql, args = runner.last
        raise sa.exc.DBAPIError.instance(sql, args, e, dbapi_error,
                                         connection_invalidated=lost,
                                         dialect=dialect) from e
    finally:
        try:
            cur.close()
        except dbapi_error:
            pass
