"""Helpers for the store-and-forward tests: a real pynetdicom Storage SCP as the DIMSE
destination (its answer can be changed while it runs, and it can be stopped and started
again on the same port), Part 10 splitting, polling with a deadline."""
from __future__ import annotations

import asyncio
import struct
import threading

from pacsd_server import free_port
from pynetdicom import AE, StoragePresentationContexts, evt

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}


def dataset_bytes(part10: bytes) -> bytes:
    """The data set bytes after the File Meta Information of a Part 10 object."""
    assert part10[128:132] == b"DICM"
    end = 132
    while part10[end:end + 2] == b"\x02\x00":
        if part10[end + 4:end + 6] in _LONG_VRS:
            end += 12 + struct.unpack("<L", part10[end + 8:end + 12])[0]
        else:
            end += 8 + struct.unpack("<H", part10[end + 6:end + 8])[0]
    return part10[end:]


class StorageSCP:
    """A real C-STORE SCP (pynetdicom) on a fixed loopback port."""

    def __init__(self, ae_title: str = "CITY") -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.status = 0x0000
        self.received: dict[str, bytes] = {}
        self.calls: list[tuple[str, str, int]] = []  # (calling AE, SOP UID, status)
        self._lock = threading.Lock()
        self._server = None

    def _on_store(self, event):
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            status = self.status
            self.calls.append((event.assoc.requestor.ae_title.strip(), uid, status))
            if status == 0:
                self.received[uid] = event.request.DataSet.getvalue()
        return status

    def start(self) -> "StorageSCP":
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = StoragePresentationContexts
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


async def wait_for(predicate, timeout_s: float = 30.0) -> None:
    """Poll until ``predicate()`` holds (a deadline, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < end, "condition not reached before the deadline"
        await asyncio.sleep(0.02)
