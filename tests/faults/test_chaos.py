"""Chaos: many changes over a few accounts while the worker is SIGKILLed at random moments.

At most one change per account is in flight (the workflow id is fixed per credential), a few
accounts change at once, and a killer kills and restarts the worker several times. Afterwards
every operation is terminal and, for every credential, the vault's current secret logs in.
Set KEYTURN_CHAOS_SEED to replay a run; the seed is printed.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import time
from dataclasses import dataclass, field

from sqlmodel import Session, select

from store.models import LoginCharge
from tests.faults.conftest import Accepted, FaultStack, WorkerProcess
from tests.faults.helpers import (
    ALREADY_LIVE,
    OLD,
    ROOMY_LOCKOUT,
    SANE_FAILURES,
    Target,
    attempts,
    current_secret,
    fast_policy,
    register_target,
    secret_versions,
    ssh_device,
    stored_credential,
    stored_operation,
)
from tests.servers.sshd import Sshd, Users
from workflows.contracts import OperationResult

ACCOUNTS = 6
CHANGES_PER_ACCOUNT = 9  # 54 changes
CONCURRENCY = 3
KILLS = (4, 6)  # inclusive bounds of how many times the worker is killed
KILL_JITTER = 1.5  # seconds after a kill's trigger, at random, so it lands anywhere in a change
CHANGE_WITHIN = 150.0  # one change, through a kill and its recovery (5-20 s)


@dataclass
class Lane:
    target: Target
    remaining: int
    results: list[tuple[Accepted, OperationResult]] = field(default_factory=list)


@dataclass
class Progress:
    done: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def finished_one(self) -> None:
        async with self.changed:
            self.done += 1
            self.changed.notify_all()

    async def reached(self, count: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.done >= count)


def leaked_reservations(stack: FaultStack, device_id: str) -> int:
    """Lockout-budget charges still 'reserved' after every login ended: a kill between reserve
    and settle leaves one, and it counts as a failed login until it leaves the window."""
    with Session(stack.engine) as session:
        rows = session.exec(
            select(LoginCharge).where(
                LoginCharge.device_id == device_id, LoginCharge.state == "reserved"
            )
        )
        return len(rows.all())


async def test_chaos_no_credential_is_lost(
    fault_stack: FaultStack, worker: WorkerProcess, sshd: Sshd, ssh_users: Users
) -> None:
    seed = int(os.environ.get("KEYTURN_CHAOS_SEED", secrets.randbits(32)))
    print(f"\nchaos seed {seed} (KEYTURN_CHAOS_SEED={seed} replays the kill schedule)")
    rng = random.Random(seed)
    began = time.monotonic()

    device = await ssh_device(fault_stack, sshd)
    # The device's concurrency cap must let CONCURRENCY changes run.
    policy = await fast_policy(
        fault_stack, {**ROOMY_LOCKOUT, "max_concurrent_operations": CONCURRENCY}, max_attempts=10
    )
    lanes = [
        Lane(
            await register_target(fault_stack, ssh_users, device["id"], policy["id"]),
            CHANGES_PER_ACCOUNT,
        )
        for _ in range(ACCOUNTS)
    ]
    total = ACCOUNTS * CHANGES_PER_ACCOUNT
    # Each kill is triggered when some number of changes have finished (so every kill lands
    # while work remains), then delayed by a random jitter (so it lands anywhere in a change).
    planned = rng.randint(*KILLS)
    triggers = sorted(rng.sample(range(3, total - 12), planned))
    jitters = [rng.uniform(0, KILL_JITTER) for _ in triggers]
    await worker.start()

    queue: asyncio.Queue[Lane] = asyncio.Queue()
    for lane in lanes:
        queue.put_nowait(lane)
    progress = Progress()

    async def runner() -> None:
        # Takes an account, changes it once, puts it back: one change per account in flight.
        while not queue.empty():
            lane = queue.get_nowait()
            accepted = await fault_stack.request_change(lane.target.credential_id)
            lane.results.append((accepted, await fault_stack.result(accepted, CHANGE_WITHIN)))
            lane.remaining -= 1
            if lane.remaining:
                queue.put_nowait(lane)
            await progress.finished_one()

    async def killer() -> None:
        for trigger, jitter in zip(triggers, jitters, strict=True):
            await progress.reached(trigger)
            # Not synchronisation: the random instant of the kill is the point of the test.
            await asyncio.sleep(jitter)
            await worker.kill()
            assert await worker.wait_dead() == -signal.SIGKILL
            await worker.restart()

    async with asyncio.TaskGroup() as group:
        for _ in range(CONCURRENCY):
            group.create_task(runner())
        group.create_task(killer())

    # -- every operation terminal, every credential whole ----------------------------------------
    assert progress.done == total
    results = [pair for lane in lanes for pair in lane.results]
    operation_ids = [accepted.operation_id for accepted, _ in results]
    for accepted, result in results:
        stored = stored_operation(fault_stack, accepted.operation_id)
        assert stored.status == result.status and stored.finished_at is not None, result
        if result.status != "succeeded":
            assert result.status == "failed" and result.resolution in SANE_FAILURES, result
    lost = []
    for lane in lanes:
        credential_id, user = lane.target.credential_id, lane.target.username
        current = current_secret(fault_stack, credential_id)
        if not await ssh_users.password_works(user, current):
            lost.append(user)
        assert stored_credential(fault_stack, credential_id).sync_state == "in_sync", user
        succeeded = sum(result.status == "succeeded" for _, result in lane.results)
        assert (current == OLD) == (succeeded == 0), user
        states = [v.state for v in secret_versions(fault_stack, credential_id)]
        assert "pending" not in states, f"{user}: a pending version outlived its operation"

    rows = attempts(fault_stack, operation_ids)
    by_operation: dict[str, list[str]] = {}
    for row in rows:
        if row.step == "change":
            by_operation.setdefault(row.operation_id, []).append(row.outcome)
    already_live = sum(row.step == "change" and ALREADY_LIVE in row.transcript for row in rows)
    verify_after_failure = sum(
        row.step == "verify" and by_operation.get(row.operation_id, [""])[-1] != "succeeded"
        for row in rows
    )
    succeeded = sum(result.status == "succeeded" for _, result in results)
    figures = {
        "changes": total,
        "succeeded": succeeded,
        "failed": total - succeeded,
        "kills": worker.kills,
        "retried attempts": sum(row.number > 1 for row in rows),
        "probes": already_live + verify_after_failure,
        "  of which 'pending already live'": already_live,
        "  of which verify after a failed change": verify_after_failure,
        "attempts left 'running' by a kill": sum(row.outcome == "running" for row in rows),
        "lockout reservations left by a kill": leaked_reservations(fault_stack, device["id"]),
        "lost": len(lost),
        "seconds": round(time.monotonic() - began, 1),
    }
    print("chaos figures: " + ", ".join(f"{k.strip()}={v}" for k, v in figures.items()))
    for accepted, result in results:
        if result.status != "succeeded":
            print(f"  failed {accepted.operation_id}: {result.resolution} ({result.error_type})")

    assert worker.kills == planned
    assert lost == [], f"credentials whose current secret does not log in: {lost}"
