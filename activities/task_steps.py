"""Activities of a task's run (workflows/task_run.py): its start and end, each target's
preparation (store, local activities) and the task itself (executor, on the device's zone task
queue, recorded as an attempt like a change, with its login charged to the lockout budget)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

from sqlalchemy.engine import Engine
from temporalio.exceptions import ApplicationError

from activities.executor_steps import ExecutorActivities, in_thread_to_the_end
from activities.heartbeats import beats_while_running
from executors.base import ExecutorError, RunRequest, RunResult, get_executor, redact
from keyturn.zones import StepQueues
from store import audit, tasks
from store.engine import session_scope
from store.jobs import load_task_job
from store.models import (
    Credential,
    Device,
    Operation,
    OperationStatus,
    Task,
    TaskResult,
    TaskRun,
)
from store.queries import policy_for
from templating.parameters import ParameterProblem
from workflows import steps
from workflows.contracts import (
    TASK_OUTPUT_IN_RESULT,
    OperationPlan,
    TaskOutcome,
    TaskRunEnd,
    TaskRunPlan,
    TaskRunStart,
    TaskStep,
    TaskTarget,
)
from workflows.steps import implements

TASK_STEP = "task"  # the attempt's step
# Characters of a target's output the store keeps (redacted first, then cut, so no piece of a
# secret survives at the cut).
OUTPUT_KEPT = 1_000_000


class TaskStoreActivities:
    def __init__(self, engine: Engine, queues: StepQueues, heartbeat_seconds: float) -> None:
        self._engine = engine
        self._queues = queues
        self._heartbeat_seconds = heartbeat_seconds  # settings.lost_worker_seconds

    @implements(steps.begin_task_run)
    def begin_task_run(self, start: TaskRunStart) -> TaskRunPlan:
        """The run's row (a scheduled run makes it now, its parameters checked as a request's
        are), marked running, and one target per credential still to do."""
        with session_scope(self._engine) as session:
            task = session.get(Task, start.task_id)
            run = session.get(TaskRun, start.run_id)
            if run is None:
                if task is None or task.deleted_at is not None:
                    return TaskRunPlan(start.run_id, [], refused="the task no longer exists")
                try:
                    version, parameters = tasks.run_parameters(session, task, {})
                    refusal = ""
                except (ParameterProblem, LookupError) as exc:
                    version, parameters, refusal = 0, {}, str(exc)
                run = tasks.new_run(
                    session, task, run_id=start.run_id, trigger=start.trigger,
                    parameters=parameters, workflow_id=start.workflow_id,
                    requested_by=start.requested_by, template_version=version,
                )  # fmt: skip
                if refusal:
                    tasks.refuse_run(session, run, refusal)
                    return TaskRunPlan(run.id, [], refused=refusal)
            if OperationStatus(run.status).terminal:
                return TaskRunPlan(run.id, [], refused=run.error or f"the run is {run.status}")
            assert task is not None
            results = tasks.start_run(session, run, task)
            return TaskRunPlan(
                run.id,
                [
                    TaskTarget(r.credential_id, r.device_id, r.operation_id)
                    for r in results
                    if not OperationStatus(r.status).terminal
                ],
            )

    @implements(steps.prepare_task_target)
    def prepare_task_target(self, step: TaskStep) -> OperationPlan:
        """Mark the operation (and its result) running; where and how long the task runs."""
        with session_scope(self._engine) as session:
            operation = session.get(Operation, step.operation_id)
            if operation is None:
                raise ApplicationError(
                    f"operation {step.operation_id} is not in the store",
                    type="NotRegistrable",
                    non_retryable=True,
                )
            credential = session.get(Credential, operation.credential_id)
            assert credential is not None
            device = session.get(Device, credential.device_id)
            assert device is not None
            policy = policy_for(session, credential)
            if operation.status in (OperationStatus.SCHEDULED, OperationStatus.QUEUED):
                operation.status = OperationStatus.RUNNING
                session.add(operation)
                audit.record(
                    session, "operation.started", operation_id=operation.id,
                    credential_id=credential.id, kind=operation.kind, trigger=operation.trigger,
                    run_id=step.run_id,
                )  # fmt: skip
            result = session.get(TaskResult, (step.run_id, step.credential_id))
            if result is not None and not OperationStatus(result.status).terminal:
                result.status = OperationStatus.RUNNING
                session.add(result)
            return OperationPlan(
                zone_task_queue=self._queues.of(device.zone),
                max_attempts=1,
                retry_interval_seconds=0,
                backoff=1,
                step_timeout_seconds=policy.connect_timeout_seconds
                + 4 * policy.read_timeout_seconds,
                device_id=device.id,
                device_capacity=device.max_concurrent_operations
                or policy.max_concurrent_operations,
                heartbeat_timeout_seconds=self._heartbeat_seconds,
            )

    @implements(steps.end_task_run)
    def end_task_run(self, end: TaskRunEnd) -> str:
        with session_scope(self._engine) as session:
            try:
                return tasks.end_run(session, end.run_id, end.canceled)
            except LookupError as exc:  # a scheduled run canceled before its row was made
                raise ApplicationError(
                    str(exc), type="NotRegistrable", non_retryable=True
                ) from None


class TaskExecutorActivities(ExecutorActivities):
    """The task on one target: the executor activities' login accounting and attempt records,
    for a template of kind task run as the credential itself."""

    @implements(steps.run_task)
    @beats_while_running
    async def run_task(self, step: TaskStep) -> TaskOutcome:
        opened = await self._open_attempt(step.operation_id, TASK_STEP, 1)
        attempt_id = opened.attempt_id
        try:
            job, parameters = await asyncio.to_thread(
                load_task_job, self._engine, self._vault, step.operation_id, step.run_id
            )
            if job.insecure_transport is not None:
                await asyncio.to_thread(
                    self._insecure_allowed, job.operation.id, job.insecure_transport
                )
        except (ExecutorError, LookupError) as exc:
            kind = exc.kind if isinstance(exc, ExecutorError) else "ConfigurationError"
            await in_thread_to_the_end(self._finish_attempt, attempt_id, kind, str(exc), "")
            return await self._kept(step, "failed", None, "", kind, str(exc))
        except asyncio.CancelledError:
            # Canceled while its job loaded (the step beats, so a cancel reaches it there):
            # the target was not asked.
            with contextlib.suppress(Exception):  # the cancel is the answer
                await in_thread_to_the_end(self._never_ran, opened)
            raise
        executor = get_executor(job.device.executor)
        account = job.connecting_account
        context = dataclasses.replace(job.context(), params=parameters)
        request = RunRequest(job.target, account, job.change_template, context, task=True)

        async def attempt() -> tuple[str, RunResult]:
            result = await self._login(job, account, lambda: executor.run(request))
            await self._pin_learned_key(job, result.learned_host_key)
            return result.transcript, result

        try:
            result = await self._recorded(job, opened, attempt, may_have_sent=False)
        except ApplicationError as err:
            return await self._kept(step, "failed", None, "", err.type, err.message)
        # Executors redact already; again here, with every secret the job holds.
        output = redact(
            result.output if result.output is not None else result.transcript, job.secrets
        )[:OUTPUT_KEPT]
        status = "succeeded" if result.exit_status in (None, 0) else "failed"
        return await self._kept(step, status, result.exit_status, output)

    async def _kept(
        self,
        step: TaskStep,
        status: str,
        exit_status: int | None,
        output: str,
        error_type: str | None = None,
        error: str | None = None,
    ) -> TaskOutcome:
        """Store the whole result; the workflow gets the start of the output."""

        def keep() -> None:
            with session_scope(self._engine) as session:
                tasks.keep_result(
                    session, step.run_id, step.credential_id, status=status,
                    exit_status=exit_status, output=output, error_type=error_type, error=error,
                )  # fmt: skip

        # The task has run (or failed) on its target: its result is kept even if the step is
        # canceled meanwhile.
        await in_thread_to_the_end(keep)
        return TaskOutcome(
            status,
            exit_status,
            output[:TASK_OUTPUT_IN_RESULT],
            len(output) > TASK_OUTPUT_IN_RESULT,
            error_type,
            error,
        )

    def _insecure_allowed(self, operation_id: str, reason: str) -> None:
        with session_scope(self._engine) as session:
            operation = session.get(Operation, operation_id)
            audit.record_once(
                session, "transport.insecure_allowed", operation_id=operation_id,
                credential_id=operation.credential_id if operation else None, reason=reason,
            )  # fmt: skip
