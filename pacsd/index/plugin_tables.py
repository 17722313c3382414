"""Plugin-owned tables and their migrations, versioned per plugin (R-E6).

A plugin declares its tables (SQLAlchemy Core, in its own ``MetaData``) and an ordered
tuple of :class:`~pacsd.index.migrations.Migration` steps with the ``register_tables``
hook, returning a :class:`PluginSchema`. Core never gives plugins a core migration number:
each plugin's applied versions are recorded under its name in ``plugin_schema_version``,
a bookkeeping table this module creates on first use (``checkfirst``), outside the core
schema and its migrations.

The runner mirrors the core one (``migrations.py``): one transaction per plugin,
serialised against concurrent starters (PostgreSQL advisory lock; SQLite BEGIN
IMMEDIATE); a fresh plugin gets its *current* tables and every version stamped; an
older one gets the pending steps in order; a database newer than the plugin refuses to
start. Table names must start with ``<plugin>_`` so a plugin can never collide with core
tables or another plugin's.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field

import sqlalchemy as sa

from pacsd.errors import PacsdError
from pacsd.index.migrations import Migration

#: Advisory lock key of plugin migrations ("pacsdplg" as a 63-bit integer).
PLUGIN_LOCK_KEY = 0x7061637364706C67 & 0x7FFFFFFFFFFFFFFF
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")

_meta = sa.MetaData()
plugin_schema_version = sa.Table(
    "plugin_schema_version", _meta,
    sa.Column("plugin", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class PluginSchema:
    """What a plugin's ``register_tables`` returns: its name (the prefix of every table
    name), its ``MetaData`` holding the *current* tables, and migration steps 1..N (a
    fresh plugin needs at least ``Migration(1, "initial", create_tables)``)."""

    plugin: str
    metadata: sa.MetaData
    migrations: tuple[Migration, ...] = field(default_factory=tuple)

    def check(self) -> None:
        if not _NAME.match(self.plugin):
            raise PacsdError(f"plugin schema name {self.plugin!r}: lower case, digits, _")
        for table in self.metadata.sorted_tables:
            if not table.name.startswith(self.plugin + "_"):
                raise PacsdError(f"plugin {self.plugin}: table {table.name!r} must be "
                                 f"named {self.plugin}_...")
        versions = [m.version for m in self.migrations]
        if not versions or versions != list(range(1, len(versions) + 1)):
            raise PacsdError(f"plugin {self.plugin}: migrations must be numbered 1..N")

    @property
    def latest(self) -> int:
        return self.migrations[-1].version


def plugin_versions(engine: sa.Engine) -> dict[str, int]:
    """The recorded schema version of every plugin (empty before any plugin migrated)."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("plugin_schema_version"):
            return {}
        rows = conn.execute(sa.select(plugin_schema_version.c.plugin,
                                      sa.func.max(plugin_schema_version.c.version))
                            .group_by(plugin_schema_version.c.plugin))
        return {p: v for p, v in rows}


def migrate_plugin(engine: sa.Engine, schema: PluginSchema) -> int:
    """Bring one plugin's tables to its latest version; idempotent; returns it."""
    schema.check()
    now = _dt.datetime.now(_dt.timezone.utc)
    with engine.connect() as conn:
        conn = conn.execution_options(pacsd_write=True)  # SQLite: BEGIN IMMEDIATE
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SET LOCAL lock_timeout = 0"))
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"),
                             {"k": PLUGIN_LOCK_KEY})
            plugin_schema_version.create(conn, checkfirst=True)
            current = conn.scalar(
                sa.select(sa.func.max(plugin_schema_version.c.version))
                .where(plugin_schema_version.c.plugin == schema.plugin))
            if current is not None and current > schema.latest:
                raise PacsdError(f"the tables of plugin {schema.plugin} are newer than the "
                                 "installed plugin; upgrade the plugin")
            if current == schema.latest:
                return current
            if current is None:
                schema.metadata.create_all(conn)  # current tables ("stamp head")
                pending = schema.migrations
            else:
                pending = tuple(m for m in schema.migrations if m.version > current)
                for m in pending:
                    m.apply(conn)
            conn.execute(sa.insert(plugin_schema_version), [
                {"plugin": schema.plugin, "version": m.version,
                 "description": m.description[:200], "applied_at": now} for m in pending])
    return schema.latest


def migrate_plugins(engine: sa.Engine, schemas: list) -> dict[str, int]:
    """Migrate every schema the ``register_tables`` hook returned (a result may be one
    :class:`PluginSchema` or a list of them)."""
    flat: list[PluginSchema] = []
    for item in schemas:
        flat.extend(item if isinstance(item, (list, tuple)) else [item])
    names = [s.plugin for s in flat]
    if len(names) != len(set(names)):
        raise PacsdError("two plugins declare tables under the same name")
    return {s.plugin: migrate_plugin(engine, s) for s in flat}
