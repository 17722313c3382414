"""Worker processes share one listening socket and leave a new connection to the worker
holding fewer connections (pacsd/web/balance.py, R-H1 issue 6: SO_REUSEPORT's hash split
long keep-alive connections 6/2 as often as 4/4). Two sites in one event loop stand in
for two workers here: each accepts from its own duplicate of the listening socket."""
from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web

from pacsd.web.balance import GONE, BalancedSite, ConnectionTable

pytestmark = pytest.mark.asyncio


async def _site(sock: socket.socket, table: ConnectionTable, index: int):
    async def who(_request):
        return web.Response(text=str(index))
    app = web.Application()
    app.router.add_get("/", who)
    runner = web.AppRunner(app)
    await runner.setup()
    site = BalancedSite(runner, sock, table, index)
    await site.start()
    return runner, site


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


async def test_r_h1_new_connection_goes_to_the_worker_with_fewer():
    table = ConnectionTable(2)
    lsock = _listener()
    port = lsock.getsockname()[1]
    runners = []
    try:
        for i, s in enumerate((lsock, lsock.dup())):
            runners.append((await _site(s, table, i))[0])
        seen = []
        sessions = []
        for _ in range(4):   # four keep-alive connections, opened one after the other
            conn = aiohttp.TCPConnector(limit=1)
            session = aiohttp.ClientSession(connector=conn)
            sessions.append(session)
            async with session.get(f"http://127.0.0.1:{port}/") as r:
                seen.append(await r.text())
        assert sorted(seen) == ["0", "0", "1", "1"]
        assert table.get(0) + table.get(1) >= 3
        for session in sessions:
            await session.close()
    finally:
        for runner in runners:
            await runner.cleanup()
        lsock.close()
    assert table.get(0) == table.get(1) == GONE   # stopped sites never count as least


async def test_r_h1_lone_worker_accepts_after_stepping_back():
    """The other worker holds fewer connections but does not accept (busy, gone): the
    connection is taken after DEFER_S, not left waiting."""
    table = ConnectionTable(2)
    lsock = _listener()
    port = lsock.getsockname()[1]
    runner, _ = await _site(lsock, table, 0)
    try:
        table.set(1, 0)          # a worker that never accepts
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        other = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        async with session.get(f"http://127.0.0.1:{port}/") as r:
            assert await r.text() == "0"
        # now this worker holds one connection, the other none: it steps back once
        async with other.get(f"http://127.0.0.1:{port}/") as r:
            assert await asyncio.wait_for(r.text(), 10) == "0"
        await session.close()
        await other.close()
    finally:
        await runner.cleanup()
        lsock.close()


async def test_r_h1_balanced_site_serves_tls(tmp_path):
    """MLPS 3: with a TLS context the balanced accept loop hands the connection to
    asyncio's TLS handshake, as aiohttp's own sites do."""
    import ssl
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
    from pki import make_pki   # the test CA of tests/security/test_tls.py

    pki = make_pki(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki["cert"], pki["key"])
    client_ctx = ssl.create_default_context(cafile=pki["ca"])
    table = ConnectionTable(1)
    lsock = _listener()
    port = lsock.getsockname()[1]

    async def who(_request):
        return web.Response(text="tls")
    app = web.Application()
    app.router.add_get("/", who)
    runner = web.AppRunner(app)
    await runner.setup()
    site = BalancedSite(runner, lsock, table, 0, ssl_context=server_ctx)
    await site.start()
    try:
        assert site.name.startswith("https://")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{port}/", ssl=client_ctx) as r:
                assert await r.text() == "tls"
    finally:
        await runner.cleanup()
        lsock.close()
