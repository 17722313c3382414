"""SEC-8 with worker processes (R-H1): the failed-login limiter of ``pacsd serve
--workers N`` and plugins' limiters (PluginAPI.rate_limiter) live in memory the forked
workers share (services.ratelimit.SharedFailureTable / SharedRateLimiter)."""
from __future__ import annotations

import os

import pytest

from pacsd.services.ratelimit import (SHARED_LIMIT_CAP, RateLimiter, SharedFailureTable,
                                     SharedRateLimiter)


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def fail_in_children(lim, key: str, n: int) -> None:
    """``n`` failures of ``key``, each recorded by another (forked) process."""
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            lim.failed(key)
            os._exit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_failures_in_forked_processes_count_against_one_limit():
    clock = Clock()
    lim = SharedRateLimiter(3, 60.0, clock, slots=64)
    lim.failed("10.0.0.1")
    fail_in_children(lim, "10.0.0.1", 2)  # two more failures, each in another process
    assert lim.retry_after("10.0.0.1") == 61
    assert lim.retry_after("10.0.0.2") is None


def test_same_answers_as_the_in_process_limiter():
    clock = Clock()
    shared, local = SharedRateLimiter(4, 30.0, clock, slots=64), RateLimiter(4, 30.0, clock)
    for step in range(40):
        key = f"192.0.2.{step % 3}"
        assert shared.retry_after(key) == local.retry_after(key), step
        if step % 5 != 4:
            shared.failed(key)
            local.failed(key)
        clock.t += 2.5


def test_bounded_table_keeps_the_active_address():
    """Many addresses (a distributed attack) evict the stalest entries, not the newest."""
    clock = Clock()
    lim = SharedRateLimiter(2, 600.0, clock, slots=32)
    for i in range(1000):
        lim.failed(f"198.51.100.{i}")
        clock.t += 0.01
    lim.failed("203.0.113.9")
    lim.failed("203.0.113.9")
    assert lim.retry_after("203.0.113.9") is not None
    clock.t += 601
    assert lim.retry_after("203.0.113.9") is None


def test_namespaces_of_one_table_never_meet():
    """The login limiter and a plugin's limiter share the table, not their counts."""
    clock = Clock()
    table = SharedFailureTable(slots=64, cap=8)
    login = table.limiter("login", 2, 60.0, clock)
    share = table.limiter("plugin:share.open", 5, 60.0, clock)
    for _ in range(2):
        login.failed("10.0.0.1")
    assert login.retry_after("10.0.0.1") == 61
    assert share.retry_after("10.0.0.1") is None      # the same address, another count
    for _ in range(4):
        share.failed("10.0.0.1")
    assert share.retry_after("10.0.0.1") is None
    share.failed("10.0.0.1")
    assert share.retry_after("10.0.0.1") == 61
    with pytest.raises(ValueError):                    # more failures than a slot holds
        table.limiter("big", 9, 60.0, clock)


def test_plugin_limiter_counts_across_forked_workers_and_per_process_without_them():
    """PluginAPI.rate_limiter: shared under ``--workers N`` (the table the supervisor
    made before forking), in-process without; a limit above the cap counts per process."""
    from pacsd.services.plugin_api import PluginAPI

    clock = Clock()
    api = PluginAPI.__new__(PluginAPI)           # only the limiter factory is exercised
    api._rate_limits = SharedFailureTable(slots=64)
    lim = api.rate_limiter("demo.enrol", 3, 60.0, clock=clock)
    assert isinstance(lim, SharedRateLimiter)
    fail_in_children(lim, "192.0.2.7", 3)
    assert lim.retry_after("192.0.2.7") == 61
    assert isinstance(api.rate_limiter("demo.big", SHARED_LIMIT_CAP + 1, 60.0),
                      RateLimiter)
    api._rate_limits = None
    assert isinstance(api.rate_limiter("demo.enrol", 3, 60.0), RateLimiter)
