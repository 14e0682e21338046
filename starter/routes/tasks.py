"""Tasks: a template of kind task run as a list of credentials, on demand or on a schedule.

A run is one workflow with a child per credential (workflows/task_run.py); each child is an
operation of kind ``task`` on its credential, so it shows among the credential's operations,
waits at its gate and takes its device's slots like any other.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select
from temporalio.service import RPCError, RPCStatusCode

from requesting import InvalidRequest, TemporalUnavailable
from requesting.tasks import request_task_run
from starter.authz import OPERATOR, READERS, Caller, allow, hidden
from starter.deps import DB, AppState, State, StoreRoute
from starter.pages import Cursor, Limit, Page, by_age, keyset_page
from starter.problems import Problem, invalid, not_found, problem_response
from starter.task_schemas import (
    TaskIn,
    TaskOut,
    TaskPatch,
    TaskResultOut,
    TaskRunAccepted,
    TaskRunIn,
    TaskRunOut,
)
from store import audit, tasks
from store.engine import in_thread
from store.models import Credential, Device, OperationStatus, Task, TaskRun, utcnow
from templating.parameters import ParameterProblem, resolve
from triggers import task_schedules
from workflows.contracts import task_schedule_id

router = APIRouter(route_class=StoreRoute)
Operator = Annotated[Caller, Depends(allow(OPERATOR))]
TaskReader = Annotated[Caller, Depends(allow(*READERS))]
_UNAVAILABLE = problem_response("Temporal did not take the request")


@router.post(
    "/tasks",
    status_code=201,
    response_model=TaskOut,
    responses={
        409: problem_response("a task has this name"),
        422: problem_response(
            "invalid body: a template that is not an approved task template, a credential "
            "that does not exist (or outside the caller's profiles), of a device of another "
            "executor, or of another profile than the others; a parameter the template does "
            "not declare or of the wrong type (with a schedule: a required one missing); a "
            "schedule Temporal cannot read"
        ),
        503: _UNAVAILABLE,
    },
)
async def create_task(body: TaskIn, app: State, caller: Operator) -> TaskOut:
    """Create a task. With a ``schedule``, a Temporal Schedule (``keyturn-task-<id>``) runs
    it with its own parameters, so every required parameter must have a value here."""
    task = await in_thread(app.engine, lambda db: _checked(db, body, caller))
    if task.schedule:
        await _apply_schedule(app, task)

    def save(db: Session) -> None:
        db.add(task)
        audit.record(
            db, "task.created", principal=caller.name, task_id=task.id, name=task.name,
            template=task.template, credential_ids=task.credential_ids, schedule=task.schedule,
            parameters=sorted(task.parameters),
        )  # fmt: skip
        db.commit()

    try:
        await in_thread(app.engine, save)
    except IntegrityError:  # the same name, saved by another request meanwhile
        if task.schedule:
            await task_schedules.remove(app.client, task.id)
        raise Problem(409, f"a task named {body.name!r} exists") from None
    return _out(task)


def _checked(db: Session, body: TaskIn, caller: Caller, task_id: str | None = None) -> Task:
    """The task ``body`` describes, checked (``task_id``: the task it updates)."""
    named = db.exec(select(Task.id).where(Task.name == body.name)).first()
    if named is not None and named != task_id:
        raise Problem(409, f"a task named {body.name!r} exists; choose another name")
    try:
        template, parameters = tasks.task_template(db, body.template)
    except LookupError as exc:
        raise invalid("template", f"{exc}; list task templates with GET /v1/templates") from None
    profiles = set()
    for index, credential_id in enumerate(body.credential_ids):
        field = f"credential_ids.{index}"
        credential = db.get(Credential, credential_id)
        if credential is None or not caller.sees(credential.profile):
            raise invalid(field, f"no credential {credential_id}")
        device = db.get(Device, credential.device_id)
        assert device is not None
        if device.executor != template.executor:
            raise invalid(
                field,
                f"credential {credential_id} is on device {device.name!r} of executor "
                f"{device.executor!r}; template {template.name!r} is for {template.executor!r}",
            )
        profiles.add(credential.profile)
    if len(profiles) > 1:
        raise invalid(
            "credential_ids", f"a task's credentials share one profile, not {sorted(profiles)}"
        )
    try:
        values = resolve(parameters, body.parameters, complete=body.schedule is not None)
    except ParameterProblem as exc:
        raise invalid(f"parameters.{exc.name}", exc.message) from None
    return Task(
        name=body.name,
        template=template.name,
        executor=template.executor,
        credential_ids=list(body.credential_ids),
        # Only the values given: a default comes from the template version each run uses.
        parameters={name: values[name] for name in body.parameters},
        schedule=body.schedule.stored() if body.schedule else None,
        profile=profiles.pop(),
        created_by=caller.name,
    )


@router.get("/tasks", response_model=Page[TaskOut])
def list_tasks(
    db: DB, caller: TaskReader, limit: Limit = 100, cursor: Cursor = None
) -> Page[TaskOut]:
    """The tasks in the caller's profiles, oldest first (deleted ones too, marked)."""
    query = select(Task).where(caller.sees_rows(Task.profile))
    return keyset_page(db, query, by_age(Task), limit, cursor, _out)


