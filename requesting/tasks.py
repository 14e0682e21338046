"""Request a task's run by hand: check its parameters, store the run, start its workflow.

Nothing is stored and nothing starts when the parameters do not fit the template's
declarations (InvalidRequest naming the parameter). A run fired by the task's schedule is
started by Temporal and checked by its first step instead (activities/task_steps.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from requesting.errors import InvalidRequest, TemporalUnavailable
from store import tasks
from store.engine import in_thread
from store.models import Task, TaskRun, new_id
from templating.parameters import ParameterProblem
from workflows.contracts import TASK_RUN_WORKFLOW, TaskRunInput, task_run_workflow_id

MANUAL = "manual"


@dataclass(frozen=True)
class RunRequested:
    run_id: str
    workflow_id: str
    parameters: dict[str, Any]


def checked_parameters(
    db: Session, task: Task, given: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """The template version and parameter values of a run, or InvalidRequest naming the
    parameter (``parameters.<name>``) or the template at fault."""
    try:
        return tasks.run_parameters(db, task, given)
    except ParameterProblem as exc:
        raise InvalidRequest(f"parameters.{exc.name}", exc.message) from None
    except LookupError as exc:
        raise InvalidRequest("template", str(exc)) from None


async def request_task_run(
    engine: Engine,
    client: Client,
    task_queue: str,
    task_id: str,
    parameters: dict[str, Any],
    requested_by: str | None,
) -> RunRequested:
    run_id = new_id()
    workflow_id = task_run_workflow_id(run_id)

    def store(db: Session) -> dict[str, Any]:
        task = db.get(Task, task_id)
        assert task is not None  # the route found it
        version, values = checked_parameters(db, task, parameters)
        tasks.new_run(
            db, task, run_id=run_id, trigger=MANUAL, parameters=values,
            workflow_id=workflow_id, requested_by=requested_by, template_version=version,
        )  # fmt: skip
        db.commit()
        return values

    values = await in_thread(engine, store)
    try:
        await client.start_workflow(
            TASK_RUN_WORKFLOW,
            TaskRunInput(task_id, run_id, MANUAL, requested_by),
            id=workflow_id,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
    except RPCError as exc:
        reason = f"Temporal did not start the run: {exc}"
        await in_thread(engine, lambda db: _refused(db, run_id, reason))
        raise TemporalUnavailable(
            f"Temporal at {client.service_client.config.target_host} did not accept the "
            f"task's run: {exc}"
        ) from None
    return RunRequested(run_id, workflow_id, values)


def _refused(db: Session, run_id: str, reason: str) -> None:
    run = db.get(TaskRun, run_id)
    if run is not None:
        tasks.refuse_run(db, run, reason)
        db.commit()
