"""pacsd's web app with a stub ingest, for ``python -m benchmarks.stow_only --http-only``.

Run as ``python stow_stub_server.py PORT`` with ``PYTHONPATH`` set to the pacsd tree under
test (it imports no other benchmark module, so a tree from before this file existed can be
measured too). The real app (``create_app``: routes, middlewares, auth, audit trail, the
STOW-RS handler and its executor hops) answers STOW-RS; the ingest service is replaced by
one that hops to the worker pool like the real one and does no work, so the server's CPU
per request is the HTTP side of STOW alone (issue 6).
"""
from __future__ import annotations

import sys
import tempfile

from aiohttp import web

from pacsd.config import Settings
from pacsd.model import StoreOutcome
from pacsd.web import create_app
from pacsd.web.keys import INGEST


class StubIngest:
    """The IngestService surface stow.py uses; each call is one executor hop."""

    def __init__(self, archive) -> None:
        self.archive = archive
        self.n = 0

    def _outcome(self, data) -> StoreOutcome:
        self.n += 1
        return StoreOutcome(True, "1.2.826.0.1.3680043.9.1", "1.2.826.0.1.3680043.9.1.1",
                            f"1.2.826.0.1.3680043.9.1.1.{self.n}", "1.2.840.10008.5.1.4.1.1.2")

    async def ingest_bytes(self, data, *, actor, expected_study_uid=None):
        return await self.archive.run(self._outcome, data)

    async def ingest(self, staged, *, actor, expected_study_uid=None):
        return await self.archive.run(self._outcome, staged)

    prepare_bytes = prepare = lambda self, data, *, expected_study_uid=None: \
        self.archive.run(self._outcome, data)

    async def commit(self, prepared, *, actor):
        return await self.archive.run(list, prepared)


def main() -> None:
    port = int(sys.argv[1])
    s = Settings()
    s.server.data_dir = tempfile.mkdtemp(prefix="pacsd-stowstub-")
    s.retention.enabled = False
    app = create_app(s)

    async def stub(app: web.Application) -> None:
        app[INGEST] = StubIngest(app[INGEST].archive)

    app.on_startup.append(stub)  # after the archive's cleanup_ctx opened it
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None,
                handle_signals=True)


if __name__ == "__main__":
    main()
