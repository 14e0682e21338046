"""The operation workflow as it was before the credential gate: kept, unchanged in what it asks
Temporal for, so operations started by an earlier Keyturn replay and finish after an upgrade.

``OperationWorkflow`` runs this when its history has no ``one-writer-gate`` patch marker. New
operations never come here. Delete it (and ``keyturn.acquire_slot``/``release_slot``/
``child_not_started``) once no such operation can still be running.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    WorkflowAlreadyStartedError,
    is_cancelled_exception,
)
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from workflows import steps
    from workflows.contracts import (
        NON_RETRYABLE_KINDS,
        NOTHING_SENT_DETAIL,
        SA_CREDENTIAL,
        SA_DEVICE,
        SA_KIND,
        SA_STATUS,
        SA_TRIGGER,
        WORKFLOW_NAME,
        ChildNotStarted,
        ChildrenRequest,
        CommitInput,
        FailureKind,
        FinishInput,
        OperationInput,
        OperationPlan,
        OperationResult,
        StepInput,
    )

_P = TypeVar("_P")
_R = TypeVar("_R")
# Executor activities heartbeat every 2 s: a worker lost mid-call is retried after this long.
EXECUTOR_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
STORE_TIMEOUT = timedelta(seconds=30)
# Store steps are local activities: short, idempotent, and on the workflow's own worker, so they
# cost no task-queue round trip (bench/rotate.py measured 31 → 21 history events per change).
# They retry until the store answers: losing a commit is never an option.
# Waiting for a device slot is a durable retry loop: no attempt limit, short steady interval.
SLOT_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=1.5,
    maximum_interval=timedelta(seconds=3),
)
STORE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)

# Failures that prove the change never reached the target: no probe needed.
NOTHING_SENT = (
    FailureKind.CONNECT_FAILED,
    FailureKind.HOST_KEY_MISMATCH,
    FailureKind.AUTHENTICATION_FAILED,
)


def _initial_search_attributes(op: OperationInput) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(SA_CREDENTIAL, op.credential_id),
            SearchAttributePair(SA_DEVICE, op.device_id),
            SearchAttributePair(SA_KIND, op.kind),
            SearchAttributePair(SA_TRIGGER, op.trigger),
            SearchAttributePair(SA_STATUS, "scheduled"),
        ]
    )


class LegacyOperation:
    def __init__(self) -> None:
        self._status = "scheduled"
        self._step = "queued"
        self._resolution = "verified: the new secret logs in"

    def status(self) -> dict[str, str]:
        return {"status": self._status, "step": self._step}

    async def run(self, op: OperationInput) -> OperationResult:
        step = StepInput(op.operation_id, via_reconcile=op.kind == "reconcile")
        self._move("running", "prepare")
        plan = await workflow.execute_local_activity(
            steps.prepare,
            step,
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )
        try:
            finish = await self._on_device(op, step, plan)
        except asyncio.CancelledError:
            # Canceled (API or Web UI) before the commit began: record it, keep every secret
            # version as it is (a pending one may be live on the target), and end as canceled.
            await self._store(
                steps.finish,
                FinishInput(op.operation_id, "canceled", f"canceled during {self._step}"),
            )
            self._move("canceled", "done")
            raise
        self._step = "finish"
        children: tuple[str, ...] = ()
        if finish is None:
            # Shielded: a cancel request arriving now waits for the commit to land.
            await asyncio.shield(
                self._store(steps.commit_v1, CommitInput(op.operation_id, self._resolution))
            )
            result = OperationResult(op.operation_id, "succeeded", self._resolution)
            if op.kind != "verify":
                children = await self._start_children(op, "parent-changed")
        else:
            await self._store(steps.finish, finish)
            result = OperationResult(
                op.operation_id, finish.status, finish.resolution, finish.error_type, finish.error
            )
            if finish.out_of_sync and plan.auto_reconcile and op.kind == "verify":
                children = await self._start_children(op, "reconcile")
        self._move(result.status, "done")
        return dataclasses.replace(result, children=children)

    async def _on_device(
        self, op: OperationInput, step: StepInput, plan: OperationPlan
    ) -> FinishInput | None:
        """The executor steps, holding one of the device's concurrency slots throughout."""
        self._step = "waiting for a device slot"
        # Local: the wait is a retry loop the worker drives with durable timers once it is long.
        await workflow.execute_local_activity(
            steps.acquire_slot,
            step,
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=SLOT_RETRY,
        )
        try:
            if op.kind == "verify":
                return await self._verify(step, plan)
            finish = await self._change(step, plan)
            if (
                finish is not None
                and finish.error_type == FailureKind.AUTHENTICATION_FAILED
                and plan.auto_reconcile
                and not step.via_reconcile
            ):
                # The current secret is refused: take control back with the reconcile account,
                # reusing the same pending secret.
                step = dataclasses.replace(step, via_reconcile=True)
                finish = await self._change(step, plan)
                self._resolution = "reconciled: " + self._resolution
            return finish
        finally:
            await self._store(steps.release_slot, step)

    async def _start_children(self, op: OperationInput, reason: str) -> tuple[str, ...]:
        """Start chained operations (ABANDON): their outcome never changes this one's."""
        self._step = "children"
        starts = await workflow.execute_local_activity(
            steps.plan_children,
            ChildrenRequest(op.operation_id, reason),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )
        started = []
        for child in starts:
            try:
                await workflow.start_child_workflow(
                    WORKFLOW_NAME,
                    child.operation,
                    id=child.workflow_id,
                    task_queue=workflow.info().task_queue,
                    parent_close_policy=ParentClosePolicy.ABANDON,
                    search_attributes=_initial_search_attributes(child.operation),
                    memo={"operation_id": child.operation.operation_id},
                )
                started.append(child.operation.operation_id)
            except WorkflowAlreadyStartedError:
                await self._store(
                    steps.child_not_started,
                    ChildNotStarted(
                        child.operation.operation_id,
                        f"an operation of this kind was already running ({child.workflow_id})",
                    ),
                )
        return tuple(started)

    async def _change(self, step: StepInput, plan: OperationPlan) -> FinishInput | None:
        """None means: commit. Otherwise the terminal state to record."""
        self._step = "change"
        try:
            outcome = await self._executor(steps.change, step, plan)
        except ActivityError as err:
            _reraise_cancel(err)
            kind, message = _cause(err)
            if kind in NOTHING_SENT or _details(err) == [NOTHING_SENT_DETAIL]:
                return FinishInput(
                    step.operation_id,
                    "failed",
                    "nothing was sent to the target",
                    kind,
                    message,
                    pending_version_fate="failed",
                )
            # The change may have been applied: ask the target before deciding.
            return await self._after_probe(step, plan, kind, message)
        if outcome.already_applied:
            self._resolution = "probe on retry: the new secret logs in (already live), adopted"
        self._step = "verify"
        return await self._after_probe(step, plan, None, None)

    async def _after_probe(
        self, step: StepInput, plan: OperationPlan, kind: str | None, message: str | None
    ) -> FinishInput | None:
        try:
            probe = await self._executor(steps.probe, step, plan)
        except ActivityError as err:
            _reraise_cancel(err)
            probe_kind, probe_message = _cause(err)
            return FinishInput(
                step.operation_id,
                "failed",
                "outcome unknown: the target could not be probed",
                kind or probe_kind,
                message or probe_message,
                out_of_sync=True,
            )
        if probe.pending_works:
            if kind is not None:
                self._resolution = f"probe after {kind}: the new secret logs in, adopted"
            return None  # the target has the new secret: commit it
        if probe.current_works:
            return FinishInput(
                step.operation_id,
                "failed",
                "probe: the current secret still logs in",
                kind or "ChangeNotApplied",
                message or "the change reported success but the new secret does not log in",
                pending_version_fate="failed",
            )
        # Neither secret logs in: keep every version for recovery, flag the credential.
        return FinishInput(
            step.operation_id,
            "failed",
            "probe: neither the pending nor the current secret logs in",
            kind or "OutOfSync",
            message or "neither the new nor the old secret logs in",
            out_of_sync=True,
        )

    async def _verify(self, step: StepInput, plan: OperationPlan) -> FinishInput:
        self._step = "verify"
        try:
            probe = await self._executor(steps.probe, step, plan)
        except ActivityError as err:
            _reraise_cancel(err)
            kind, message = _cause(err)
            return FinishInput(
                step.operation_id, "failed", "the target could not be reached", kind, message
            )
        if probe.current_works:
            return FinishInput(step.operation_id, "succeeded", "the current secret logs in")
        return FinishInput(
            step.operation_id,
            "failed",
            "the current secret is refused",
            "OutOfSync",
            "the vault's current secret does not log in",
            out_of_sync=True,
        )

    async def _executor(
        self, activity: Callable[[StepInput], Awaitable[_R]], step: StepInput, plan: OperationPlan
    ) -> _R:
        return await workflow.execute_activity(
            activity,
            step,
            task_queue=plan.zone_task_queue,
            start_to_close_timeout=timedelta(seconds=plan.step_timeout_seconds),
            heartbeat_timeout=EXECUTOR_HEARTBEAT_TIMEOUT,
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=plan.retry_interval_seconds),
                backoff_coefficient=max(plan.backoff, 1.0),
                maximum_attempts=plan.max_attempts,
                non_retryable_error_types=list(NON_RETRYABLE_KINDS),
            ),
        )

    async def _store(self, activity: Callable[[_P], Awaitable[object]], arg: _P) -> None:
        await workflow.execute_local_activity(
            activity, arg, start_to_close_timeout=STORE_TIMEOUT, retry_policy=STORE_RETRY
        )

    def _move(self, status: str, step: str) -> None:
        self._status = status
        self._step = step
        workflow.upsert_search_attributes([SA_STATUS.value_set(status)])


def _reraise_cancel(err: ActivityError) -> None:
    """An activity interrupted by a cancel request is a cancel, not a target failure."""
    if is_cancelled_exception(err):
        raise asyncio.CancelledError() from err


def _details(err: ActivityError) -> list[object]:
    cause = err.cause
    return list(cause.details) if isinstance(cause, ApplicationError) else []


def _cause(err: ActivityError) -> tuple[str, str]:
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return cause.type or "ApplicationError", cause.message
    return type(cause).__name__ if cause else "ActivityError", str(cause or err)
