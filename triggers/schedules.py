"""Each policy with an expiry or a verification period has a Temporal Schedule per purpose
(``keyturn-expiry-<policy id>``, ``keyturn-verify-<policy id>``), firing a sweep workflow every
``KEYTURN_SWEEP_INTERVAL_SECONDS``; a sweep still running when the next is due makes it skip.

The store's policies are the truth: ``apply`` makes Temporal agree with one policy (the API
calls it on every create and update, before committing), ``reconcile`` with all of them (at
startup: missing schedules are created, orphans of deleted policies removed). Server state grows
with policies, not credentials.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import select
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from keyturn.settings import Settings
from requesting import TemporalUnavailable
from store.engine import in_thread
from store.models import Policy
from triggers.due import every
from workflows.contracts import SWEEP_WORKFLOW, SWEEPS, SweepInput, schedule_id, sweep_workflow_id

log = logging.getLogger("keyturn.schedules")


@dataclass(frozen=True)
class Wanted:
    """What a policy asks of Temporal: which sweeps, paused or not."""

    policy_id: str
    name: str
    purposes: frozenset[str]
    paused: bool

    @classmethod
    def of(cls, policy: Policy) -> Wanted:
        purposes = frozenset(p for p in SWEEPS if every(policy, p) is not None)
        return cls(policy.id, policy.name, purposes, policy.paused)


def _schedule(settings: Settings, wanted: Wanted, purpose: str) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            SWEEP_WORKFLOW,
            SweepInput(wanted.policy_id, purpose, page_size=settings.sweep_page_size),
            id=sweep_workflow_id(purpose, wanted.policy_id),
            task_queue=settings.task_queue,
        ),
        spec=ScheduleSpec(
            intervals=[
                ScheduleIntervalSpec(every=timedelta(seconds=settings.sweep_interval_seconds))
            ]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(
            paused=wanted.paused, note=f"Keyturn policy {wanted.name}: {purpose} sweep"
        ),
    )


async def apply(client: Client, settings: Settings, wanted: Wanted) -> None:
    """Create, update, pause, resume or delete the policy's schedules so they match it."""
    try:
        for purpose in SWEEPS:
            handle = client.get_schedule_handle(schedule_id(purpose, wanted.policy_id))
            if purpose not in wanted.purposes:
                await delete_schedule(client, schedule_id(purpose, wanted.policy_id))
                continue
            schedule = _schedule(settings, wanted, purpose)
            try:
                await client.create_schedule(handle.id, schedule)
                continue
            except ScheduleAlreadyRunningError:
                pass

            def replace(_: ScheduleUpdateInput, schedule: Schedule = schedule) -> ScheduleUpdate:
                return ScheduleUpdate(schedule=schedule)

            await handle.update(replace)
            # An update keeps the schedule's paused state: set it explicitly.
            paused = (await handle.describe()).schedule.state.paused
            if wanted.paused and not paused:
                await handle.pause(note="the policy is paused")
            elif paused and not wanted.paused:
                await handle.unpause(note="the policy is resumed")
    except RPCError as exc:
        raise TemporalUnavailable(
            f"Temporal at {client.service_client.config.target_host} did not take the "
            f"schedules of policy {wanted.name}: {exc}"
        ) from None


async def delete_schedule(client: Client, schedule: str) -> bool:
    """Delete a schedule; False when there was none."""
    try:
        await client.get_schedule_handle(schedule).delete()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


@dataclass(frozen=True)
class Reconciled:
    applied: int  # owners (policies, tasks) whose schedules were made to match
    removed: tuple[str, ...]  # schedules whose owner no longer exists


async def remove_orphans(
    client: Client,
    settings: Settings,
    *,
    orphaned: Callable[[str], bool],
    workflow: str,
    owner: str,
) -> tuple[str, ...]:
    """Delete the schedules ``orphaned`` picks by id, but only those Keyturn's own: they start
    ``workflow`` on this deployment's task queue (another deployment may share the namespace)."""
    removed = []
    async for entry in await client.list_schedules():
        if not orphaned(entry.id):
            continue
        action = (await client.get_schedule_handle(entry.id).describe()).schedule.action
        if (
            isinstance(action, ScheduleActionStartWorkflow)
            and action.workflow == workflow
            and action.task_queue == settings.task_queue
            and await delete_schedule(client, entry.id)
        ):
            removed.append(entry.id)
            log.info("removed schedule %s: its %s no longer exists", entry.id, owner)
    return tuple(removed)


async def reconcile(client: Client, engine: Engine, settings: Settings) -> Reconciled:
    """Make Temporal's schedules match every policy in the store: at startup, after a restore,
    after a schedule was deleted by hand. Only schedules that start sweeps on this deployment's
    task queue are considered Keyturn's own."""
    policies = await in_thread(engine, lambda db: [Wanted.of(p) for p in db.exec(select(Policy))])
    for wanted in policies:
        await apply(client, settings, wanted)
    known = {p.policy_id for p in policies}

    def orphaned(schedule: str) -> bool:
        purpose, policy_id = _parse(schedule)
        return bool(purpose) and policy_id not in known

    removed = await remove_orphans(
        client, settings, orphaned=orphaned, workflow=SWEEP_WORKFLOW, owner="policy"
    )
    return Reconciled(len(policies), removed)


def _parse(schedule: str) -> tuple[str, str]:
    for purpose in SWEEPS:
        prefix = schedule_id(purpose, "")
        if schedule.startswith(prefix):
            return purpose, schedule.removeprefix(prefix)
    return "", ""
