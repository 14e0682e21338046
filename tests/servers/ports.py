"""A free loopback port for a server a test starts."""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Ports are picked below the kernel's ephemeral range: a port handed out there could be taken,
# before the server binds it, as the local port of any outgoing connection (a test's Temporal
# dev server once failed to bind its UI port that way). Below it, only another server picking
# the same port at random could, and the bind check makes that rare.
LOWEST = 10_000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    highest = _ephemeral_start() - 1
    for _ in range(200):
        port = random.randint(LOWEST, highest)
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port between {LOWEST} and {highest}")
