"""A minimal plugin module loaded by name from the settings (tests/test_plugins.py)."""
from pacsd import hookimpl


@hookimpl
def startup(archive):
    archive.started_by_example = True
