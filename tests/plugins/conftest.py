"""Fixtures of the plugin tests: first-party plugins installed as distributions
(tests/pluginsite.py)."""
from pluginsite import ROOT, pip_install, plugin_site, with_plugin_site  # noqa: F401
