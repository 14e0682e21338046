"""The SIEM echo: each audit event, in order, to every destination in KEYTURN_SIEM_DESTINATIONS.

A worker-side loop per destination reads the outbox (store/siem_outbox.py) and sends. Nothing an
operation does waits for it: the events are already committed when it reads them, so a receiver
that is down delays the echo, never an operation.

- UDP: best effort, as syslog over UDP is; the cursor moves as soon as a datagram is sent.
- TCP and TLS (octet-counting framing, RFC 6587 and RFC 5425): at least once, in order. Syslog
  has no acknowledgement, so an event counts as delivered only once the connection has stayed up
  for ``CONFIRM_AFTER`` after it was written; when the connection breaks, sending starts again
  from the last delivered event, so only the events of that last moment may arrive twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from sqlalchemy.engine import Engine

from governance.siem_formats import EventView, Format, render
from keyturn.settings import SiemDestination
from store import siem_outbox

log = logging.getLogger("keyturn.siem")

BATCH = 200
IDLE_POLL = 0.2  # seconds between looks at the outbox when it is empty
CONFIRM_AFTER = 1.0  # seconds a TCP/TLS connection must stay up after a write to count it
RECONNECT_MIN, RECONNECT_MAX = 0.2, 5.0
CONNECT_TIMEOUT = 5.0
LEASE = timedelta(seconds=30)
RENEW_EVERY = 10.0


@dataclass(frozen=True)
class Endpoint:
    transport: str  # udp | tcp | tls
    host: str
    port: int
    fmt: Format
    ca_file: str | None

    @property
    def key(self) -> str:
        """The destination's cursor: one per URL and format."""
        return f"{self.transport}://{self.host}:{self.port}|{self.fmt}"


def endpoint(destination: SiemDestination) -> Endpoint:
    parts = urlsplit(destination.url)
    assert parts.hostname and parts.port  # checked when the settings were read
    ca = str(destination.ca_file) if destination.ca_file else None
    return Endpoint(parts.scheme, parts.hostname, parts.port, destination.format, ca)


