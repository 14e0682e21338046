"""A task's run: one workflow, with one child per credential the task runs as.

``TaskRunWorkflow`` records the run's start (a scheduled run names itself and checks the task's
parameters then), starts a ``TaskTargetWorkflow`` per credential, and records the run's end
from what they did. Each child is an operation of kind ``task`` on its credential:

register at the credential's gate → wait for its turn → take one of the device's slots → run
the task (executor, on the device's zone task queue) → give the slot back → finish → leave
the gate.

So a task never runs on a credential while another operation (a change, say) acts on it, and
never takes more of a device than its cap (workflows/slot_holder.py), exactly like the
operation workflow. A task is run once: whatever it does may not be safe to repeat, so a
failure is reported, not retried. Only the start of each output reaches the history, in its
target's result (TASK_OUTPUT_IN_RESULT), none in the run's; the store keeps it whole.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    FailureError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from workflows import steps
    from workflows.contracts import (
        SA_CREDENTIAL,
        SA_DEVICE,
        SA_KIND,
        SA_OPERATION,
        SA_STATUS,
        SA_TRIGGER,
        TASK_KIND,
        TASK_RUN_WORKFLOW,
        TASK_TARGET_WORKFLOW,
        Admission,
        FinishInput,
        GateCheck,
        OperationPlan,
        RegisterInput,
        SlotRequest,
        TaskOutcome,
        TaskRunEnd,
        TaskRunInput,
        TaskRunPlan,
        TaskRunResult,
        TaskRunStart,
        TaskStep,
        TaskTargetInput,
        TaskTargetResult,
        WorkflowRef,
        task_target_workflow_id,
    )
    from workflows.slot_holder import SlotHolder

_P = TypeVar("_P")
_R = TypeVar("_R")
STORE_TIMEOUT = timedelta(seconds=30)
STORE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=["NotRegistrable", "ConfigurationError"],
)
GATE_CHECK_INTERVAL = timedelta(minutes=5)


async def _local(activity: Callable[[_P], Awaitable[_R]], arg: _P) -> _R:
    """A store step. A cancel that comes while it runs lets it finish first (what it wrote must
    be known: a registration at the gate has to be left again), then surfaces as
    CancelledError, as every other step's does; a step that completes never swallows it."""
    step = asyncio.ensure_future(
        workflow.execute_local_activity(
            activity, arg, start_to_close_timeout=STORE_TIMEOUT, retry_policy=STORE_RETRY
        )
    )
    try:
        return await asyncio.shield(step)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):  # the cancel is the answer now, whatever it did
            await step
        raise


@workflow.defn(name=TASK_RUN_WORKFLOW)
class TaskRunWorkflow:
    def __init__(self) -> None:
        self._status = "scheduled"
        self._run_id = ""

    @workflow.query
    def status(self) -> dict[str, str]:
        return {"status": self._status, "run_id": self._run_id}

    @workflow.run
    async def run(self, request: TaskRunInput) -> TaskRunResult:
        info = workflow.info()
        self._run_id = request.run_id or workflow.uuid4().hex
        try:
            plan: TaskRunPlan = await _local(
                steps.begin_task_run,
                TaskRunStart(
                    request.task_id,
                    self._run_id,
                    request.trigger,
                    info.workflow_id,
                    request.requested_by,
                ),
            )
        except asyncio.CancelledError:
            # Canceled as it began: nothing runs, and nothing else would end the run's row.
            with contextlib.suppress(ActivityError, ApplicationError):  # no row: nothing to end
                self._status = await _local(steps.end_task_run, TaskRunEnd(self._run_id, True))
            raise
        if plan.refused:
            self._status = "failed"
            return TaskRunResult(self._run_id, "failed", [])
        self._status = "running"
        children = [
            workflow.execute_child_workflow(
                TASK_TARGET_WORKFLOW,
                TaskTargetInput(
                    self._run_id,
                    target.credential_id,
                    target.operation_id,
                    request.trigger,
                    request.requested_by,
                ),
                id=task_target_workflow_id(self._run_id, target.credential_id),
                task_queue=info.task_queue,
                result_type=TaskTargetResult,
            )
            for target in plan.targets
        ]
        canceled = False
        try:
            answers = await asyncio.gather(*children, return_exceptions=True)
        except asyncio.CancelledError:
            # The children are canceled with the run: each records its outcome as it ends.
            canceled = True
            answers = []
        # Without the outputs: each child's result has its own, the store keeps them whole, and
        # 500 targets' starts of output (escaped in JSON, up to 6 bytes a character) would pass
        # Temporal's 2 MB limit on one payload, so the run could never complete.
        results = [
            dataclasses.replace(
                answer, output="", output_truncated=answer.output_truncated or bool(answer.output)
            )
            if isinstance(answer, TaskTargetResult)
            else TaskTargetResult(target.credential_id, target.operation_id, "failed")
            for target, answer in zip(plan.targets, answers, strict=False)
        ]
        self._status = await _local(steps.end_task_run, TaskRunEnd(self._run_id, canceled))
        if canceled:
            raise asyncio.CancelledError(f"task run {self._run_id} canceled")
        return TaskRunResult(self._run_id, self._status, results)


