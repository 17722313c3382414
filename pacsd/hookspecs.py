"""L1: every plugin hook pacsd calls, with when it is called and how results combine.

Plugins implement these with ``@pacsd.hookimpl`` (R-E6: plugins add collection, upload
and report features without touching core). docs/plugin_hooks.md documents each hook with
an example; tests/test_plugins.py checks that every hookspec here is documented there
and exercised by a test.

Calling modes (pacsd/plugins.py):
- *fire*: events; every plugin is called, an exception in one is logged and does not stop
  the others or the caller.
- *collect*: registries / filters; results of all plugins are combined and an exception
  propagates to the caller.
- *first*: ``firstresult`` hooks; plugins are asked in turn until one returns something
  other than None, an exception propagates (plain ``def`` only: pluggy has no async).
Hooks fire after the durable commit, never under a lock or inside a transaction; slow work
belongs in a background task, not in the hook.
"""
from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("pacsd")
hookimpl = pluggy.HookimplMarker("pacsd")


@hookspec
def startup(archive: Any) -> None:
    """*fire* — once, after the archive (store, catalogue) is open and before the server
    accepts requests. ``archive`` is :class:`pacsd.services.Archive`."""


@hookspec
def shutdown(archive: Any) -> None:
    """*fire* — once, after the last request finished and before the archive closes."""


@hookspec
def register_routes(router: Any, settings: Any) -> None:
    """*collect* — add aiohttp routes (``router`` is the application's UrlDispatcher).
    Plugin routes live under ``/api/v1/plugins/<name>/`` by convention. Errors propagate:
    a plugin that cannot register its routes stops the start-up."""


@hookspec
def instance_received(parsed: Any) -> None:
    """*collect* — called on the ingest path after the header was parsed and before the
    object is stored (``parsed`` is :class:`pacsd.model.ParsedInstance`). Raise a
    :class:`pacsd.errors.InstanceError` subclass to refuse the instance; the refusal is
    reported to the sender (STOW FailedSOPSequence / C-STORE status) with its reason."""


@hookspec
def instance_stored(parsed: Any, outcome: Any) -> None:
    """*fire* — after an instance is durable in the store and committed to the index
    (``outcome`` is :class:`pacsd.model.StoreOutcome`; ``outcome.created`` is False for an
    identical re-send). Runs on a worker thread of the ingest path: return quickly."""


@hookspec(firstresult=True)
def actor_from_request(request: Any) -> Any:
    """*first* — identify who sends an HTTP request, before pacsd's own Bearer tokens are
    looked at (e.g. an OIDC or hospital single-sign-on plugin). ``request`` is the aiohttp
    request. Return a :class:`pacsd.services.security.Actor` to authenticate it, ``None``
    to leave it to the next plugin and finally to pacsd, or raise
    :class:`pacsd.errors.Unauthorized` to refuse it. The first non-None result wins. Called
    on the event loop for every request to a protected route: plain ``def``, quick, no
    blocking IO (cache what you verify)."""


@hookspec
def permission_allowed(actor: Any, action: str, resource: Any) -> bool | None:
    """*collect* — a veto on each authorization decision (R-E1, MLPS 7). ``actor`` is a
    :class:`pacsd.services.security.Actor`, ``action`` one of ``read``, ``write``,
    ``delete``, ``audit-read``, ``admin`` (or an action a plugin route declared),
    ``resource`` a :class:`pacsd.services.security.Resource` (route template, method,
    StudyInstanceUID when the URL names one). Return ``False`` to deny; ``True`` or
    ``None`` leave the decision to pacsd's role rules: a plugin can take permissions away,
    never grant ones the actor's roles and token scopes do not give. Any plugin's
    ``False`` denies (403, audited as ``permission-denied``); an exception propagates."""


