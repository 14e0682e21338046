"""Tasks in the store: their template's parameters, a run's start, its results and its end.

The request path (the API) and the run's activities share these, so a run requested by hand
and one fired by the task's schedule are checked and recorded the same way.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from store import audit
from store.models import (
    Credential,
    Operation,
    OperationStatus,
    Task,
    TaskResult,
    TaskRun,
    Template,
    new_id,
    utcnow,
)
from store.queries import latest_template
from templating.parameters import Parameter, declared, resolve
from workflows.contracts import TASK_KIND


def task_template(session: Session, name: str) -> tuple[Template, tuple[Parameter, ...]]:
    """The template's approved version and its parameters. LookupError if there is none, or
    it is not a task template (the message says which)."""
    template = latest_template(session, name)
    if template.kind != TASK_KIND:
        raise LookupError(f"template {name!r} is a {template.kind} template, not a task template")
    return template, declared(template.body)


def run_parameters(
    session: Session, task: Task, given: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """The template version a run uses and its parameter values: the task's own, then the
    run's, checked against the template's declarations, defaults filled in
    (templating.parameters.ParameterProblem if they do not fit; LookupError if the template
    has no approved version any more)."""
    template, parameters = task_template(session, task.template)
    return template.version, dict(resolve(parameters, {**task.parameters, **given}))


def new_run(
    session: Session,
    task: Task,
    *,
    run_id: str,
    trigger: str,
    parameters: dict[str, Any],
    workflow_id: str,
    requested_by: str | None,
    template_version: int,
) -> TaskRun:
    """The run's row, as requested (status ``scheduled``), and its audit event."""
    run = TaskRun(
        id=run_id,
        task_id=task.id,
        trigger=trigger,
        parameters=parameters,
        workflow_id=workflow_id,
        requested_by=requested_by,
        template_version=template_version,
    )
    session.add(run)
    audit.record(
        session, "task.run_requested", principal=requested_by, task_id=task.id,
        run_id=run.id, trigger=trigger, template=task.template, version=template_version,
        parameters=sorted(parameters),
    )  # fmt: skip
    return run


def start_run(session: Session, run: TaskRun, task: Task) -> list[TaskResult]:
    """Mark the run running and give it one result row per credential (each with the id of the
    operation its child registers). Idempotent: a retried start finds them."""
    if run.status == OperationStatus.SCHEDULED:
        run.status = OperationStatus.RUNNING
        session.add(run)
        audit.record(
            session, "task.run_started", principal=run.requested_by, task_id=task.id,
            run_id=run.id, trigger=run.trigger,
        )  # fmt: skip
    results = list(session.exec(select(TaskResult).where(TaskResult.run_id == run.id)))
    if results:
        return results
    for credential_id in task.credential_ids:
        credential = session.get(Credential, credential_id)
        result = TaskResult(
            run_id=run.id,
            credential_id=credential_id,
            device_id=credential.device_id if credential else "",
            operation_id=new_id(),
        )
        if credential is None:
            result.status = OperationStatus.FAILED
            result.error_type = "ConfigurationError"
            result.error = f"credential {credential_id} no longer exists"
            result.finished_at = utcnow()
        session.add(result)
        results.append(result)
    return results


def refuse_run(session: Session, run: TaskRun, reason: str) -> None:
    run.status = OperationStatus.FAILED
    run.error = reason
    run.finished_at = utcnow()
    session.add(run)
    audit.record(
        session, "task.run_failed", principal=run.requested_by, outcome="failed",
        task_id=run.task_id, run_id=run.id, trigger=run.trigger, reason=reason,
    )  # fmt: skip


def end_run(session: Session, run_id: str, canceled: bool) -> str:
    """Settle each result its child could not (ended before running the task) from its
    operation, and the run's status: succeeded when every target did, failed when one failed,
    else canceled (the run was, or some of its targets were)."""
    run = session.get(TaskRun, run_id)
    if run is None:
        raise LookupError(f"task run {run_id} not found")
    results = list(session.exec(select(TaskResult).where(TaskResult.run_id == run_id)))
    for result in results:
        if OperationStatus(result.status).terminal:
            continue
        operation = session.get(Operation, result.operation_id)
        if operation is not None and OperationStatus(operation.status).terminal:
            result.status = operation.status
            result.error_type, result.error = operation.error_type, operation.error
        else:
            result.status = OperationStatus.CANCELED if canceled else OperationStatus.FAILED
        result.finished_at = utcnow()
        session.add(result)
    if OperationStatus(run.status).terminal:
        return str(run.status)
    statuses = {OperationStatus(r.status) for r in results}
    if results and statuses == {OperationStatus.SUCCEEDED}:
        status = OperationStatus.SUCCEEDED
    elif canceled or (
        OperationStatus.CANCELED in statuses and OperationStatus.FAILED not in statuses
    ):
        status = OperationStatus.CANCELED  # the run, or a target of it, was canceled; none failed
    else:
        status = OperationStatus.FAILED
    run.status = status
    run.finished_at = utcnow()
    session.add(run)
    audit.record(
        session, f"task.run_{status}", principal=run.requested_by,
        outcome="ok" if status == OperationStatus.SUCCEEDED else str(status),
        task_id=run.task_id, run_id=run.id, trigger=run.trigger,
        succeeded=sum(r.status == OperationStatus.SUCCEEDED for r in results),
        targets=len(results),
    )  # fmt: skip
    return str(status)


def keep_result(
    session: Session,
    run_id: str,
    credential_id: str,
    *,
    status: str,
    exit_status: int | None,
    output: str,
    error_type: str | None = None,
    error: str | None = None,
) -> None:
    """What the task did on one target, its whole (redacted) output included."""
    result = session.get(TaskResult, (run_id, credential_id))
    if result is None:
        raise LookupError(f"task run {run_id} has no result for credential {credential_id}")
    result.status = OperationStatus(status)
    result.exit_status = exit_status
    result.output = output
    result.error_type, result.error = error_type, error
    result.finished_at = utcnow()
    session.add(result)


def runs_of(task_id: str) -> Any:
    """The query of a task's runs (paged by the API)."""
    return select(TaskRun).where(TaskRun.task_id == task_id)


def results_of(session: Session, run_id: str) -> list[TaskResult]:
    return list(
        session.exec(
            select(TaskResult)
            .where(TaskResult.run_id == run_id)
            .order_by(col(TaskResult.credential_id))
        )
    )
