"""A syslog receiver over TCP or TLS with octet-counting framing (RFC 6587, RFC 5425), on a
loopback port and the test's event loop, that breaks its connections where the test says.

rsyslog cannot be told to drop a connection at a given message; this can. ``drop_after[n]`` is
how many messages connection n keeps: on the next one it aborts the connection (a reset), and
that message and whatever else had arrived with it are lost unread, as with a receiver that
crashed mid-stream. Connections past the script keep everything.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sequence

from tests.servers.tls import TlsFiles


class SyslogReceiver:
    def __init__(self, drop_after: Sequence[int], tls: TlsFiles | None = None) -> None:
        self.connections: list[list[str]] = []  # the messages each connection kept, in order
        self._drop_after = list(drop_after)
        self._tls = tls
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"{'tls' if self._tls else 'tcp'}://127.0.0.1:{port}"

    async def start(self) -> None:
        context = None
        if self._tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self._tls.cert, self._tls.key)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def until(self, done: Callable[[], bool], within: float) -> None:
        """Wait until ``done()`` holds of what was received (checked on every arrival)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(done), within)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        kept: list[str] = []
        self.connections.append(kept)
        limit = self._drop_after[len(self.connections) - 1 : len(self.connections)]
        buffer = b""
        try:
            while chunk := await reader.read(65536):
                buffer += chunk
                while (frame := _frame(buffer)) is not None:
                    message, buffer = frame
                    if limit and len(kept) == limit[0]:
                        writer.transport.abort()
                        return
                    kept.append(message.decode())
                async with self._changed:
                    self._changed.notify_all()
        except (ConnectionError, ssl.SSLError):
            pass  # the sender gave up on this connection: its next one carries on
        finally:
            writer.close()
            async with self._changed:
                self._changed.notify_all()


def _frame(buffer: bytes) -> tuple[bytes, bytes] | None:
    """The first complete ``MSG-LEN SP SYSLOG-MSG`` in ``buffer`` and what follows it."""
    space = buffer.find(b" ")
    if space < 0:
        return None
    length = int(buffer[:space])
    end = space + 1 + length
    if len(buffer) < end:
        return None
    return buffer[space + 1 : end], buffer[end:]
