"""Registering targets through the API, reading the store back, and the one check every fault
test ends with: the vault's current secret logs in on the target (no credential lost)."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from starter.schemas import PolicyIn
from store.models import Attempt, Credential, Operation, SecretState, SecretVersion
from store.vault import Vault
from tests.faults.conftest import Accepted, FaultStack
from tests.servers.sshd import Sshd, Users
from workflows.contracts import OperationResult

OLD = "Old-pass w0rd;$#'\"\\x"
ADMIN_PASSWORD = "Adm1n pass'word\"$"
# Small timeouts and a short retry interval, so recovery after a kill takes seconds.
FAST = {
    "connect_timeout_seconds": 3,
    "read_timeout_seconds": 5,
    "retry_interval_seconds": 0.5,
    "backoff": 1.0,
    "max_attempts": 5,
}
# Kill-induced retries probe the pending secret first, and a refused probe is charged to the
# account's lockout budget (as is a login a kill interrupted): a test of many kills gives it room.
ROOMY_LOCKOUT = {"lockout_budget": 100, "lockout_window_seconds": 60}
# What a failed change may say and still keep the credential whole: the target never took the
# new secret, and the old one (still current in the vault) logs in.
SANE_FAILURES = ("nothing was sent to the target", "probe: the current secret still logs in")
ALREADY_LIVE = "pending secret already live"  # activities/executor_steps.py, retried change


async def ssh_device(stack: FaultStack, sshd: Sshd) -> dict[str, Any]:
    body = {
        "name": f"fault-host-{secrets.token_hex(4)}",
        "address": "127.0.0.1",
        "port": sshd.port,
        "executor": "ssh",
        "host_keys": [sshd.host_key_line],
    }
    return await stack.post("/v1/devices", body)


async def fast_policy(
    stack: FaultStack, optional: dict[str, Any] | None = None, **overrides: Any
) -> dict[str, Any]:
    """A policy with FAST timings; ``optional`` settings apply where the policy API has them."""
    body: dict[str, Any] = {"name": f"fault-policy-{secrets.token_hex(4)}", **FAST}
    body.update({k: v for k, v in (optional or {}).items() if k in PolicyIn.model_fields})
    body.update(overrides)
    return await stack.post("/v1/policies", body)


async def credential(
    stack: FaultStack, device_id: str, username: str, password: str, **extra: Any
) -> dict[str, Any]:
    body = {"device_id": device_id, "username": username, "password": password, **extra}
    return await stack.post("/v1/credentials", body)


@dataclass(frozen=True)
class Target:
    """One throwaway account on the fixture sshd, registered as a credential."""

    username: str
    credential_id: str
    admin: str | None = None  # the privileged account changing it, if any


async def register_target(
    stack: FaultStack,
    users: Users,
    device_id: str,
    policy_id: str,
    *,
    privileged: bool = False,
    **extra: Any,
) -> Target:
    admin = None
    if privileged:
        admin = users.create(ADMIN_PASSWORD)
        users.make_admin(admin)
        admin_cred = await credential(stack, device_id, admin, ADMIN_PASSWORD, policy_id=policy_id)
        extra["auth_credential_id"] = admin_cred["id"]
    user = users.create(OLD)
    cred = await credential(stack, device_id, user, OLD, policy_id=policy_id, **extra)
    expected = "ssh/linux-chpasswd" if privileged else "ssh/linux-passwd"
    if "change_template" not in extra:
        assert cred["change_template"] == expected, cred
    return Target(user, cred["id"], admin)


def reveal(stack: FaultStack, version: SecretVersion) -> str:
    return Vault(stack.settings.master_key_bytes).reveal(version)


def current_secret(stack: FaultStack, credential_id: str) -> str:
    """The vault's current secret, decrypted the way an activity does. Exactly one is current."""
    with Session(stack.engine) as session:
        current = session.exec(
            select(SecretVersion).where(
                SecretVersion.credential_id == credential_id,
                SecretVersion.state == SecretState.CURRENT,
            )
        ).all()
        assert len(current) == 1, f"credential {credential_id}: {len(current)} current versions"
        return reveal(stack, current[0])


def secret_versions(stack: FaultStack, credential_id: str) -> list[SecretVersion]:
    with Session(stack.engine) as session:
        return list(
            session.exec(
                select(SecretVersion)
                .where(SecretVersion.credential_id == credential_id)
                .order_by(col(SecretVersion.created_at))
            )
        )


def stored_credential(stack: FaultStack, credential_id: str) -> Credential:
    with Session(stack.engine) as session:
        row = session.get(Credential, credential_id)
        assert row is not None
        return row


def stored_operation(stack: FaultStack, operation_id: str) -> Operation:
    with Session(stack.engine) as session:
        row = session.get(Operation, operation_id)
        assert row is not None
        return row


def attempts(stack: FaultStack, operation_ids: list[str]) -> list[Attempt]:
    with Session(stack.engine) as session:
        return list(
            session.exec(
                select(Attempt)
                .where(col(Attempt.operation_id).in_(operation_ids))
                .order_by(col(Attempt.started_at))
            )
        )


def describe_attempts(rows: list[Attempt]) -> str:
    return "; ".join(f"{a.step}#{a.number}={a.outcome}" for a in rows)


async def assert_not_lost(
    stack: FaultStack, users: Users, target: Target, accepted: Accepted, result: OperationResult
) -> None:
    """The operation is terminal, the store agrees with the workflow, and the vault's current
    secret is the one that logs in on the target: the credential survived."""
    operation = stored_operation(stack, accepted.operation_id)
    assert result.operation_id == accepted.operation_id
    assert operation.status == result.status, (operation.status, result)
    assert operation.finished_at is not None, "a terminal operation has its finish time"
    rows = attempts(stack, [accepted.operation_id])
    context = f"{result}; attempts: {describe_attempts(rows)}"
    if result.status == "succeeded":
        assert "new secret logs in" in result.resolution, context
    else:
        assert result.status == "failed", context
        assert result.resolution in SANE_FAILURES, context

    current = current_secret(stack, target.credential_id)
    assert await users.password_works(target.username, current), (
        f"LOST: the vault's current secret does not log {target.username} in; {context}"
    )
    if result.status == "succeeded":
        assert current != OLD, context
        assert not await users.password_works(target.username, OLD), context
    else:
        assert current == OLD, context
    assert stored_credential(stack, target.credential_id).sync_state == "in_sync", context

    # One pending secret per operation, however often its steps ran: a retry reuses it.
    made = [v for v in secret_versions(stack, target.credential_id) if v.operation_id]
    assert [v.operation_id for v in made] == [accepted.operation_id], context
    expected_state = "current" if result.status == "succeeded" else "failed"
    assert made[0].state == expected_state, context
    if target.admin is not None:
        assert await users.password_works(target.admin, ADMIN_PASSWORD), "the admin is untouched"


async def wait_for_attempt(
    stack: FaultStack, operation_id: str, step: str, number: int, within: float
) -> Attempt:
    """Poll the store until attempt ``number`` of ``step`` has finished; return it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        with Session(stack.engine) as session:
            row = session.exec(
                select(Attempt).where(
                    Attempt.operation_id == operation_id,
                    Attempt.step == step,
                    Attempt.number == number,
                    Attempt.outcome != "running",
                )
            ).first()
        if row is not None:
            return row
        seen = describe_attempts(attempts(stack, [operation_id]))
        assert loop.time() < deadline, f"no finished {step}#{number} after {within:g}s: {seen}"
        await asyncio.sleep(0.05)