def view(entry: siem_outbox.Pending) -> EventView:
    event = entry.event
    detail = event.detail or {}
    reason = detail.get("resolution") or detail.get("reason")
    return EventView(
        audit_id=event.id or 0,
        at=event.at,
        event=event.event,
        principal=event.principal,
        outcome=event.outcome,
        operation_id=event.operation_id,
        credential_id=event.credential_id,
        device_id=event.device_id,
        kind=entry.operation.kind if entry.operation else detail.get("kind"),
        trigger=entry.operation.trigger if entry.operation else None,
        username=entry.credential.username if entry.credential else None,
        device_name=entry.device.name if entry.device else None,
        address=entry.device.address if entry.device else None,
        reason=str(reason) if reason is not None else None,
    )


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 §3.4.1 / RFC 5425 §4.3: MSG-LEN SP SYSLOG-MSG."""
    return b"%d " % len(message) + message


class SiemEcho:
    """Runs one delivery loop per destination until ``stop`` is set."""

    def __init__(self, engine: Engine, destinations: list[SiemDestination]) -> None:
        self._engine = engine
        self._endpoints = [endpoint(d) for d in destinations]
        self._owner = secrets.token_hex(8)

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._deliver(e, stop) for e in self._endpoints))

    async def _deliver(self, target: Endpoint, stop: asyncio.Event) -> None:
        sender = _Sender(self._engine, target, self._owner)
        try:
            while not stop.is_set():
                try:
                    idle = await sender.step()
                except Exception:  # a bug here must not end the echo for good
                    log.exception("SIEM echo to %s failed; starting again", target.key)
                    sender.disconnect()
                    idle = True
                if idle:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), sender.pause)
        finally:
            sender.disconnect()


class _Sender:
    """One destination's state: its connection and what was written but not yet counted."""

    def __init__(self, engine: Engine, target: Endpoint, owner: str) -> None:
        self._engine = engine
        self._target = target
        self._owner = owner
        self._delivered: int | None = None  # the cursor, once the lease is held
        self._sent = 0  # the last event written to the current connection
        self._unconfirmed: deque[tuple[float, int]] = deque()  # (written at, audit id)
        self._renewed = 0.0
        self._backoff = RECONNECT_MIN
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self.pause = IDLE_POLL

    async def step(self) -> bool:
        """Send what is waiting; True when there was nothing to do (or it must wait)."""
        loop = asyncio.get_running_loop()
        if self._delivered is None or loop.time() - self._renewed > RENEW_EVERY:
            cursor = await asyncio.to_thread(
                siem_outbox.claim, self._engine, self._target.key, self._owner, LEASE
            )
            if cursor is None:  # another worker delivers to this destination
                self.disconnect()
                self._delivered, self.pause = None, RENEW_EVERY
                return True
            if self._delivered is None:
                self._delivered = self._sent = cursor
            self._renewed = loop.time()
        await self._confirm()
        batch = await asyncio.to_thread(siem_outbox.pending, self._engine, self._sent, BATCH)
        if not batch:
            self.pause = IDLE_POLL
            return True
        try:
            await self._connect()
            await self._write([render(view(e), self._target.fmt) for e in batch])
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            log.warning("SIEM destination %s unreachable: %s", self._target.key, exc)
            self.disconnect()
            self.pause, self._backoff = self._backoff, min(self._backoff * 2, RECONNECT_MAX)
            return True
        self._backoff = RECONNECT_MIN
        now = loop.time()
        for entry in batch:
            self._unconfirmed.append((now, entry.event.id or 0))
        self._sent = batch[-1].event.id or self._sent
        if self._target.transport == "udp":
            await self._confirm()
        return False

    async def _confirm(self) -> None:
        """Count as delivered what the connection has carried for long enough."""
        if not self._unconfirmed:
            return
        if self._target.transport != "udp" and not self._alive():
            self.disconnect()
            return
        horizon = asyncio.get_running_loop().time() - CONFIRM_AFTER
        last = None
        while self._unconfirmed and (
            self._target.transport == "udp" or self._unconfirmed[0][0] <= horizon
        ):
            last = self._unconfirmed.popleft()[1]
        if last is not None:
            moved = await asyncio.to_thread(
                siem_outbox.advance, self._engine, self._target.key, self._owner, last
            )
            if moved:
                self._delivered = last
            else:  # the lease went to another worker: it starts from the cursor
                self.disconnect()
                self._delivered = None

    def _alive(self) -> bool:
        """A syslog receiver never writes: end of stream or a closing transport means gone."""
        return (
            self._writer is not None
            and self._reader is not None
            and not self._reader.at_eof()
            and not self._writer.is_closing()
        )

    async def _connect(self) -> None:
        target = self._target
        if target.transport == "udp":
            if self._udp is None:
                loop = asyncio.get_running_loop()
                self._udp, _ = await loop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, remote_addr=(target.host, target.port)
                )
            return
        if self._writer is not None:
            return
        context = None
        if target.transport == "tls":
            context = ssl.create_default_context(cafile=target.ca_file)
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port, ssl=context),
            CONNECT_TIMEOUT,
        )

    async def _write(self, messages: list[bytes]) -> None:
        if self._udp is not None:
            for message in messages:
                self._udp.sendto(message)
            return
        assert self._writer is not None
        if not self._alive():
            raise ConnectionResetError("the receiver closed the connection")
        self._writer.write(b"".join(octet_counted(m) for m in messages))
        await asyncio.wait_for(self._writer.drain(), CONNECT_TIMEOUT)

    def disconnect(self) -> None:
        """Drop the connection; what it carried without confirmation is sent again: the next
        batch starts after the last delivered event, not after the last one written."""
        if self._writer is not None:
            self._writer.close()
        if self._udp is not None:
            self._udp.close()
        self._writer = self._reader = self._udp = None
        self._unconfirmed.clear()
        if self._delivered is not None:
            self._sent = self._delivered
