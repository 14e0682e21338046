"""Kill the worker at each step of an ssh-key change on two hosts, restart it, and find the
vault's current key logging in on both, the other key refused on both, and the rest of each
authorized_keys file untouched.

The key protocol's points (keyturn/failpoints.py KEY_POINTS): after prepare stored the new key
pair, once the new key is on the first host only, once it logs in everywhere but the old key is
still there, after the change (old key removed), and inside the commit transaction.
"""

from __future__ import annotations

import signal
import time

import pytest

from keyturn import failpoints
from store.ssh_keys import public_key_line
from tests.e2e.key_helpers import UNRELATED, key_account, second_host
from tests.faults.conftest import FaultStack, WorkerProcess
from tests.faults.helpers import (
    ROOMY_LOCKOUT,
    attempts,
    current_secret,
    describe_attempts,
    fast_policy,
)
from tests.servers.sshd import Sshd, Users

__all__ = ["second_host"]  # the fixture, imported for the tests of this module
ALREADY_LIVE = "new key already logs in everywhere"  # activities/key_steps.py, retried change
DIE_WITHIN = 60.0
FINISH_WITHIN = 120.0


@pytest.mark.parametrize("point", failpoints.KEY_POINTS)
async def test_a_kill_at_each_key_protocol_step_keeps_the_vaults_key_working_everywhere(
    fault_stack: FaultStack,
    worker: WorkerProcess,
    sshd: Sshd,
    second_host: Sshd,
    ssh_users: Users,
    point: str,
) -> None:
    began = time.monotonic()
    pol = await fast_policy(fault_stack, ROOMY_LOCKOUT)
    account = await key_account(fault_stack.post, ssh_users, (sshd, second_host), pol["id"])
    await worker.start(failpoints=[point])

    accepted = await fault_stack.request_change(account.credential_id)
    code = await worker.wait_dead(DIE_WITHIN)
    assert code == -signal.SIGKILL, f"the worker ended with {code}, not by its failpoint"
    assert worker.fired(point), f"the worker died, but not at {point}"
    old_at_kill = await account.logs_in_everywhere(ssh_users, account.old_key)
    await worker.restart()
    result = await fault_stack.result(accepted, FINISH_WITHIN)

    rows = attempts(fault_stack, [accepted.operation_id])
    context = f"{result}; attempts: {describe_attempts(rows)}"
    print(f"\n[{point}] {result.status} in {time.monotonic() - began:.1f}s; old key at kill: "
          f"{old_at_kill}; attempts: {describe_attempts(rows)}")  # fmt: skip
    current = current_secret(fault_stack, account.credential_id)
    assert await account.logs_in_everywhere(ssh_users, current) == [True, True], context
    assert result.status == "succeeded", context  # every kill is recovered from
    assert current != account.old_key, context
    assert await account.logs_in_everywhere(ssh_users, account.old_key) == [False, False]
    line = public_key_line(current, f"keyturn:{account.credential_id}")
    assert account.files(ssh_users) == [UNRELATED + line + "\n"] * 2, context
    # The old key works everywhere until the new one does: a kill before the new key logs in
    # everywhere finds the old one still working on both hosts.
    if point in (
        failpoints.AFTER_PREPARE,
        failpoints.KEY_INSTALLED_ON_ONE,
        failpoints.KEY_VERIFIED,
    ):
        assert old_at_kill == [True, True], context
    if point in (failpoints.AFTER_CHANGE, failpoints.DURING_COMMIT):
        assert old_at_kill == [False, False], context
    if point in (failpoints.KEY_VERIFIED, failpoints.AFTER_CHANGE):
        # The retried change asked both hosts first, and only finished the change.
        retried = [a for a in rows if a.step == "change" and a.number > 1]
        assert any(ALREADY_LIVE in a.transcript for a in retried), context
