"""A password change over WinRM, end to end: HTTP API → Temporal workflow → worker → WS-Man peer.

No Windows host can run on Linux: the target is the protocol-level WS-Management peer
(tests/servers/wsman_peer.py), which speaks pywinrm's real wire format and interprets the shipped
templates' PowerShell. tests/executors/winrm has an opt-in test against a real host.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from executors.base import Account, LoginRequest, Target
from executors.winrm import WinrmExecutor
from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, current_secret, policy
from tests.servers.wsman_peer import WsmanPeer, running_peer

OLD = "Old-pass w0rd;$#'‘\"\\x`"


@pytest.fixture(scope="module")
def wsman() -> Iterator[WsmanPeer]:
    with running_peer() as peer:
        yield peer


async def test_change_over_winrm_through_the_api(stack: Stack, wsman: WsmanPeer) -> None:
    user = f"user-{secrets.token_hex(3)}"
    wsman.users[user] = OLD
    device = await stack.post(
        "/v1/devices",
        {
            "name": f"win-{secrets.token_hex(4)}",
            "address": "127.0.0.1",
            "port": wsman.port,
            "executor": "winrm",
            "options": wsman.client_options(),
        },
    )
    pol = await policy(stack)
    cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
    assert cred["change_template"] == "winrm/local-account-self"

    op = await stack.run_operation(cred["id"])

    assert op["status"] == "succeeded", op
    new = current_secret(stack, cred["id"])
    assert new != OLD
    assert wsman.users[user] == new  # the peer holds exactly the vault's new secret
    steps = [(a["step"], a["outcome"]) for a in op["attempts"]]
    assert steps == [("change", "succeeded"), ("verify", "succeeded")]
    transcript = op["attempts"][0]["transcript"]
    assert "ChangePassword('***', '***')" in transcript
    assert new not in transcript and OLD not in transcript
    # The new secret logs in over WinRM, the old one is refused.
    winrm_target = Target("win", "127.0.0.1", wsman.port, options=wsman.client_options())
    executor = WinrmExecutor()
    assert (await executor.check_login(LoginRequest(winrm_target, Account(user, new)))).ok
    assert not (await executor.check_login(LoginRequest(winrm_target, Account(user, OLD)))).ok