@router.get("/tasks/{task_id}", response_model=TaskOut)
def get_task(task_id: str, db: DB, caller: TaskReader) -> TaskOut:
    return _out(_task(db, caller, task_id))


@router.patch(
    "/tasks/{task_id}",
    response_model=TaskOut,
    responses={
        409: problem_response("the task is deleted"),
        422: problem_response(
            "as for POST /v1/tasks: a credential or parameter the template cannot take, a "
            "schedule Temporal cannot read, or a schedule while a required parameter has no value"
        ),
        503: _UNAVAILABLE,
    },
)
async def update_task(task_id: str, body: TaskPatch, app: State, caller: Operator) -> TaskOut:
    """Change a task's credentials, parameters or schedule (null: none). The schedule is made
    to match before the task is stored; runs already requested keep their own values."""
    task = await in_thread(app.engine, lambda db: _task(db, caller, task_id))
    if task.deleted_at is not None:
        raise Problem(409, f"task {task_id} is deleted")
    given = body.model_fields_set
    schedule = body.schedule.model_dump(exclude_none=True) if body.schedule else None
    # Both parts are checked already (the stored task when it was saved, the patch by its
    # schema): together they make a valid TaskIn.
    merged = TaskIn.model_validate(
        {
            "name": task.name,
            "template": task.template,
            "credential_ids": body.credential_ids or task.credential_ids,
            "parameters": (body.parameters or {}) if "parameters" in given else task.parameters,
            "schedule": schedule if "schedule" in given else task.schedule,
        }
    )
    updated = await in_thread(app.engine, lambda db: _checked(db, merged, caller, task.id))
    task.credential_ids, task.parameters = updated.credential_ids, updated.parameters
    task.schedule, task.profile = updated.schedule, updated.profile
    await _apply_schedule(app, task)

    def save(db: Session) -> Task:
        db.add(task)
        audit.record(
            db, "task.updated", principal=caller.name, task_id=task.id, changed=sorted(given),
            credential_ids=task.credential_ids, schedule=task.schedule,
            parameters=sorted(task.parameters),
        )  # fmt: skip
        db.commit()
        db.refresh(task)
        return task

    return _out(await in_thread(app.engine, save))


@router.delete("/tasks/{task_id}", response_model=TaskOut, responses={503: _UNAVAILABLE})
async def delete_task(task_id: str, app: State, caller: Operator) -> TaskOut:
    """Delete a task: its schedule is removed and it runs no more. It stays readable, with its
    runs, marked ``deleted_at``. Deleting again changes nothing."""
    task = await in_thread(app.engine, lambda db: _task(db, caller, task_id))
    if task.deleted_at is not None:
        return _out(task)
    try:
        await task_schedules.remove(app.client, task.id)
    except TemporalUnavailable as exc:
        raise Problem(503, str(exc)) from None

    def mark(db: Session) -> Task:
        row = db.get(Task, task_id)
        assert row is not None
        if row.deleted_at is None:
            row.deleted_at = utcnow()
            db.add(row)
            audit.record(db, "task.deleted", principal=caller.name, task_id=row.id, name=row.name)
            db.commit()
            db.refresh(row)
        return row

    return _out(await in_thread(app.engine, mark))


