"""A task with a schedule has a Temporal Schedule, ``keyturn-task-<task id>``, that starts a run
of it (trigger ``task-schedule``) at each of its times: a cron spec in a time zone, or a fixed
interval. A run still going when the next is due makes that one skip.

As for the policies' schedules (triggers/schedules.py), the store is the truth: ``apply`` makes
Temporal agree with one task (the API calls it before committing the task), ``remove`` drops a
deleted task's schedule, ``reconcile`` makes every task's agree at startup and removes the
schedules of tasks that are gone.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import col, select
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
from store.models import Task
from triggers.schedules import Reconciled, delete_schedule, remove_orphans
from workflows.contracts import (
    TASK_RUN_WORKFLOW,
    TaskRunInput,
    task_run_workflow_id,
    task_schedule_id,
)

log = logging.getLogger("keyturn.schedules")


class ScheduleRefused(ValueError):
    """Temporal refused the schedule's spec (a cron expression it cannot read, say)."""


def spec_of(schedule: dict[str, Any]) -> ScheduleSpec:
    """A task's ``schedule`` as Temporal's spec: ``{"cron", "timezone"}`` or
    ``{"every_seconds"}`` (checked by the API's schema)."""
    if schedule.get("every_seconds"):
        every = timedelta(seconds=int(schedule["every_seconds"]))
        return ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)])
    return ScheduleSpec(
        cron_expressions=[str(schedule["cron"])],
        time_zone_name=str(schedule.get("timezone") or "UTC"),
    )


def _schedule(settings: Settings, task_id: str, name: str, spec: dict[str, Any]) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            TASK_RUN_WORKFLOW,
            TaskRunInput(task_id),
            id=task_run_workflow_id(task_id),
            task_queue=settings.task_queue,
        ),
        spec=spec_of(spec),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(note=f"Keyturn task {name}"),
    )


async def apply(client: Client, settings: Settings, task: Task) -> None:
    """Create or update the task's schedule, or delete it if the task has none (or is
    deleted). ScheduleRefused when Temporal refuses the spec; TemporalUnavailable otherwise."""
    schedule_id = task_schedule_id(task.id)
    try:
        if not task.schedule or task.deleted_at is not None:
            await delete_schedule(client, schedule_id)
            return
        schedule = _schedule(settings, task.id, task.name, task.schedule)
        try:
            await client.create_schedule(schedule_id, schedule)
            return
        except ScheduleAlreadyRunningError:
            pass

        def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(schedule_id).update(replace)
    except RPCError as exc:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            raise ScheduleRefused(exc.message) from None
        raise TemporalUnavailable(
            f"Temporal at {client.service_client.config.target_host} did not take the "
            f"schedule of task {task.name}: {exc}"
        ) from None


async def remove(client: Client, task_id: str) -> None:
    try:
        await delete_schedule(client, task_schedule_id(task_id))
    except RPCError as exc:
        raise TemporalUnavailable(
            f"Temporal did not remove the schedule of task {task_id}: {exc}"
        ) from None


async def reconcile(client: Client, engine: Engine, settings: Settings) -> Reconciled:
    """Make Temporal's task schedules match the store's tasks. Only schedules that start task
    runs on this deployment's task queue are considered Keyturn's own."""
    scheduled = await in_thread(
        engine,
        lambda db: list(
            db.exec(
                select(Task).where(col(Task.schedule).is_not(None), col(Task.deleted_at).is_(None))
            )
        ),
    )
    applied = 0
    for task in scheduled:
        if not task.schedule:  # a JSON null
            continue
        try:
            await apply(client, settings, task)
            applied += 1
        except ScheduleRefused as exc:
            log.warning("the schedule of task %s is refused by Temporal: %s", task.name, exc)
    known = {task_schedule_id(task.id) for task in scheduled if task.schedule}
    prefix = task_schedule_id("")
    removed = await remove_orphans(
        client,
        settings,
        # A deleted task, or one whose schedule was removed.
        orphaned=lambda schedule: schedule.startswith(prefix) and schedule not in known,
        workflow=TASK_RUN_WORKFLOW,
        owner="task",
    )
    return Reconciled(applied, removed)
