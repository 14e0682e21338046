"""Which certificate a TLS server serves: how a publish checks that the reload took effect."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

# A reload is asynchronous (nginx answers ``-s reload`` before its new workers serve): the
# check asks again until the new certificate is served or this long has passed.
SERVED_DEADLINE = 20.0
_RETRY_EVERY = 0.2
STABLE_ANSWERS = 3


async def served_certificate(host: str, port: int, server_name: str, within: float) -> bytes:
    """The DER of the leaf certificate served at host:port for ``server_name`` (SNI). Nothing
    is verified here: the caller compares the bytes with the certificate it installed."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=server_name
        )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der: bytes | None = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        return der or b""
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        del reader


async def wait_until_served(
    host: str, port: int, server_name: str, expected: bytes, deadline: float = SERVED_DEADLINE
) -> tuple[bool, str]:
    """Whether ``expected`` (DER) is served within ``deadline`` seconds, and what was seen last.
    It must be served on STABLE_ANSWERS connections in a row: while a reload hands over, old
    and new server processes both accept connections for a moment."""
    until = time.monotonic() + deadline
    seen = "nothing yet"
    in_a_row = 0
    while True:
        try:
            served = await served_certificate(host, port, server_name, within=5.0)
            if served == expected:
                in_a_row += 1
                if in_a_row >= STABLE_ANSWERS:
                    return True, "served"
                continue
            in_a_row = 0
            seen = "another certificate"
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            in_a_row = 0
            seen = f"no TLS answer ({type(exc).__name__}: {exc})"
        if time.monotonic() >= until:
            return False, seen
        await asyncio.sleep(_RETRY_EVERY)  # polling the server for a condition, with a deadline
