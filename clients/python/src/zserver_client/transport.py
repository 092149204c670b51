"""Byte-stream transports: TCP (asyncio streams) and WebSocket (the ``websockets``
package, PROTOCOL.md section 2d). A transport moves bytes; message boundaries mean nothing.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Protocol

from .errors import ClosedError, ProtocolError, ZserverError

__all__ = ["Transport", "TcpTransport", "WebSocketTransport", "open_tcp", "open_websocket"]

#: Largest piece read from a socket at once.
READ_SIZE = 256 * 1024
#: Largest WebSocket message this client sends.
WS_MESSAGE = 256 * 1024


class Transport(Protocol):
    """What the client needs of a connection."""

    async def read(self) -> bytes:
        """The next bytes; ``b""`` once the peer has closed."""
        ...

    async def write(self, data: bytes) -> None:
        """Writes all of ``data`` (waiting while the socket's buffer is full)."""
        ...

    async def close(self) -> None:
        """Closes the connection (no half-close)."""
        ...

    @property
    def peer(self) -> str:
        """Where it goes, for messages."""
        ...


class TcpTransport:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        self._reader = reader
        self._writer = writer
        self._peer = peer

    @property
    def peer(self) -> str:
        return self._peer

    async def read(self) -> bytes:
        try:
            return await self._reader.read(READ_SIZE)
        except (ConnectionError, OSError) as e:
            raise ClosedError(f"reading from {self._peer} failed: {e}") from e

    async def write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise ClosedError(f"the connection to {self._peer} is closed")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError) as e:
            raise ClosedError(f"writing to {self._peer} failed: {e}") from e

    async def close(self) -> None:
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 2)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass


async def open_tcp(host: str, port: int) -> TcpTransport:
    """Opens a TCP connection with Nagle's algorithm off."""
    peer = f"{host}:{port}"
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=READ_SIZE * 4)
    except OSError as e:
        raise ClosedError(f"could not connect to {peer}: {e.strerror or e}") from e
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return TcpTransport(reader, writer, peer)


class WebSocketTransport:
    """The byte stream in binary WebSocket messages; a text message is a protocol error."""

    def __init__(self, ws: Any, url: str) -> None:
        self._ws = ws
        self._peer = url

    @property
    def peer(self) -> str:
        return self._peer

    async def read(self) -> bytes:
        from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK

        while True:
            try:
                message = await self._ws.recv()
            except ConnectionClosedOK:
                return b""
            except ConnectionClosedError as e:
                if e.rcvd is None and e.sent is None:
                    # The TCP connection ended without a close frame: an end like TCP's.
                    return b""
                raise ClosedError(f"the WebSocket to {self._peer} closed: {e}") from e
            if isinstance(message, str):
                raise ProtocolError("the server sent a WebSocket text message")
            if message:
                return bytes(message)

    async def write(self, data: bytes) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            view = memoryview(data)
            for at in range(0, len(view), WS_MESSAGE):
                await self._ws.send(view[at : at + WS_MESSAGE].tobytes())
        except ConnectionClosed as e:
            raise ClosedError(f"the WebSocket to {self._peer} is closed: {e}") from e

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._ws.close(), 2)
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


async def open_websocket(url: str, max_message: int, open_timeout: float) -> WebSocketTransport:
    """Opens ``ws://host:port/`` (no subprotocol, no compression, no Origin)."""
    try:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake, InvalidURI
    except ImportError as e:  # pragma: no cover - websockets is a dependency
        raise ZserverError("WebSocket needs the `websockets` package") from e
    try:
        ws = await connect(
            url,
            compression=None,
            max_size=max_message,
            open_timeout=open_timeout,
            ping_interval=None,
            close_timeout=2,
        )
    except InvalidURI as e:
        raise ValueError(f"not a WebSocket URL: {url}") from e
    except InvalidHandshake as e:
        raise ClosedError(f"the WebSocket upgrade at {url} failed: {e}") from e
    except (OSError, asyncio.TimeoutError) as e:
        raise ClosedError(f"could not connect to {url}: {e}") from e
    return WebSocketTransport(ws, url)
