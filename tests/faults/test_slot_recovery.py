"""A worker SIGKILLed while an operation holds a device slot: the slot comes back and the
operation waiting for it proceeds. The slots live in the device's semaphore workflow, not in the
worker, so nothing held in the dead process is lost."""

from __future__ import annotations

import asyncio
import secrets
import signal

from keyturn import failpoints
from tests.faults.conftest import FaultStack, WorkerProcess
from tests.faults.helpers import (
    assert_not_lost,
    fast_policy,
    register_target,
)
from tests.servers.sshd import Sshd, Users

DIE_WITHIN = 60.0
# The lost change attempt is noticed when its heartbeat is missed (LOST_WORKER_SECONDS).
FINISH_WITHIN = 120.0


async def test_a_worker_killed_while_holding_a_device_slot_gives_it_back(
    fault_stack: FaultStack, worker: WorkerProcess, sshd: Sshd, ssh_users: Users
) -> None:
    device = await fault_stack.post(
        "/v1/devices",
        {
            "name": f"slot-kill-{secrets.token_hex(4)}",
            "address": "127.0.0.1",
            "port": sshd.port,
            "executor": "ssh",
            "host_keys": [sshd.host_key_line],
            "max_concurrent_operations": 1,
        },
    )
    policy = await fast_policy(fault_stack)
    targets = [
        await register_target(fault_stack, ssh_users, device["id"], policy["id"]) for _ in range(2)
    ]
    # The first change to put a secret on the wire kills the worker, holding the only slot
    # while the other operation waits for it.
    await worker.start(failpoints=[failpoints.CHANGE_SENT])
    accepted = [await fault_stack.request_change(t.credential_id) for t in targets]

    assert await worker.wait_dead(DIE_WITHIN) == -signal.SIGKILL
    await worker.restart()
    results = await asyncio.gather(*(fault_stack.result(a, FINISH_WITHIN) for a in accepted))

    assert [r.status for r in results] == ["succeeded", "succeeded"], results
    for target, one, result in zip(targets, accepted, results, strict=True):
        await assert_not_lost(fault_stack, ssh_users, target, one, result)