@workflow.defn(name=TASK_TARGET_WORKFLOW)
class TaskTargetWorkflow:
    """The task on one credential: an operation of kind ``task`` at the credential's gate."""

    def __init__(self) -> None:
        self._status = "scheduled"
        self._step = "register"
        self._gate_open = False
        self._slots = SlotHolder(_local)
        self._device_id = ""

    @workflow.query
    def status(self) -> dict[str, str]:
        return {"status": self._status, "step": self._step}

    @workflow.signal(name="gate_open")
    def gate_open(self) -> None:
        """The operation ahead on the credential has left the gate: this one's turn."""
        self._gate_open = True

    @workflow.signal(name="slot_granted")
    def slot_granted(self, token: str) -> None:
        self._slots.granted(token)

    @workflow.run
    async def run(self, target: TaskTargetInput) -> TaskTargetResult:
        info = workflow.info()
        try:
            admission: Admission = await _local(
                steps.register,
                RegisterInput(
                    target.operation_id,
                    target.credential_id,
                    TASK_KIND,
                    target.trigger,
                    info.workflow_id,
                    info.run_id,
                    requested_by=target.requested_by,
                ),
            )
        except asyncio.CancelledError:
            # Canceled while registering: the row may exist; record it and leave the gate, or
            # the credential's next operation would wait behind it for ever.
            with contextlib.suppress(ActivityError, ApplicationError):  # no row: nothing to do
                await _local(
                    steps.finish,
                    FinishInput(target.operation_id, "canceled", "canceled before it started"),
                )
            await _leave_gate(target.operation_id)
            raise
        self._device_id = admission.device_id
        self._status = "queued" if admission.queued else "running"
        workflow.upsert_search_attributes(
            [
                SA_CREDENTIAL.value_set(target.credential_id),
                SA_DEVICE.value_set(admission.device_id),
                SA_KIND.value_set(TASK_KIND),
                SA_TRIGGER.value_set(target.trigger),
                SA_STATUS.value_set(self._status),
                SA_OPERATION.value_set(target.operation_id),
            ]
        )
        step = TaskStep(target.run_id, target.credential_id, target.operation_id)
        outcome = TaskOutcome("failed")
        try:
            outcome = await self._gated(target, admission, step)
            finish = FinishInput(
                target.operation_id,
                outcome.status,
                _resolution(outcome),
                outcome.error_type,
                outcome.error,
            )
        except asyncio.CancelledError:
            outcome = TaskOutcome("canceled")
            finish = FinishInput(target.operation_id, "canceled", f"canceled while {self._step}")
        except (ActivityError, ApplicationError) as err:
            cause = err.cause if isinstance(err, ActivityError) else err
            kind = cause.type if isinstance(cause, ApplicationError) else type(cause).__name__
            outcome = TaskOutcome("failed", error_type=kind, error=str(cause or err))
            finish = FinishInput(
                target.operation_id, "failed", "the task did not run", kind, str(cause or err)
            )
        try:
            await _local(steps.finish, finish)
        finally:
            # Whatever happened, the next operation on the credential must be told.
            await _leave_gate(target.operation_id)
        self._status = finish.status
        workflow.upsert_search_attributes([SA_STATUS.value_set(finish.status)])
        return TaskTargetResult(
            target.credential_id,
            target.operation_id,
            finish.status,
            outcome.exit_status,
            outcome.output,
            outcome.output_truncated,
        )

    async def _gated(
        self, target: TaskTargetInput, admission: Admission, step: TaskStep
    ) -> TaskOutcome:
        if admission.queued:
            self._step = f"queued behind operation {admission.waiting_for}"
            while not self._gate_open:
                try:
                    await workflow.wait_condition(
                        lambda: self._gate_open, timeout=GATE_CHECK_INTERVAL
                    )
                except builtins.TimeoutError:
                    if await _local(steps.check_gate, GateCheck(target.operation_id)):
                        self._gate_open = True
        self._status, self._step = "running", "prepare"
        workflow.upsert_search_attributes([SA_STATUS.value_set("running")])
        plan: OperationPlan = await _local(steps.prepare_task_target, step)
        token = f"{target.operation_id}/1"
        try:
            await self._take_slot(plan, token, admission.order_key)
            self._step = "running the task"
            try:
                return await workflow.execute_activity(
                    steps.run_task,
                    step,
                    task_queue=plan.zone_task_queue,
                    start_to_close_timeout=timedelta(seconds=plan.step_timeout_seconds),
                    heartbeat_timeout=plan.heartbeat_timeout,
                    # Once: a task may not be safe to repeat. Its failure is the answer.
                    retry_policy=RetryPolicy(maximum_attempts=1),
                    # A cancel waits for the executor to stop (the attempt is recorded), so the
                    # device slot and the gate are given back only once nothing runs.
                    cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
            except ActivityError as err:
                if is_cancelled_exception(err):
                    raise asyncio.CancelledError() from err
                raise
        finally:
            await self._slots.give_back(self._device_id, token)

    async def _take_slot(self, plan: OperationPlan, token: str, order_key: str) -> None:
        """One of the device's slots: at once if one is free, else when this target's turn
        comes."""
        info = workflow.info()
        request = SlotRequest(
            plan.device_id or self._device_id,
            token,
            WorkflowRef(info.workflow_id, info.run_id),
            plan.device_capacity,
            order_key,
        )

        def waiting() -> None:
            self._step = "waiting for a device slot"

        await self._slots.take(request, waiting)


def _resolution(outcome: TaskOutcome) -> str:
    if outcome.error_type:
        return "the task could not run"
    if outcome.exit_status is None:
        return "the task ran"
    return f"the task ran and exited with status {outcome.exit_status}"


async def _leave_gate(operation_id: str) -> None:
    """Leave the credential's gate and tell the next operation it is its turn."""
    follower = await _local(steps.leave_gate, GateCheck(operation_id))
    if follower is not None:
        await _signal(follower, "gate_open")


async def _signal(ref: WorkflowRef, signal: str) -> None:
    try:
        await workflow.get_external_workflow_handle(ref.workflow_id, run_id=ref.run_id).signal(
            signal
        )
    except FailureError:
        # Its workflow has ended (terminated): the next operation's gate check finds it.
        workflow.logger.warning("could not signal %s: it has ended", ref.workflow_id)
