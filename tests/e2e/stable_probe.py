"""A plugin for tests/e2e/test_workers.py: notes every ``study_stable`` call in the file
named by ``PACSD_STABLE_PROBE`` (one line: study UID, pid)."""
import os

from pacsd import hookimpl


@hookimpl
def study_stable(api, study_uid):
    with open(os.environ["PACSD_STABLE_PROBE"], "a") as fh:
        fh.write(f"{study_uid} {os.getpid()}\n")
