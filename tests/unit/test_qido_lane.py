"""The light lane of the archive (services/archive.py ``Lane``, ``Archive.run_light``;
R-H1, issue 6): one thread runs short jobs in turn; results and exceptions reach the
awaiting coroutine as from the pool, a job cancelled before it starts does not run, a
long job sends new jobs to the pool, close runs what is queued, and one lane serves
several event loops."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from pacsd import errors
from pacsd.services import archive as archive_mod
from pacsd.services.archive import Lane


class _Fake:
    """Just what ``run_light`` uses of an Archive."""
    run_light = archive_mod.Archive.run_light

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor
        self.lane = Lane()
        self.executor = ThreadPoolExecutor(2, thread_name_prefix="test-pool")

    def close(self) -> None:
        self.lane.close()
        self.executor.shutdown()


def test_results_in_order_and_errors():
    lane = Lane()

    async def main():
        loop = asyncio.get_running_loop()
        futs = [lane.submit(loop, lambda i=i: (i, threading.current_thread().name), (), {})
                for i in range(200)]
        got = await asyncio.gather(*futs)
        assert [g[0] for g in got] == list(range(200))
        assert {g[1] for g in got} == {"pacsd-light"}
        with pytest.raises(errors.NotFound, match="gone"):
            await lane.submit(loop, _raise, (errors.NotFound("gone"),), {})
        assert await lane.submit(loop, lambda a, b=0: a + b, (1,), {"b": 2}) == 3
    asyncio.run(main())
    asyncio.run(main())  # a second event loop on the same lane
    lane.close()


def _raise(e):
    raise e


def test_cancelled_before_it_starts_is_not_run():
    lane = Lane()
    ran = []
    gate = threading.Event()

    async def main():
        loop = asyncio.get_running_loop()
        first = lane.submit(loop, gate.wait, (5,), {})
        second = lane.submit(loop, ran.append, (1,), {})
        second.cancel()
        gate.set()
        assert await first is True
        assert await lane.submit(loop, lambda: "after", (), {}) == "after"
    asyncio.run(main())
    lane.close()
    assert ran == []


def test_a_long_job_sends_new_jobs_to_the_pool():
    arch = _Fake()
    gate = threading.Event()

    async def main():
        slow = asyncio.ensure_future(arch.run_light(gate.wait, 5))
        await asyncio.sleep(archive_mod.LANE_OVERFLOW_S * 4)
        assert arch.lane.stuck()
        name = await arch.run_light(lambda: threading.current_thread().name)
        assert name.startswith("test-pool")
        gate.set()
        assert await slow is True
        assert not arch.lane.stuck()
        assert await arch.run_light(lambda: threading.current_thread().name) == "pacsd-light"
    asyncio.run(main())
    arch.close()


def test_close_runs_what_is_queued():
    lane = Lane()
    done = []

    async def main():
        loop = asyncio.get_running_loop()
        futs = [lane.submit(loop, lambda i=i: (time.sleep(0.001), done.append(i)), (), {})
                for i in range(20)]
        await asyncio.sleep(0)
        return futs
    asyncio.run(main())
    lane.close()
    assert done == list(range(20))
    with pytest.raises(RuntimeError):
        lane.submit(None, print, (), {})
