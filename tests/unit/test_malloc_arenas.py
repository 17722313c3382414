"""pacsd serve caps glibc's malloc arenas (pacsd/malloc.py; issue 6 item 4, R-H1: the soak's
RSS kept rising in per-thread arenas after the bounded caches were full). Run in fresh
interpreters: the cap is process-wide."""
from __future__ import annotations

import os
import subprocess
import sys

CODE = ("import os; from pacsd.malloc import limit_arenas; "
        "print(limit_arenas(), os.environ.get('MALLOC_ARENA_MAX'))")


def _run(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True,
                          text=True, check=True, timeout=60).stdout.strip()


def test_the_cap_is_set_and_handed_to_child_processes():
    # glibc's mallopt accepted it (returns 1), and processes started later inherit it.
    assert _run({}) == "True 2"


def test_an_operators_own_setting_wins():
    assert _run({"MALLOC_ARENA_MAX": "4"}) == "False 4"


BUFFERS = ("import os; from pacsd.malloc import keep_object_buffers; "
           "print(keep_object_buffers(), os.environ.get('MALLOC_MMAP_THRESHOLD_'), "
           "os.environ.get('MALLOC_TRIM_THRESHOLD_'))")


def _run_buffers(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", BUFFERS], env=env, capture_output=True,
                          text=True, check=True, timeout=60).stdout.strip()


def test_object_buffers_are_kept_for_reuse():
    # R-H1: blocks up to 4 MiB from the arenas, 32 MiB kept free; inherited by children.
    assert _run_buffers({}) == f"True {4 * 1024**2} {32 * 1024**2}"
    assert _run_buffers({"MALLOC_TRIM_THRESHOLD_": "1000000"}) == "False None 1000000"
