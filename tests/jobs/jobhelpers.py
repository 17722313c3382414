"""Helpers of the job queue and forwarding tests (conftest.py holds the fixtures)."""
from __future__ import annotations

import sqlalchemy as sa

from pacsd.index.forward_schema import FORWARD_TABLES
from pacsd.index.jobs_schema import jobs


class FakeClock:
    """POSIX seconds that only move when a test says so (no sleeps, no timing asserts)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def clear_queue_tables(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for t in (jobs, *FORWARD_TABLES):
            conn.execute(sa.delete(t))
    engine.dispose()
