"""The plugin API in core (R-E6): plugin-owned tables with per-plugin migrations, the
public archive surface (store through the one ingest path, read / render through the one
retrieve path, query, audit), ``pacsd plugins`` and ``register_commands``, and a
third-party distribution installed with pip being picked up by ``pacsd serve``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest
import sqlalchemy as sa
from dicomgen import make_dataset, make_instance, to_part10

from pluginsite import ROOT, pip_install
from pacsd import hookimpl
from pacsd.config import Settings
from pacsd.errors import PacsdError
from pacsd.index.plugin_tables import migrate_plugin, plugin_versions
from pacsd.plugin_api import Migration, PluginSchema, api_of, requires
from pacsd.plugins import Plugins
from pacsd.web import create_app


def _schema(version: int) -> PluginSchema:
    md = sa.MetaData()
    cols = [sa.Column("id", sa.Integer, primary_key=True), sa.Column("note", sa.String(40))]
    if version >= 2:
        cols.append(sa.Column("extra", sa.String(40)))
    sa.Table("demo_notes", md, *cols)

    def add_extra(conn):
        conn.execute(sa.text("ALTER TABLE demo_notes ADD COLUMN extra VARCHAR(40)"))

    steps = [Migration(1, "notes", lambda conn: md.create_all(conn))]
    if version >= 2:
        steps.append(Migration(2, "notes.extra", add_extra))
    return PluginSchema("demo", md, tuple(steps))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request, tmp_path):
    if request.param == "sqlite":
        eng = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    else:
        eng = sa.create_engine(request.getfixturevalue("pg_server_url"))
        with eng.begin() as conn:  # the session database is shared: start clean
            conn.execute(sa.text("DROP TABLE IF EXISTS demo_notes, plugin_schema_version"))
    yield eng
    eng.dispose()


def test_R_E6_plugin_tables_are_created_upgraded_and_versioned_per_plugin(engine):
    assert migrate_plugin(engine, _schema(1)) == 1
    assert plugin_versions(engine) == {"demo": 1}
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO demo_notes (id, note) VALUES (1, 'kept')"))
    assert migrate_plugin(engine, _schema(2)) == 2        # upgrade: step 2 only
    assert migrate_plugin(engine, _schema(2)) == 2        # idempotent
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT note, extra FROM demo_notes")).one()
    assert tuple(row) == ("kept", None)
    assert plugin_versions(engine) == {"demo": 2}
    with pytest.raises(PacsdError, match="newer"):
        migrate_plugin(engine, _schema(1))                # an old plugin refuses
    md = sa.MetaData()
    sa.Table("studies_evil", md, sa.Column("id", sa.Integer, primary_key=True))
    with pytest.raises(PacsdError, match="must be named"):
        migrate_plugin(engine, PluginSchema("demo2", md, (Migration(1, "x", md.create_all),)))


class DemoPlugin:
    """Uses only pacsd.plugin_api: its own table, ingest, retrieve, query and audit."""

    def __init__(self) -> None:
        self.api = None
        self.stored: list[str] = []

    @hookimpl
    def register_tables(self):
        return _schema(2)

    @hookimpl
    def api_ready(self, api):
        self.api = api

    @hookimpl
    def instance_stored(self, parsed, outcome):
        self.stored.append(outcome.sop_instance_uid)

    @hookimpl
    def register_routes(self, router, settings):
        @requires("write", audit="demo.made")
        async def make(request):
            api = api_of(request)
            ds = make_dataset(Modality="OT")
            out = await api.store_instance(to_part10(ds))
            await api.run(api.write, lambda c: c.execute(
                sa.text("INSERT INTO demo_notes (note) VALUES (:n)"),
                {"n": out.sop_instance_uid[-20:]}))
            found = await api.search("instance", {"SOPInstanceUID": out.sop_instance_uid})
            row = await api.instance(out.study_instance_uid, out.series_instance_uid,
                                     out.sop_instance_uid)
            png = await api.rendered(row, media_type="image/png")
            data = await api.read_instance(row)
            notes = await api.run(api.read, lambda c: c.execute(
                sa.text("SELECT count(*) FROM demo_notes")).scalar())
            api.audit("demo.extra", detail={"why": "test"})
            from aiohttp import web
            return web.json_response({"found": len(found), "png": png[:8].hex(),
                                      "size": len(data), "notes": notes,
                                      "sop": out.sop_instance_uid})
        router.add_post("/api/v1/plugins/demo/make", make)


async def test_R_E6_plugin_api_stores_reads_queries_and_audits(aiohttp_client, tmp_path):
    settings = Settings()
    settings.server.data_dir = str(tmp_path)
    plugins = Plugins()
    demo = DemoPlugin()
    plugins.register(demo, "demo")
    client = await aiohttp_client(create_app(settings, plugins))
    assert demo.api is not None                              # api_ready fired
    r = await client.post("/api/v1/plugins/demo/make")
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["found"] == 1 and body["notes"] == 1 and body["size"] > 128
    assert body["png"] == b"\x89PNG\r\n\x1a\n".hex()
    assert demo.stored == [body["sop"]]                      # the one ingest path's hook
    r = await client.get("/dicom-web/instances", params={"SOPInstanceUID": body["sop"]})
    assert len(await r.json()) == 1
    r = await client.get("/api/v1/audit", params={"type": "demo.made"})
    assert [e["outcome"] for e in (await r.json())["events"]] == ["success"]
    r = await client.get("/api/v1/audit", params={"type": "demo.extra"})
    assert len((await r.json())["events"]) == 1


THIRD_PARTY = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "pacsd-hello"
        version = "0.3.1"
        [project.entry-points.pacsd]
        hello = "pacsd_hello"
        [tool.setuptools]
        py-modules = ["pacsd_hello"]
    """,
    "pacsd_hello.py": '''
        """A third-party pacsd plugin used by the tests."""
        from aiohttp import web
        from pacsd.plugin_api import hookimpl, public

        @hookimpl
        def register_routes(router, settings):
            @public
            async def hello(request):
                return web.json_response({"hello": "third party"})
            async def undeclared(request):
                return web.json_response({"leak": True})
            router.add_get("/api/v1/plugins/hello/", hello)
            router.add_get("/api/v1/plugins/hello/undeclared", undeclared)

        def _greet(args, settings):
            print("greetings,", args.who)
            return 3

        @hookimpl
        def register_commands(subparsers):
            p = subparsers.add_parser("hello", help="say hello")
            p.add_argument("who")
            p.set_defaults(pacsd_command=_greet)
    ''',
}


