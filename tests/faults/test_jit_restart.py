"""A just-in-time account survives worker crashes on both ends of its life: killed right after
the account was created (before the commit), the retried jit-create finds the account already
there with the new secret and commits it; killed again after the commit, the removal still comes
when the TTL ends, because its timer lives on the Temporal server (a delayed workflow's start
delay), not in the worker."""

from __future__ import annotations

import asyncio
import signal
import time

from keyturn import failpoints
from tests.faults.conftest import FaultStack, WorkerProcess
from tests.faults.helpers import (
    ADMIN_PASSWORD,
    ALREADY_LIVE,
    attempts,
    credential,
    current_secret,
    describe_attempts,
    fast_policy,
    ssh_device,
    stored_credential,
)
from tests.servers.sshd import Sshd, Users
from workflows.contracts import (
    OperationResult,
    delayed_operation_workflow_id,
    operation_workflow_id,
)

DIE_WITHIN = 60.0
FINISH_WITHIN = 120.0
TTL = 8
LIFECYCLE_COMMANDS = ("/usr/sbin/chpasswd", "/usr/sbin/useradd", "/usr/sbin/userdel")


async def test_a_jit_account_is_created_once_and_removed_across_worker_kills(
    fault_stack: FaultStack, worker: WorkerProcess, sshd: Sshd, ssh_users: Users
) -> None:
    device = await ssh_device(fault_stack, sshd)
    policy = await fast_policy(fault_stack)
    admin = ssh_users.create(ADMIN_PASSWORD)
    ssh_users.make_admin(admin, LIFECYCLE_COMMANDS)
    admin_cred = await credential(
        fault_stack, device["id"], admin, ADMIN_PASSWORD, policy_id=policy["id"]
    )
    user = ssh_users.new_name()
    cred = await credential(
        fault_stack,
        device["id"],
        user,
        "placeholder",
        policy_id=policy["id"],
        auth_credential_id=admin_cred["id"],
    )
    removal_id = delayed_operation_workflow_id("jit-remove", cred["id"])
    fault_stack.started += [removal_id, operation_workflow_id("jit-remove", cred["id"])]
    await worker.start(failpoints=[failpoints.AFTER_CHANGE])

    accepted = await fault_stack.post(
        f"/v1/credentials/{cred['id']}/operations",
        {"kind": "jit-create", "ttl_seconds": TTL},
        expect=202,
    )
    fault_stack.started.append(accepted["workflow_id"])
    assert await worker.wait_dead(DIE_WITHIN) == -signal.SIGKILL
    assert worker.fired(failpoints.AFTER_CHANGE)
    assert ssh_users.exists(user), "useradd ran before the kill"
    await worker.restart()
    handle = fault_stack.client.get_workflow_handle(
        accepted["workflow_id"], result_type=OperationResult
    )
    result = await asyncio.wait_for(handle.result(), FINISH_WITHIN)
    created_at = time.monotonic()

    rows = attempts(fault_stack, [accepted["operation_id"]])
    assert result.status == "succeeded", f"{result}; {describe_attempts(rows)}"
    # The retry asked the target first: the account was not created a second time.
    retried = [a for a in rows if a.step == "change" and a.number > 1]
    assert any(ALREADY_LIVE in a.transcript for a in retried), describe_attempts(rows)
    secret = current_secret(fault_stack, cred["id"])
    assert await ssh_users.password_works(user, secret)
    assert stored_credential(fault_stack, cred["id"]).jit_until is not None

    # A second crash while the account lives: its removal does not depend on this worker.
    await worker.kill()
    await worker.wait_dead()
    await worker.restart()
    outcome = await asyncio.wait_for(
        fault_stack.client.get_workflow_handle(removal_id).result(), FINISH_WITHIN
    )
    assert outcome.startswith("requested operation"), outcome
    removed = await asyncio.wait_for(
        fault_stack.client.get_workflow_handle(
            operation_workflow_id("jit-remove", cred["id"]), result_type=OperationResult
        ).result(),
        FINISH_WITHIN,
    )

    print(
        f"\n[jit across kills] created after a kill, removed {time.monotonic() - created_at:.1f}s "
        f"after the commit (ttl {TTL}s): {removed}"
    )
    assert removed.status == "succeeded", removed
    assert time.monotonic() - created_at >= TTL - 1
    assert not ssh_users.exists(user)
    assert not await ssh_users.password_works(user, secret)
    assert stored_credential(fault_stack, cred["id"]).jit_until is None
