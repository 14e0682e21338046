"""Targets are protected: a lockout budget on failed logins, a concurrency cap per device."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, policy, ssh_device
from tests.servers.sshd import Sshd, Users

OLD = "Pr0tect-old-pass"


def _failed_logins(sshd: Sshd, user: str) -> int:
    """What the target itself counted: sshd's log lines for refused passwords."""
    return sshd.log_path.read_text(errors="replace").count(f"Failed password for {user} ")


async def test_the_lockout_budget_is_never_exceeded(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack, max_attempts=1, lockout_budget=2, lockout_window_seconds=600)
    cred = await credential(stack, device["id"], user, "drifted", policy_id=pol["id"])

    results = [await stack.run_operation(cred["id"], "verify") for _ in range(3)]
    results.append(await stack.run_operation(cred["id"], "change"))

    assert [r["error_type"] for r in results] == [
        "OutOfSync",
        "OutOfSync",
        "LockoutBudgetSpent",
        "LockoutBudgetSpent",
    ]
    assert "lockout budget spent" in results[-1]["error"]
    # The change was stopped before any login: nothing was sent, so nothing is probed either.
    assert [a["step"] for a in results[-1]["attempts"]] == ["change"]
    assert results[-1]["resolution"] == "nothing was sent to the target"
    assert _failed_logins(sshd, user) == 2  # the budget, and not one more
    assert await ssh_users.password_works(user, OLD)  # the account is not locked by Keyturn


async def test_a_spent_budget_waits_for_the_window(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(
        stack,
        max_attempts=3,
        retry_interval_seconds=0.2,
        lockout_budget=1,
        lockout_window_seconds=3,
    )
    cred = await credential(stack, device["id"], user, "drifted", policy_id=pol["id"])
    assert (await stack.run_operation(cred["id"], "verify"))["error_type"] == "OutOfSync"

    waited = await stack.run_operation(cred["id"], "verify")

    outcomes = [a["outcome"] for a in waited["attempts"]]
    assert outcomes[0] == "LockoutBudgetSpent" and outcomes[-1] == "succeeded", outcomes
    assert waited["error_type"] == "OutOfSync"  # it did probe, once the window allowed it
    first, last = waited["attempts"][0], waited["attempts"][-1]
    assert last["started_at"] > first["finished_at"]
    assert _failed_logins(sshd, user) == 2  # one per window


@dataclass
class ConnectionCounter:
    active: int = 0
    most: int = 0
    total: int = 0


@contextlib.asynccontextmanager
async def counting_proxy(target_port: int) -> AsyncIterator[tuple[int, ConnectionCounter]]:
    """A loopback TCP proxy in front of sshd that counts concurrent connections."""
    counter = ConnectionCounter()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        counter.active += 1
        counter.total += 1
        counter.most = max(counter.most, counter.active)
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
            await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))
        finally:
            counter.active -= 1

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, counter
    finally:
        server.close()
        await server.wait_closed()


async def test_the_device_concurrency_cap_holds(stack: Stack, sshd: Sshd, ssh_users: Users) -> None:
    async with counting_proxy(sshd.port) as (port, counter):
        device = await ssh_device(
            stack,
            sshd,
            port=port,
            max_concurrent_operations=2,  # overrides the policy's 5
        )
        pol = await policy(stack, max_concurrent_operations=5)
        creds = [
            await credential(stack, device["id"], ssh_users.create(OLD), OLD, policy_id=pol["id"])
            for _ in range(20)
        ]
        results = await asyncio.gather(*(stack.run_operation(c["id"]) for c in creds))

    assert [r["status"] for r in results] == ["succeeded"] * 20
    assert counter.total >= 40  # a change and a verify connection per operation
    assert counter.most == 2  # reached the cap, never above it