@pytest.fixture(scope="module")
def hello_site(tmp_path_factory):
    src = tmp_path_factory.mktemp("hello-src")
    for name, text in THIRD_PARTY.items():
        (src / name).write_text(textwrap.dedent(text))
    target = tmp_path_factory.mktemp("hello-site")
    pip_install(src, target)
    return target


def _env(site) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


def test_R_E6_pip_installed_plugin_is_listed_and_adds_a_command(hello_site):
    out = subprocess.run([sys.executable, "-m", "pacsd.cli", "plugins", "--json"],
                         env=_env(hello_site), capture_output=True, text=True, check=True)
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["hello"]["version"] == "0.3.1"
    assert rows["hello"]["distribution"] == "pacsd-hello"
    assert rows["hello"]["hooks"] == ["register_commands", "register_routes"]
    out = subprocess.run([sys.executable, "-m", "pacsd.cli", "plugins"],
                         env=_env(hello_site), capture_output=True, text=True, check=True)
    assert "hello\t0.3.1\tregister_commands, register_routes" in out.stdout
    run = subprocess.run([sys.executable, "-m", "pacsd.cli", "hello", "world"],
                         env=_env(hello_site), capture_output=True, text=True)
    assert run.returncode == 3 and run.stdout.strip() == "greetings, world"


def test_R_E6_SEC_21_pip_installed_plugin_serves_its_routes_deny_by_default(
        hello_site, tmp_path, monkeypatch):
    from pacsd_server import Server

    monkeypatch.setenv("PYTHONPATH", _env(hello_site)["PYTHONPATH"])
    conf = tmp_path / "pacsd.toml"
    conf.write_text("[security]\nenabled = true\n")
    srv = Server(str(tmp_path), "--config", str(conf))
    try:
        with urllib.request.urlopen(srv.url + "/api/v1/plugins/hello/") as r:
            assert json.load(r) == {"hello": "third party"}
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(srv.url + "/api/v1/plugins/hello/undeclared")
        assert e.value.code in (401, 403)
    finally:
        srv.stop()


class Emitter:
    @hookimpl
    def register_routes(self, router, settings):
        @requires("read")
        async def fire(request):
            from aiohttp import web
            await api_of(request).emit("emitter.ping", n=int(request.query["n"]))
            return web.json_response({})
        router.add_post("/api/v1/plugins/emitter/fire", fire)