@hookspec
def query_filter(actor: Any, action: str) -> Any:
    """*collect* — data-scope constraints for ``actor`` doing ``action`` (``read`` or
    ``delete``), AND-ed with pacsd's own institution and sensitivity-label scoping into
    every QIDO-RS, WADO-RS / WADO-URI retrieve, metadata, frames, rendered, DELETE,
    C-FIND, C-GET and C-MOVE (R-A12, MLPS 7). Return ``None`` (no constraint), one
    constraint or a list of them, built from :mod:`pacsd.services.scoping` (``OneOf``,
    ``NoneOf``, ``LabelsWithin``, ``AnyOf``, ``SamePatientAs``); they become a
    bound-parameter SQL clause. A study outside the result is not found (404, empty
    result, no C-FIND match). Called on the event loop per request or DIMSE operation:
    plain ``def``, quick, no blocking IO. An exception propagates (the request fails)."""


@hookspec(firstresult=True)
def actor_from_association(calling_ae: str, address: str, called_ae: str) -> Any:
    """*first* — identify a DIMSE peer (SEC-18, R-E3): ``calling_ae`` and ``called_ae``
    are the association's AE titles, ``address`` the peer's source IP. Return a
    :class:`pacsd.services.security.Actor` (its roles authorise C-STORE / C-FIND / C-GET
    / C-MOVE and its institutions / clearances scope them, as for HTTP), or ``None`` to
    leave it to the next plugin and then to ``[dimse] actors``. Called once per
    association, on a pynetdicom thread: plain ``def``, quick."""


@hookspec
def register_tables() -> Any:
    """*collect* — the plugin's own tables: return a
    :class:`pacsd.plugin_api.PluginSchema` (name, SQLAlchemy ``MetaData``, migrations
    1..N) or a list of them. Called when the archive opens, right after the core schema
    is migrated; each plugin's versions are recorded under its name (no core migration
    number needed). Table names must start with ``<name>_``. Errors stop the start-up."""


@hookspec
def api_ready(api: Any) -> None:
    """*fire* — once per server, when the public plugin surface
    (:class:`pacsd.plugin_api.PluginAPI`: ingest, retrieve, query, audit, plugin tables)
    is ready, after ``startup`` and before requests are served. Keep the ``api`` (or get
    it in a handler with ``pacsd.plugin_api.api_of(request)``)."""


@hookspec
def register_commands(subparsers: Any) -> None:
    """*collect* — add ``pacsd <command>`` sub-commands: ``subparsers`` is argparse's
    sub-parsers object. Set ``set_defaults(pacsd_command=fn)`` on the parser; pacsd
    calls ``fn(args, settings)`` and exits with its return value (an int). Commands come
    from installed (entry-point) plugins. Errors propagate."""


@hookspec
def plugin_event(api: Any, event: str, payload: dict) -> Any:
    """*fire* — an event one plugin announced with ``await api.emit(event, **payload)``
    (``event`` named ``<plugin>.<what>``, e.g. ``reports.final``), so plugins work
    together without importing each other. An implementation may return an awaitable;
    ``emit`` awaits it. Errors are logged and isolated, like every *fire* hook."""


@hookspec
def study_stable(api: Any, study_uid: str) -> Any:
    """*fire* — a study received no new instance for ``[server] stable_age_s`` seconds
    (Orthanc's StableStudy): the moment for work on the whole study, such as an e-film by
    rule. Fires again only after the study changes again. May return an awaitable,
    which is awaited; errors are logged and isolated. Tracked per process: with several
    pacsd processes, each fires for the instances it stored."""


@hookspec
def register_jobs(api: Any) -> Any:
    """*collect* — the plugin's kinds of persistent jobs (docs/jobs.md, R-B2, R-B5):
    return ``{kind: handler}`` (or ``{kind: (handler, max_attempts)}``), kinds named
    ``<plugin>.<what>``. ``handler(job)`` is a coroutine function (run on the event loop)
    or a plain function (run on the worker pool); ``job.payload`` is what
    ``api.jobs.submit(kind, payload)`` queued, ``job.attempts`` / ``job.max_attempts``
    count the attempts. Returning means done; raising
    :class:`pacsd.plugin_api.JobFailed` (``retry=False``: permanent) or any exception is
    a failed attempt, retried with the ``[jobs]`` backoff until the job is dead. Called
    once in ``pacsd serve`` before the job runner starts; errors stop the start-up."""
