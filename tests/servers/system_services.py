"""The ports of the services a machine may run for itself: the suite never connects there.

Every server a test needs is a throwaway one the fixtures start on a loopback port of its own
(tests/servers/), so ``make test`` passes on a machine where nothing runs and never depends on a
service someone happened to leave running. Two checks hold the suite to it:

- ``refuse_connections`` (installed by tests/conftest.py) fails any connect of this process to one
  of these ports on a loopback address, whatever library opens the socket (an audit hook on
  ``socket.connect``). libpq connects in C and child processes are others, so it cannot see all;
- tests/test_own_servers.py reads the tests for such addresses (``findings``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable

SYSTEM_PORTS = {
    5432: "PostgreSQL",
    3306: "MariaDB",
    5672: "RabbitMQ (AMQP)",
    15672: "RabbitMQ (management API)",
}
_PORTS = "|".join(str(port) for port in SYSTEM_PORTS)
_LOOPBACK = r"(?:127\.0\.0\.1|localhost|\[::1\])"
# Where the tests could name one: a loopback host followed by one of the ports ("127.0.0.1:5432",
# '"127.0.0.1", 15672'), or a server URL on loopback without a port (its client's default port).
_PATTERNS = (
    re.compile(rf"{_LOOPBACK}[\"']?\s*[:,]\s*(?:{_PORTS})\b"),
    re.compile(
        rf"\b(?:postgres(?:ql)?|mysql|mariadb|amqps?)(?:\+\w+)?://(?:[^@/\s\"']*@)?{_LOOPBACK}"
        r"(?=[/\"'\s?]|$)",
        re.MULTILINE,
    ),
)


def refused(address: object) -> str | None:
    """Why a connect to ``address`` (a socket address) is refused, or None."""
    if not (isinstance(address, tuple) and len(address) >= 2):
        return None
    host, port = address[0], address[1]
    if port not in SYSTEM_PORTS or not isinstance(host, str):
        return None
    if not (host in ("localhost", "::1") or host.startswith("127.")):
        return None
    return (
        f"a test connected to {host}:{port}, where the machine's own {SYSTEM_PORTS[port]} may "
        "listen; use the throwaway server its fixture starts (tests/servers/)"
    )


_exempt: set[tuple[str, int]] = set()
_installed = False


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and address[:2] in _exempt:
            return
        reason = refused(address)
        if reason is not None:
            raise RuntimeError(reason)


def refuse_connections(exempt: Iterable[tuple[str, int]] = ()) -> None:
    """From now on, fail every connect of this process to a system service's loopback port,
    but those in ``exempt`` (servers a developer named on purpose, e.g. by KEYTURN_TEST_*)."""
    global _installed
    _exempt.update(exempt)
    if not _installed:
        sys.addaudithook(_audit)  # audit hooks cannot be removed: install once
        _installed = True


def findings(text: str) -> list[str]:
    """The places in ``text`` (Python source) that name a system service's loopback address."""
    return [match.group(0) for pattern in _PATTERNS for match in pattern.finditer(text)]
