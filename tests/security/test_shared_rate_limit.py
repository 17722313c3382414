"""SEC-8 with worker processes (R-H1): the failed-login limiter of ``pacsd serve
--workers N`` lives in memory the forked workers share (security.SharedRateLimiter)."""
from __future__ import annotations

import os

from pacsd.services.security import RateLimiter, SharedRateLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_failures_in_forked_processes_count_against_one_limit():
    clock = Clock()
    lim = SharedRateLimiter(3, 60.0, clock, slots=64)
    lim.failed("10.0.0.1")
    for _ in range(2):  # two more failures, each in another process
        pid = os.fork()
        if pid == 0:
            lim.failed("10.0.0.1")
            os._exit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
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
