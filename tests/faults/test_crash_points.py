"""Kill the worker at each step of the change protocol, restart it, and find the credential whole.

Each failpoint (keyturn/failpoints.py) makes the worker SIGKILL itself at one point: after
prepare stored the pending secret, with a secret on the wire, after the target accepted the
change, once the new secret logged in (the change had given its device slot back and committed),
and inside the commit transaction. The restarted worker (no failpoint) must finish the
operation so that the vault's current secret is the one the target accepts.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from sqlmodel import Session, select

from keyturn import failpoints
from store.models import DeviceSlotClaim
from tests.faults.conftest import LOST_WORKER_SECONDS, Accepted, FaultStack, WorkerProcess
from tests.faults.helpers import (
    ALREADY_LIVE,
    OLD,
    assert_not_lost,
    attempts,
    credential,
    current_secret,
    describe_attempts,
    fast_policy,
    register_target,
    reveal,
    secret_versions,
    ssh_device,
    stored_credential,
    wait_for_attempt,
)
from tests.servers.sshd import Sshd, Users
from workflows.contracts import OperationResult, operation_workflow_id

DIE_WITHIN = 60.0  # the failpoint is reached within seconds of the request
# Recovery: a workflow task lost with the worker times out, an executor activity misses its
# heartbeat (LOST_WORKER_SECONDS each); then the step runs again (retries 0.5 s apart).
FINISH_WITHIN = 120.0


@pytest.mark.parametrize("privileged", [False, True], ids=["self-passwd", "admin-chpasswd"])
@pytest.mark.parametrize("point", failpoints.ALL)
async def test_a_kill_at_each_protocol_step_loses_no_credential(
    fault_stack: FaultStack,
    worker: WorkerProcess,
    sshd: Sshd,
    ssh_users: Users,
    point: str,
    privileged: bool,
) -> None:
    began = time.monotonic()
    device = await ssh_device(fault_stack, sshd)
    policy = await fast_policy(fault_stack)
    target = await register_target(
        fault_stack, ssh_users, device["id"], policy["id"], privileged=privileged
    )
    await worker.start(failpoints=[point])

    accepted = await fault_stack.request_change(target.credential_id)
    code = await worker.wait_dead(DIE_WITHIN)
    assert code == -signal.SIGKILL, f"the worker ended with {code}, not by its failpoint"
    assert worker.fired(point), f"the worker died, but not at {point}"
    old_still_works = await ssh_users.password_works(target.username, OLD)
    await worker.restart()
    result = await fault_stack.result(accepted, FINISH_WITHIN)

    await assert_not_lost(fault_stack, ssh_users, target, accepted, result)
    # The worker's setting reached the workflow: its executor steps are noticed lost this soon.
    assert await _heartbeat_timeouts(fault_stack, accepted) == {LOST_WORKER_SECONDS}
    rows = attempts(fault_stack, [accepted.operation_id])
    print(
        f"\n[{point}/{'admin' if privileged else 'self'}] {result.status} ({result.resolution}) "
        f"in {time.monotonic() - began:.1f}s; old secret live at the kill: {old_still_works}; "
        f"attempts: {describe_attempts(rows)}"
    )
    if point == failpoints.AFTER_PREPARE:
        assert old_still_works, "the target was touched before the change step"
    if point in (failpoints.AFTER_CHANGE, failpoints.AFTER_VERIFY, failpoints.DURING_COMMIT):
        # The target had taken the new secret before the kill: only a commit can follow.
        assert not old_still_works
        assert result.status == "succeeded", result
    # Every device slot taken was given back, the one the killed change gave back itself too.
    with Session(fault_stack.engine) as session:
        claims = session.exec(
            select(DeviceSlotClaim).where(DeviceSlotClaim.device_id == device["id"])
        ).all()
        assert claims == [], claims
    retried = [a for a in rows if a.step == "change" and a.number > 1]
    if point == failpoints.AFTER_CHANGE:
        # The retried change asked the target first, instead of changing the secret again.
        assert any(ALREADY_LIVE in a.transcript for a in retried), describe_attempts(rows)
    if point == failpoints.AFTER_VERIFY:
        # The killed change had committed with its verify: the retried one found the operation
        # done and asked the target nothing (no attempt of its own).
        assert retried == [], describe_attempts(rows)
        assert result.resolution == "verified: the new secret logs in", result


async def test_a_cancel_while_the_worker_lies_dead_after_the_commit_is_too_late(
    fault_stack: FaultStack, worker: WorkerProcess, sshd: Sshd, ssh_users: Users
) -> None:
    """The change committed with its verify and the worker died before answering; someone
    cancels the operation that now seems hung. The store's outcome stands: the operation ends
    succeeded with the cancel too late (in the store and in the workflow's result alike), and
    the chained credential's change still starts."""
    device = await ssh_device(fault_stack, sshd)
    policy = await fast_policy(fault_stack)
    target = await register_target(fault_stack, ssh_users, device["id"], policy["id"])
    child_user = ssh_users.create(OLD)
    child = await credential(
        fault_stack,
        device["id"],
        child_user,
        OLD,
        policy_id=policy["id"],
        parent_id=target.credential_id,
    )
    await worker.start(failpoints=[failpoints.AFTER_VERIFY])

    accepted = await fault_stack.request_change(target.credential_id)
    assert await worker.wait_dead(DIE_WITHIN) == -signal.SIGKILL
    assert worker.fired(failpoints.AFTER_VERIFY)
    await fault_stack.client.get_workflow_handle(accepted.workflow_id).cancel()
    await worker.restart()
    result = await fault_stack.result(accepted, FINISH_WITHIN)

    await assert_not_lost(fault_stack, ssh_users, target, accepted, result)
    assert result.status == "succeeded" and "too late" in result.resolution, result
    stored = await fault_stack.operation(accepted.operation_id)
    assert stored["status"] == "succeeded" and "too late" in stored["resolution"], stored
    child_run = fault_stack.client.get_workflow_handle(
        operation_workflow_id("change", child["id"]), result_type=OperationResult
    )
    child_result = await asyncio.wait_for(child_run.result(), FINISH_WITHIN)
    assert child_result.status == "succeeded", child_result
    assert await ssh_users.password_works(child_user, current_secret(fault_stack, child["id"]))


@pytest.mark.parametrize("lasting", [False, True], ids=["brief-outage", "lasting-outage"])
async def test_a_kill_after_the_change_then_a_target_outage_loses_no_credential(
    fault_stack: FaultStack, worker: WorkerProcess, lasting: bool
) -> None:
    """The target took the new secret, the worker died before reporting it, and the target is
    unreachable when the retry comes. Attempt 1 may have sent, whatever attempt 2 says: every
    later attempt must still probe the pending secret before changing anything, and if the
    target never comes back, the end is "outcome unknown" (flagged out of sync, the pending
    version kept), never "nothing was sent" (the live new secret marked failed)."""
    flaky = Sshd()  # its own server: this test stops and starts it
    users = Users(flaky)
    try:
        await asyncio.to_thread(flaky.start)
        device = await ssh_device(fault_stack, flaky)
        # brief: retries 2 s apart, time to bring the target back between attempts 2 and 3.
        if lasting:
            policy = await fast_policy(fault_stack, max_attempts=3)
        else:
            policy = await fast_policy(fault_stack, max_attempts=6, retry_interval_seconds=2.0)
        target = await register_target(fault_stack, users, device["id"], policy["id"])
        await worker.start(failpoints=[failpoints.AFTER_CHANGE])

        accepted = await fault_stack.request_change(target.credential_id)
        assert await worker.wait_dead(DIE_WITHIN) == -signal.SIGKILL
        assert worker.fired(failpoints.AFTER_CHANGE)
        assert not await users.password_works(target.username, OLD), "the target took it"
        await asyncio.to_thread(flaky.stop)
        await worker.restart()
        second = await wait_for_attempt(
            fault_stack, accepted.operation_id, "change", 2, within=FINISH_WITHIN
        )
        assert second.outcome in ("ConnectFailed", "OutcomeUnknown"), second.detail
        assert "Connect call failed" in (second.detail or ""), second.detail
        if not lasting:
            await asyncio.to_thread(flaky.start)
        result = await fault_stack.result(accepted, FINISH_WITHIN)
        await asyncio.to_thread(flaky.start)

        rows = attempts(fault_stack, [accepted.operation_id])
        print(
            f"\n[after-change + {'lasting' if lasting else 'brief'} outage] {result}; "
            f"attempts: {describe_attempts(rows)}"
        )
        if not lasting:
            await assert_not_lost(fault_stack, users, target, accepted, result)
            assert result.status == "succeeded", result
            return
        # Nothing could be proved either way: the vault keeps its current secret, flags the
        # credential, and keeps the pending version (the one that is live) for recovery.
        context = f"{result}; attempts: {describe_attempts(rows)}"
        assert result.status == "failed", context
        (pending,) = [
            v for v in secret_versions(fault_stack, target.credential_id) if v.operation_id
        ]
        assert await users.password_works(target.username, reveal(fault_stack, pending))
        assert pending.state == "pending", (
            f"LOST: the live new secret is marked {pending.state}; {context}"
        )
        assert stored_credential(fault_stack, target.credential_id).sync_state == "out_of_sync", (
            f"LOST: the vault's current secret is dead and the credential not flagged; {context}"
        )
        assert current_secret(fault_stack, target.credential_id) == OLD, context
    finally:
        users.cleanup()
        flaky.close()


async def _heartbeat_timeouts(stack: FaultStack, accepted: Accepted) -> set[float]:
    """The heartbeat timeouts the operation's executor steps were scheduled with, in seconds
    (its store steps, the commit, have none)."""
    handle = stack.client.get_workflow_handle(accepted.workflow_id)
    scheduled = [
        event.activity_task_scheduled_event_attributes
        async for event in handle.fetch_history_events()
        if event.HasField("activity_task_scheduled_event_attributes")
    ]
    timeouts = {step.heartbeat_timeout.ToTimedelta().total_seconds() for step in scheduled}
    return timeouts - {0.0}
