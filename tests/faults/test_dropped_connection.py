"""A target that accepts the change and then drops the connection before answering.

The template runs ``passwd`` and, once passwd has changed the password, kills its own SSH
session (the sshd process serving it, ``$PPID`` of the shell), so the executor never sees the
exit status: OutcomeUnknown, with the new secret live on the target. The workflow must find out
by probing, adopt the new secret, and say so.
"""

from __future__ import annotations

import secrets

import pytest

from tests.e2e.helpers import approve_template
from tests.faults.conftest import FaultStack, WorkerProcess
from tests.faults.helpers import (
    ALREADY_LIVE,
    OLD,
    assert_not_lost,
    attempts,
    current_secret,
    describe_attempts,
    fast_policy,
    register_target,
    ssh_device,
    stored_operation,
)
from tests.servers.sshd import Sshd, Users

# linux-passwd.tpl, except that the shell cuts the session as soon as passwd succeeded: the
# answer (the success line, the exit status) may never reach the executor.
DROPPING_TEMPLATE = """\
# kind: change
# passwd, then the target kills the session serving it before the exit status is sent.
spawn: passwd && kill -9 $PPID
expect: (?i)current password:|\\(current\\) unix password:
send: {{ current_password }}
fail: (?i)authentication token manipulation error|password unchanged
expect: (?i)new password:
send: {{ new_password }}
expect: (?i)retype new password:|re-enter new password:
send: {{ new_password }}
fail: (?i)bad password|password unchanged|has not been changed|do not match|manipulation error
expect: (?i)password updated successfully|all authentication tokens updated successfully
exit: 0
"""
FINISH_WITHIN = 60.0


@pytest.mark.parametrize(
    "max_attempts",
    [
        # No retry: the change step fails with OutcomeUnknown and the workflow probes.
        pytest.param(1, id="probe-by-workflow"),
        # Retried: the next change attempt probes the pending secret before changing anything.
        pytest.param(3, id="probe-by-retry"),
    ],
)
async def test_change_accepted_then_connection_dropped(
    fault_stack: FaultStack,
    worker: WorkerProcess,
    sshd: Sshd,
    ssh_users: Users,
    max_attempts: int,
) -> None:
    template = await fault_stack.post(
        "/v1/templates",
        {
            "name": f"test/passwd-then-drop-{secrets.token_hex(4)}",
            "executor": "ssh",
            "kind": "change",
            "body": DROPPING_TEMPLATE,
        },
    )
    await approve_template(fault_stack.api, template["name"], template["version"])
    device = await ssh_device(fault_stack, sshd)
    policy = await fast_policy(fault_stack, max_attempts=max_attempts)
    target = await register_target(
        fault_stack, ssh_users, device["id"], policy["id"], change_template=template["name"]
    )
    await worker.start()

    accepted = await fault_stack.request_change(target.credential_id)
    result = await fault_stack.result(accepted, FINISH_WITHIN)

    await assert_not_lost(fault_stack, ssh_users, target, accepted, result)
    rows = attempts(fault_stack, [accepted.operation_id])
    trail = f"{result}; attempts: {describe_attempts(rows)}"
    print(f"\n[max_attempts={max_attempts}] {trail}")
    assert result.status == "succeeded", trail
    new = current_secret(fault_stack, target.credential_id)
    assert new != OLD and await ssh_users.password_works(target.username, new)

    # The first change reached the target and lost its answer: outcome unknown, not a failure.
    first = rows[0]
    assert (first.step, first.number, first.outcome) == ("change", 1, "OutcomeUnknown"), trail
    assert first.detail is not None and "probe" in first.detail, first.detail
    assert "> ***" in first.transcript, "the transcript shows the secrets sent, redacted"
    assert new not in first.transcript and OLD not in first.transcript

    steps = [(a.step, a.number, a.outcome) for a in rows]
    if max_attempts == 1:
        # The workflow probed (a 'verify' attempt): the pending secret logs in, so it is adopted.
        assert steps == [("change", 1, "OutcomeUnknown"), ("verify", 1, "succeeded")], trail
        assert "[pending] logs in" in rows[1].transcript, rows[1].transcript
        assert result.resolution.startswith("probe after OutcomeUnknown"), trail
    else:
        # The retried change probed first and found the pending secret live: no second passwd.
        assert steps == [
            ("change", 1, "OutcomeUnknown"),
            ("change", 2, "succeeded"),
            ("verify", 1, "succeeded"),
        ], trail
        assert ALREADY_LIVE in rows[1].transcript, rows[1].transcript
        assert "passwd" not in rows[1].transcript
        assert "[pending] logs in" in rows[2].transcript, rows[2].transcript
        assert result.resolution.startswith("probe on retry"), trail
    # How the outcome was established is recorded with the operation, as the workflow said it.
    assert stored_operation(fault_stack, accepted.operation_id).resolution == result.resolution
