"""The WebSocket listener (`zserver serve --listen-ws`, PROTOCOL.md section 2d) tested with
an independent implementation of RFC 6455: the `websockets` package (and, for requests
that package would never send, raw HTTP written from the RFC)."""

from __future__ import annotations

import asyncio
import base64
import os

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from servers import LoginServer
from zserver_client import LoginClient, Message

PREAMBLE = b"ZSRV\x01\x00\x01\x00"


async def raw_upgrade(server: LoginServer, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Sends one HTTP request to the WebSocket port; returns the status line and headers."""
    assert server.ws is not None
    r, w = await asyncio.open_connection(server.ws.host, server.ws.port)
    try:
        lines = ["GET / HTTP/1.1", f"Host: {server.ws.host}:{server.ws.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        w.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await w.drain()
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
    finally:
        w.close()
    status, *rest = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in rest:
        if ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip().lower()] = v.strip()
    return status, fields


def key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade"}


@pytest.mark.parametrize("version", ["8", "14", None])
async def test_an_unsupported_version_gets_400_naming_13(login_server: LoginServer, version: str | None) -> None:
    headers = {**UPGRADE, "Sec-WebSocket-Key": key()}
    if version is not None:
        headers["Sec-WebSocket-Version"] = version
    status, fields = await raw_upgrade(login_server, headers)
    assert status.startswith("HTTP/1.1 400"), status
    assert fields.get("sec-websocket-version") == "13", fields


async def test_a_missing_key_gets_400(login_server: LoginServer) -> None:
    status, _ = await raw_upgrade(login_server, {**UPGRADE, "Sec-WebSocket-Version": "13"})
    assert status.startswith("HTTP/1.1 400"), status


async def test_a_good_upgrade_gets_101(login_server: LoginServer) -> None:
    status, fields = await raw_upgrade(
        login_server, {**UPGRADE, "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": key()}
    )
    assert status.startswith("HTTP/1.1 101"), status
    assert fields.get("upgrade", "").lower() == "websocket"


@pytest.mark.parametrize("after_preamble", [False, True])
async def test_a_client_close_is_answered_with_a_close(login_server: LoginServer, after_preamble: bool) -> None:
    assert login_server.ws is not None
    ws = await ws_connect(login_server.ws.ws_url, compression=None, open_timeout=5, close_timeout=5)
    if after_preamble:
        await ws.send(PREAMBLE)
        got = b""
        while len(got) < 8:
            got += await asyncio.wait_for(ws.recv(), 5)
        assert got[:8] == PREAMBLE
    await asyncio.wait_for(ws.close(code=1000, reason="done"), 5)
    # websockets records the Close frame it received; None would mean the server just dropped TCP.
    assert ws.protocol.close_rcvd is not None, "the server did not answer the Close with a Close"
    assert ws.protocol.close_rcvd.code == 1000
    assert ws.protocol.close_sent is not None and ws.protocol.close_rcvd_then_sent is False


async def test_a_text_message_ends_the_connection(login_server: LoginServer) -> None:
    assert login_server.ws is not None
    ws = await ws_connect(login_server.ws.ws_url, compression=None, open_timeout=5)
    await ws.send("ZSRV as text")
    with pytest.raises(ConnectionClosed):
        for _ in range(10):
            await asyncio.wait_for(ws.recv(), 5)
    await ws.close()


async def test_a_real_exchange_over_websocket(login_server: LoginServer, unique) -> None:
    """The Python client's WebSocket transport (built on `websockets`) logs in and pushes
    to a user on TCP, and gets an answer back."""
    assert login_server.ws is not None
    web, tcp = unique("web"), unique("tcp")
    a = await LoginClient.connect_ws(login_server.ws.ws_url, pin=login_server.fingerprint)
    b = await LoginClient.connect(login_server.addr.host, login_server.addr.port, pin=login_server.fingerprint)
    try:
        await a.register(web, "pw")
        await b.register(tcp, "pw")
        await a.login(web, "pw")
        await b.login(tcp, "pw")
        report = await a.push([tcp], "from a browser-like client")
        assert report.delivered == [tcp]
        assert await b.next_message(5) == Message(web, "from a browser-like client")
        await b.push([web], "and back")
        assert await a.next_message(5) == Message(tcp, "and back")
        # A 2 MiB file crosses in many WebSocket messages.
        data = os.urandom(2 * 1024 * 1024)
        assert await a.put("f.bin", data) == len(data)
        assert await a.get_bytes("f.bin") == data
    finally:
        await a.close()
        await b.close()
