"""A free loopback port for a server a test starts."""

from __future__ import annotations

import socket


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    # The kernel picks; there is a small race until the server binds it, acceptable on a test
    # machine (a failed bind shows clearly in the server's log).
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
