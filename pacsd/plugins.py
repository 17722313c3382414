"""L2: the per-archive plugin manager and its calling modes (ARCHITECTURE "Plugins").

One :class:`Plugins` per Archive (no module globals). Plugins come from the ``pacsd``
entry-point group (installed distributions, e.g. ``plugins/pacsd-<name>``) and from
modules named in the settings (``[plugins.<name>] module = "package.module"``); built-in
plugins register exactly like third-party ones.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any

import pluggy

from . import hookspecs

log = logging.getLogger(__name__)


class Plugins:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("pacsd")
        self.pm.add_hookspecs(hookspecs)

    def load(self, settings_plugins: dict[str, dict[str, Any]] | None = None, *,
             entry_points: bool = True) -> None:
        if entry_points:
            self.pm.load_setuptools_entrypoints("pacsd")
        for name, conf in (settings_plugins or {}).items():
            module = conf.get("module") if isinstance(conf, dict) else None
            if module and not self.pm.has_plugin(name):
                self.pm.register(importlib.import_module(module), name=name)

    def register(self, plugin: object, name: str | None = None) -> None:
        self.pm.register(plugin, name=name)

    def names(self) -> list[str]:
        return sorted(n for n, _ in self.pm.list_name_plugin())

    def fire(self, hook: str, **kwargs: Any) -> None:
        """Event: call every implementation; one plugin's error never stops the others
        nor the caller (it is logged with the plugin's name)."""
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception:
                log.exception("plugin %s failed in %s", impl.plugin_name, hook)

    def collect(self, hook: str, **kwargs: Any) -> list[Any]:
        """Registry / filter: every implementation's non-None result; errors propagate."""
        return getattr(self.pm.hook, hook)(**kwargs)

    def first(self, hook: str, **kwargs: Any) -> Any:
        """First result: implementations are called in turn until one returns something
        other than None (the hookspec is ``firstresult``); errors propagate."""
        return getattr(self.pm.hook, hook)(**kwargs)

    def describe(self) -> list[dict[str, Any]]:
        """Every loaded plugin: name, version (its distribution's, or the module's
        ``__version__``), the distribution it came from, and the hooks it implements
        (``pacsd plugins``)."""
        dists = {id(plugin): dist for plugin, dist in self.pm.list_plugin_distinfo()}
        out = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda np: np[0]):
            dist = dists.get(id(plugin))
            version = (dist.version if dist is not None
                       else str(getattr(plugin, "__version__", "") or ""))
            hooks = sorted(impl_hook.name for impl_hook in self.pm.get_hookcallers(plugin)
                           or ())
            out.append({"name": name, "version": version,
                        "distribution": dist.project_name if dist is not None else "",
                        "hooks": hooks})
        return out
