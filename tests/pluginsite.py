"""Plugin tests (tests/plugins, tests/browser): install distributions the way pip does, into a private directory.

First-party plugins (``plugins/pacsd-*``) and a tiny third-party test plugin are
installed with ``pip install --no-deps --target DIR``, so their ``pacsd`` entry points
are found exactly as for a pip-installed plugin (importlib.metadata reads the
``.dist-info`` on ``sys.path``), without changing the interpreter's site-packages that
other checkouts on the machine share. In-process tests put DIR on ``sys.path``;
``pacsd serve`` subprocesses get it through ``PYTHONPATH``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("pacsd-share", "pacsd-efilm", "pacsd-reports", "pacsd-notify")


def pip_install(src: Path, target: Path) -> None:
    # Build from a copy: setuptools leaves build/ and *.egg-info beside the sources.
    copy = Path(tempfile.mkdtemp(prefix="plugin-src-")) / src.name
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    src = copy
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
           "--disable-pip-version-check", "--target", str(target), str(src)]
    try:
        import setuptools  # noqa: F401
        import wheel  # noqa: F401
        cmd.insert(4, "--no-build-isolation")  # build with what is installed: faster
    except ImportError:
        pass
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """A directory holding the first-party plugins as installed distributions."""
    target = tmp_path_factory.mktemp("plugin-site")
    for name in FIRST_PARTY:
        src = ROOT / "plugins" / name
        if src.exists():
            pip_install(src, target)
    return target


@pytest.fixture
def with_plugin_site(plugin_site, monkeypatch) -> Path:
    """First-party plugins importable here and in subprocesses started by the test."""
    monkeypatch.syspath_prepend(str(plugin_site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(plugin_site), str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    return plugin_site
