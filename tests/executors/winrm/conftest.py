"""Fixtures for the winrm executor tests: the protocol-level WS-Man peer.

The peer lives in tests/servers/wsman_peer.py.

No Windows host can run on a Linux test machine, so these tests run against a stand-in that speaks
the real WS-Management wire format pywinrm uses; see the peer's docstring for what it emulates.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.wsman_peer import WsmanPeer, running_peer


@pytest.fixture(scope="session")
def wsman_server() -> Iterator[WsmanPeer]:
    with running_peer() as server:
        yield server


@pytest.fixture
def wsman(wsman_server: WsmanPeer) -> WsmanPeer:
    wsman_server.reset()
    return wsman_server
