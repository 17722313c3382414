"""A real ``pacsd serve`` process on a free loopback port, for clients that speak HTTP
themselves (dicomweb-client, curl, DCMTK)."""
from __future__ import annotations

import pytest
from pacsd_server import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(str(tmp_path_factory.mktemp("pacsd")))
    yield srv
    srv.stop()
