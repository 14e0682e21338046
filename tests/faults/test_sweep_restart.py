"""Keyturn restarted while a sweep runs: the worker SIGKILLs itself after a page's changes were
requested but before that was recorded; the restarted worker requests the page again and goes
on. No credential is changed twice, none is skipped. Restarting also puts every policy's
schedules back as the store says: a missing one is recreated, an orphan removed."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlmodel import Session, select
from temporalio.client import (
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.service import RPCError, RPCStatusCode

from keyturn import failpoints
from store.models import Credential, Operation
from tests.faults.conftest import FaultStack, WorkerProcess
from tests.faults.helpers import current_secret, fast_policy, register_target, ssh_device
from tests.servers.sshd import Sshd, Users
from workflows.contracts import SWEEP_WORKFLOW, SweepInput, schedule_id

CREDENTIALS = 6  # three pages of two (the fault stack's KEYTURN_SWEEP_PAGE_SIZE)
HOUR = 3600
# The killed page's activity is retried after its 10 s heartbeat timeout.
FINISH_WITHIN = 120.0


def _expiry_operations(stack: FaultStack, credential_ids: list[str]) -> dict[str, list[Operation]]:
    with Session(stack.engine) as session:
        rows = session.exec(select(Operation).where(Operation.trigger == "expiry")).all()
    found: dict[str, list[Operation]] = {c: [] for c in credential_ids}
    for row in rows:
        if row.credential_id in found:
            found[row.credential_id].append(row)
    return found


async def _until(check: Callable[[], bool], within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, f"not within {within:g}s: {what}"
        await asyncio.sleep(0.2)


async def test_a_sweep_interrupted_by_a_restart_changes_each_due_credential_once(
    fault_stack: FaultStack, worker: WorkerProcess, sshd: Sshd, ssh_users: Users
) -> None:
    await worker.start([failpoints.SWEEP_PAGE_REQUESTED])
    device = await ssh_device(fault_stack, sshd)
    rules = await fast_policy(fault_stack)
    targets = [
        await register_target(fault_stack, ssh_users, device["id"], rules["id"])
        for _ in range(CREDENTIALS)
    ]
    ids = [t.credential_id for t in targets]
    with Session(fault_stack.engine) as session:
        for credential_id in ids:
            row = session.get(Credential, credential_id)
            assert row is not None
            row.secret_changed_at = datetime.now(UTC) - timedelta(hours=2)
            session.add(row)
        session.commit()
    # All due at once: the first sweep of the new schedule finds the six of them.
    patched = await fault_stack.api.patch(
        f"/v1/policies/{rules['id']}", json={"change_every_seconds": HOUR}
    )
    assert patched.status_code == 200, patched.text

    try:
        assert await worker.wait_dead() == -9
        assert worker.fired(failpoints.SWEEP_PAGE_REQUESTED)
        await worker.restart()

        def all_changed() -> bool:
            found = _expiry_operations(fault_stack, ids)
            return all(ops and all(o.finished_at for o in ops) for ops in found.values())

        await _until(all_changed, FINISH_WITHIN, "every due credential changed")
        # Later sweeps find nothing due: give them time to run, then count.
        handle = fault_stack.client.get_schedule_handle(schedule_id("expiry", rules["id"]))
        actions = (await handle.describe()).info.num_actions
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while (await handle.describe()).info.num_actions < actions + 2:
            assert loop.time() < deadline, "the schedule stopped sweeping"
            await asyncio.sleep(0.2)

        found = _expiry_operations(fault_stack, ids)
        assert {c: [o.status for o in ops] for c, ops in found.items()} == {
            c: ["succeeded"] for c in ids
        }, worker.log_tail()
        for target in targets:
            assert await ssh_users.password_works(
                target.username, current_secret(fault_stack, target.credential_id)
            )
    finally:  # its schedule would sweep every second for the rest of the session
        await fault_stack.api.patch(
            f"/v1/policies/{rules['id']}", json={"change_every_seconds": None}
        )


async def test_restarting_puts_the_schedules_back_as_the_store_says(
    fault_stack: FaultStack, worker: WorkerProcess
) -> None:
    client = fault_stack.client
    rules = await fast_policy(fault_stack, change_every_seconds=HOUR, verify_every_seconds=HOUR)
    await client.get_schedule_handle(schedule_id("verify", rules["id"])).delete()  # by hand

    def sweep(task_queue: str, policy_id: str) -> Schedule:
        return Schedule(
            action=ScheduleActionStartWorkflow(
                SWEEP_WORKFLOW,
                SweepInput(policy_id, "expiry"),
                id=f"orphan-{policy_id}",
                task_queue=task_queue,
            ),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(hours=1))]),
            state=ScheduleState(paused=True),
        )

    orphan, foreign = secrets.token_hex(8), secrets.token_hex(8)
    # A policy deleted from the store, and one of another deployment on the same namespace.
    await client.create_schedule(
        schedule_id("expiry", orphan), sweep(fault_stack.settings.task_queue, orphan)
    )
    await client.create_schedule(schedule_id("expiry", foreign), sweep("elsewhere", foreign))

    async def listed(wanted: set[str]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30  # the schedule list is eventually consistent
        while not wanted <= {s.id async for s in await client.list_schedules()}:
            assert loop.time() < deadline, f"{wanted} not listed"
            await asyncio.sleep(0.2)

    await listed({schedule_id("expiry", orphan), schedule_id("expiry", foreign)})
    await worker.start()

    for purpose in ("expiry", "verify"):
        await client.get_schedule_handle(schedule_id(purpose, rules["id"])).describe()
    try:
        await client.get_schedule_handle(schedule_id("expiry", orphan)).describe()
        raise AssertionError("the orphan schedule is still there")
    except RPCError as exc:
        assert exc.status == RPCStatusCode.NOT_FOUND
    foreign_handle = client.get_schedule_handle(schedule_id("expiry", foreign))
    await foreign_handle.describe()  # not ours: kept
    await foreign_handle.delete()
    patched = await fault_stack.api.patch(
        f"/v1/policies/{rules['id']}",
        json={"change_every_seconds": None, "verify_every_seconds": None},
    )
    assert patched.status_code == 200, patched.text