class Listener:
    def __init__(self) -> None:
        self.seen: list = []

    @hookimpl
    def plugin_event(self, api, event, payload):
        self.seen.append(("sync", event, payload["n"]))

        async def later():
            self.seen.append(("awaited", event, payload["n"]))

            async def background():
                self.seen.append(("spawned", payload["n"]))
            api.spawn(background())
        return later()


class BrokenListener:
    @hookimpl
    def plugin_event(self, api, event, payload):
        raise RuntimeError("a buggy listener")


async def test_R_E6_plugin_events_reach_other_plugins_and_spawned_work_is_drained(
        aiohttp_client, tmp_path):
    settings = Settings()
    settings.server.data_dir = str(tmp_path)
    plugins = Plugins()
    listener = Listener()
    plugins.register(Emitter(), "emitter")
    plugins.register(BrokenListener(), "broken")
    plugins.register(listener, "listener")
    client = await aiohttp_client(create_app(settings, plugins))
    r = await client.post("/api/v1/plugins/emitter/fire?n=7")
    assert r.status == 200
    assert listener.seen[:2] == [("sync", "emitter.ping", 7), ("awaited", "emitter.ping", 7)]
    await client.close()                                      # shutdown drains the task
    assert ("spawned", 7) in listener.seen


class StableListener:
    def __init__(self) -> None:
        self.stable: list[str] = []

    @hookimpl
    def study_stable(self, api, study_uid):
        async def note():
            self.stable.append(study_uid)
        return note()


async def test_R_C1_study_stable_fires_once_a_study_is_quiet(aiohttp_client, tmp_path):
    import asyncio

    from dicomgen import multipart

    settings = Settings()
    settings.server.data_dir = str(tmp_path)
    settings.server.stable_age_s = 0.1
    plugins = Plugins()
    listener = StableListener()
    plugins.register(listener, "stable")
    client = await aiohttp_client(create_app(settings, plugins))
    assert "pacsd.stability" in plugins.names()               # built-in, like any plugin
    a, b = make_dataset(), make_dataset()
    for ds in (a, b):
        body, ctype = multipart([to_part10(ds)])
        r = await client.post("/dicom-web/studies", data=body,
                              headers={"Content-Type": ctype})
        assert r.status == 200
    for _ in range(500):                                      # bounded wait
        if len(listener.stable) >= 2:
            break
        await asyncio.sleep(0.02)
    assert sorted(listener.stable) == sorted([a.StudyInstanceUID, b.StudyInstanceUID])
    body, ctype = multipart([to_part10(a)])                   # identical re-send: no change
    await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    await client.close()                                      # the watcher is cancelled
    assert len(listener.stable) == 2


class Pinger:
    """A plugin with a persistent job kind: fails its first attempt, then records."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict, int]] = []

    @hookimpl
    def register_jobs(self, api):
        from pacsd.plugin_api import JobFailed

        async def ping(job):
            self.seen.append((job.payload, job.attempts))
            if job.attempts == 1:
                raise JobFailed("first try fails")
            if job.payload.get("permanent"):
                raise JobFailed("never", retry=False)
        return {"pinger.ping": (ping, 3)}


async def test_R_E6_R_B2_register_jobs_and_api_jobs_submit(aiohttp_client, tmp_path):
    """A plugin's job kind runs from the persistent queue: retried with backoff after a
    failed attempt, dead on a permanent failure; its state is readable (docs/jobs.md)."""
    import asyncio

    from pacsd.web.keys import PLUGIN_API

    settings = Settings()
    settings.server.data_dir = str(tmp_path)
    settings.jobs.backoff_base_s, settings.jobs.backoff_jitter = 0.02, 0.0
    settings.jobs.poll_interval_s = 0.05
    plugins = Plugins()
    pinger = Pinger()
    plugins.register(pinger, "pinger")
    client = await aiohttp_client(create_app(settings, plugins))
    api = client.server.app[PLUGIN_API]
    ok = await api.jobs.submit("pinger.ping", {"n": 1})
    bad = await api.jobs.submit("pinger.ping", {"permanent": True})
    for _ in range(200):
        states = [(await api.jobs.get(pk))["state"] for pk in (ok, bad)]
        if states == ["done", "dead"]:
            break
        await asyncio.sleep(0.05)
    assert states == ["done", "dead"]
    assert ({"n": 1}, 1) in pinger.seen and ({"n": 1}, 2) in pinger.seen
    job = await api.jobs.get(bad)
    assert job["attempts"] == 2 and job["last_error"] == "never"
    assert await api.jobs.get(10**6) is None