@router.post(
    "/tasks/{task_id}/runs",
    status_code=202,
    response_model=TaskRunAccepted,
    responses={
        409: problem_response("the task is deleted"),
        422: problem_response(
            "a parameter the template does not declare, of the wrong type, not one of its "
            "choices, or a required one missing; nothing is stored or started"
        ),
        503: _UNAVAILABLE,
    },
)
async def run_task(task_id: str, body: TaskRunIn, app: State, caller: Operator) -> TaskRunAccepted:
    """Run the task now (trigger ``manual``), with ``parameters`` over the task's own. 202 at
    once; follow the run at ``GET /v1/tasks/{id}/runs/{run_id}``."""
    task = await in_thread(app.engine, lambda db: _task(db, caller, task_id))
    if task.deleted_at is not None:
        raise Problem(409, f"task {task_id} is deleted: it runs no more")
    try:
        requested = await request_task_run(
            app.engine, app.client, app.settings.task_queue, task.id, body.parameters, caller.name
        )
    except InvalidRequest as exc:
        raise invalid(exc.field, exc.message) from None
    except TemporalUnavailable as exc:
        raise Problem(503, str(exc)) from None
    return TaskRunAccepted(
        run_id=requested.run_id,
        task_id=task.id,
        workflow_id=requested.workflow_id,
        status="scheduled",
        parameters=requested.parameters,
    )


@router.get("/tasks/{task_id}/runs", response_model=Page[TaskRunOut])
def list_runs(
    task_id: str, db: DB, caller: TaskReader, limit: Limit = 50, cursor: Cursor = None
) -> Page[TaskRunOut]:
    """The task's runs, newest first, each with its results."""
    _task(db, caller, task_id)
    return keyset_page(
        db, tasks.runs_of(task_id), by_age(TaskRun), limit, cursor,
        lambda run: _run_out(db, run), descending=True,
    )  # fmt: skip


@router.get("/tasks/{task_id}/runs/{run_id}", response_model=TaskRunOut)
def get_run(task_id: str, run_id: str, db: DB, caller: TaskReader) -> TaskRunOut:
    """A run: its status, and per credential its device, status, exit status and whole
    (redacted) output."""
    return _run_out(db, _run(db, caller, task_id, run_id))


@router.post(
    "/tasks/{task_id}/runs/{run_id}/cancel",
    status_code=202,
    response_model=TaskRunOut,
    responses={409: problem_response("the run has ended"), 503: _UNAVAILABLE},
)
async def cancel_run(task_id: str, run_id: str, app: State, caller: Operator) -> TaskRunOut:
    """Cancel a run: each target still queued ends at once, each running one once its executor
    has stopped (the command is interrupted); the run ends ``canceled``, unless a target had
    failed. To cancel one target only, cancel its operation."""
    run = await in_thread(app.engine, lambda db: _run(db, caller, task_id, run_id))
    if OperationStatus(run.status).terminal:
        raise Problem(409, f"run {run_id} has ended ({run.status})")
    try:
        await app.client.get_workflow_handle(run.workflow_id).cancel()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:  # it ended meanwhile
            raise Problem(409, f"run {run_id} has ended") from None
        raise Problem(503, f"Temporal did not take the cancel: {exc}") from None
    return await in_thread(app.engine, lambda db: _run_out(db, _run(db, caller, task_id, run_id)))


def _run(db: Session, caller: Caller, task_id: str, run_id: str) -> TaskRun:
    _task(db, caller, task_id)
    run = db.get(TaskRun, run_id)
    if run is None or run.task_id != task_id:
        raise not_found("task run", run_id)
    return run


def _task(db: Session, caller: Caller, task_id: str) -> Task:
    task = db.get(Task, task_id)
    if task is None:
        raise not_found("task", task_id)
    hidden(caller, task.profile, "task", task_id)
    return task


def _out(task: Task) -> TaskOut:
    fields: dict[str, Any] = task.model_dump()
    return TaskOut(**fields, schedule_id=task_schedule_id(task.id) if task.schedule else None)


def _run_out(db: Session, run: TaskRun) -> TaskRunOut:
    results = [TaskResultOut(**r.model_dump()) for r in tasks.results_of(db, run.id)]
    return TaskRunOut(**run.model_dump(), results=results)


async def _apply_schedule(app: AppState, task: Task) -> None:
    """Create, update or remove the task's Temporal Schedule: 422 naming ``schedule`` when
    Temporal refuses it, 503 when Temporal cannot be reached."""
    try:
        await task_schedules.apply(app.client, app.settings, task)
    except task_schedules.ScheduleRefused as exc:
        raise invalid("schedule", f"Temporal refused it: {exc}") from None
    except TemporalUnavailable as exc:
        raise Problem(503, str(exc)) from None
