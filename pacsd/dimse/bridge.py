"""Call the async service layer from pynetdicom's threads.

pynetdicom runs each association in its own thread and calls handlers synchronously.
The services (``pacsd.services``) are coroutines that push blocking work onto the
archive's one bounded worker pool. Rather than growing a second, synchronous service API,
the DIMSE adapter submits each service coroutine to the aiohttp event loop the archive
was opened on and blocks its own association thread until the result is there:

* one ingest path and one retrieve path (ARCHITECTURE "The two paths"), not two copies;
* DIMSE and HTTP share one worker pool, so ``worker_threads`` bounds the blocking work
  of both (a flood of C-STOREs queues behind the same pool as STOW-RS, instead of
  doubling the number of threads touching the index);
* waiting costs only the association thread pynetdicom already dedicates to the peer.

The loop must outlive the DIMSE server: ``pacsd.server`` stops DIMSE (and waits for its
associations) before it cleans up the web application and closes the archive.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, AsyncIterator, Awaitable, Coroutine, Iterator, TypeVar

T = TypeVar("T")


async def _await(aw: Awaitable[T]) -> T:
    return await aw


class Bridge:
    """Runs coroutines on ``loop`` from any other thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop; block this thread until it finishes; re-raise."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def submit(self, coro: Coroutine[Any, Any, T]) -> "concurrent.futures.Future[T]":
        """Start ``coro`` on the loop without waiting (e.g. reading ahead)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        """Drive an async iterator one item at a time (e.g. object chunks)."""
        try:
            while True:
                try:
                    item = self.call(_await(agen.__anext__()))
                except StopAsyncIteration:
                    return
                yield item
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and not self.loop.is_closed():
                self.call(_await(aclose()))
