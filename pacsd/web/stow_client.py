"""STOW-RS client: the ``dicomweb`` sender of store-and-forward (R-B2, R-B3).

Instances are sent as stored (bit-exact, R-A5), ``instances_per_request`` per request, in
a ``multipart/related; type="application/dicom"`` body that is *streamed* from the one
retrieve path (``RetrieveService.object_chunks``: sha256-checked, never a whole study in
memory; chunked transfer encoding). The response decides (PS3.18 §10.5.3):

* 200 — every instance stored; 202 / 409 — the ReferencedSOPSequence items are stored, the
  FailedSOPSequence items are not: failure reason A700 (out of resources) and 0110
  (processing failure) are retried, any other refusal is permanent;
* 408, 429, 5xx, connection errors, timeouts — transient (retried with backoff);
* other 4xx (bad token 401, 403, 404, 413, 415 ...) — permanent (dead letter at once).

The bearer token goes only into the Authorization header, never into a log line.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from ..config import ForwardDestination
from ..model import InstanceRow
from ..services.forward import SendError
from ..services.retrieve import RetrieveService

log = logging.getLogger(__name__)

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
#: Failure reasons worth retrying: out of resources, processing failure.
TRANSIENT_REASONS = frozenset({0xA700, 0x0110})


def _items(body: dict, tag: str) -> list[dict]:
    return list((body.get(tag) or {}).get("Value") or [])


def _first(item: dict, tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


class StowSender:
    """``Sender`` for ``type = "dicomweb"`` destinations."""

    async def send(self, destination: ForwardDestination, rows: list[InstanceRow],
                   retrieve: RetrieveService,
                   on_sent: Callable[[list[InstanceRow]], Any]) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=destination.timeout_s,
                                        sock_read=destination.timeout_s)
        step = destination.instances_per_request
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for start in range(0, len(rows), step):
                batch = rows[start:start + step]
                try:
                    stored = await self._post(session, destination, batch, retrieve)
                except _Partial as exc:
                    await on_sent(exc.stored)
                    raise
                await on_sent(stored)

    async def _post(self, session: aiohttp.ClientSession, dest: ForwardDestination,
                    batch: list[InstanceRow], retrieve: RetrieveService
                    ) -> list[InstanceRow]:
        boundary = "pacsd-" + secrets.token_hex(12)

        async def body():
            for row in batch:
                yield (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode()
                async for chunk in retrieve.object_chunks(row, "*"):
                    yield chunk
                yield b"\r\n"
            yield f"--{boundary}--\r\n".encode()

        headers = {"Content-Type": f'multipart/related; type="application/dicom"; '
                                   f"boundary={boundary}",
                   "Accept": "application/dicom+json"}
        if dest.token:
            headers["Authorization"] = f"Bearer {dest.token}"
        try:
            async with session.post(dest.url, data=body(), headers=headers) as resp:
                status = resp.status
                raw = await resp.read()
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            text = str(exc).strip()
            raise SendError(f"{type(exc).__name__}{': ' + text[:200] if text else ''}"
                            ) from None
        return self._result(status, raw, batch)

    def _result(self, status: int, raw: bytes, batch: list[InstanceRow]
                ) -> list[InstanceRow]:
        if status == 200:
            return batch
        if status in (202, 409):
            try:
                body = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                body = {}
            by_uid = {r.sop_instance_uid: r for r in batch}
            stored = [by_uid[u] for u in (
                _first(i, REFERENCED_SOP_INSTANCE_UID)
                for i in _items(body, REFERENCED_SOP_SEQUENCE)) if u in by_uid]
            reasons = sorted({_first(i, FAILURE_REASON) or 0
                              for i in _items(body, FAILED_SOP_SEQUENCE)})
            if len(stored) == len(batch):
                return stored
            permanent = any(r not in TRANSIENT_REASONS for r in reasons)
            codes = ", ".join(f"{r:04X}" for r in reasons) or "none given"
            raise _Partial(f"destination refused {len(batch) - len(stored)} of "
                           f"{len(batch)} instances (failure reasons {codes})",
                           stored, permanent=permanent)
        transient = status in (408, 429) or status >= 500
        raise SendError(f"HTTP {status} from the destination", permanent=not transient)


class _Partial(SendError):
    """Some instances of the batch were stored: they are confirmed before failing."""

    def __init__(self, reason: str, stored: list[InstanceRow], *, permanent: bool) -> None:
        super().__init__(reason, permanent=permanent)
        self.stored = stored
