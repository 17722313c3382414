"""Fixtures for the DIMSE tests: a real ``pacsd serve`` process with DIMSE on a free
loopback port and a DCMTK storescp as its C-MOVE destination (see dimse_helpers.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from dimse_helpers import PACS_AET, PEER_AET, Peer
from pacsd_server import Server
from pynetdicom import _config as pynetdicom_config


@pytest.fixture(scope="session")
def peer(tmp_path_factory) -> Iterator[Peer]:
    p = Peer(tmp_path_factory.mktemp("peer") / "in")
    yield p
    p.stop()


@pytest.fixture(scope="session")
def pacs(tmp_path_factory, peer) -> Iterator[Server]:
    """pacsd with DIMSE on a free port; the storescp peer is its only C-MOVE destination.
    Shared by the store and retrieve tests (every test uses its own UIDs)."""
    srv = Server(str(tmp_path_factory.mktemp("pacsd")), "--ae-title", PACS_AET,
                 "--peer", f"{PEER_AET}=127.0.0.1:{peer.port}", dicom_port=None)
    yield srv
    srv.stop()


@pytest.fixture
def raw_send():
    """pynetdicom sends a file's data set bytes unchanged (its chunked file path), so a
    test knows exactly which bytes went over the wire."""
    old = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    yield
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = old


@pytest.fixture
def workdir(tmp_path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d
