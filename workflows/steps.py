"""The activities workflows call: each one's name and types, declared once.

Workflows call these declarations (``workflow.execute_activity(steps.prepare, …)``), so mypy
checks the input and output of every call. The classes in ``activities/`` implement them with
``@implements(steps.prepare)``, which registers the implementation under the declared name and
makes mypy check its signature against the declaration. A workflow therefore imports no store,
executor or client code, and a renamed or retyped step fails the type check on both sides.

Names are part of every recorded history: never rename one that a released workflow calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar, cast, overload

from temporalio import activity

from workflows.contracts import (
    Admission,
    Beginning,
    CallbackInput,
    CertApproval,
    CertFinish,
    CertRequested,
    CertStep,
    ChangeOutcome,
    ChildNotStarted,
    ChildrenRequest,
    ChildStart,
    CommitInput,
    CommitOutcome,
    DelayedOperation,
    DelayedOutcome,
    Departure,
    DuePage,
    DueQuery,
    DueRequests,
    FinishInput,
    GateCheck,
    JitRemoval,
    OperationPlan,
    ProbeOutcome,
    PublishOutcome,
    PublishStep,
    PublishTarget,
    RegisterInput,
    RenewalSweep,
    SlotClaim,
    SlotRelease,
    SlotRequest,
    StepInput,
    TaskOutcome,
    TaskRunEnd,
    TaskRunPlan,
    TaskRunStart,
    TaskStep,
    WorkflowRef,
)

_P = TypeVar("_P")
_PI = TypeVar("_PI")
_R = TypeVar("_R")
_S = TypeVar("_S")
_F = TypeVar("_F", bound=Callable[..., Any])
_NAMES: dict[Callable[..., Any], str] = {}
DECLARATION = "a declaration: the worker runs its implementation, in activities/"


def _declare(name: str) -> Callable[[_F], _F]:
    def apply(declaration: _F) -> _F:
        _NAMES[declaration] = name
        return activity.defn(name=name)(declaration)

    return apply


class _Implementation(Protocol[_PI, _R]):
    """What ``implements(declaration)`` returns: a decorator that keeps the method's own type
    (sync or async) and accepts only a method taking ``_PI`` and giving ``_R``."""

    @overload
    def __call__(
        self, method: Callable[[_S, _PI], Coroutine[Any, Any, _R]]
    ) -> Callable[[_S, _PI], Coroutine[Any, Any, _R]]: ...

    @overload
    def __call__(self, method: Callable[[_S, _PI], _R]) -> Callable[[_S, _PI], _R]: ...


def implements(declaration: Callable[[_P], Awaitable[_R]]) -> _Implementation[_P, _R]:
    """Mark a method as the implementation of ``declaration``; sync (run in the worker's thread
    pool) or async, it must take the declared input and give the declared output."""
    defn: Any = activity.defn(name=_NAMES[declaration])
    return cast(_Implementation[_P, _R], defn)


def declared_names() -> frozenset[str]:
    """Every declared activity name: the worker must implement each one."""
    return frozenset(_NAMES.values())


# The credential gate (activities/gate.py), local activities.
@_declare("keyturn.register")
async def register(request: RegisterInput) -> Admission:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.leave_gate")
async def leave_gate(check: GateCheck) -> WorkflowRef | None:
    raise NotImplementedError(DECLARATION)


# An operation's first step since revision 1 (activities/begin.py): register and, if the
# operation holds the gate, prepare and claim its first device slot, in one local activity.
@_declare("keyturn.begin")
async def begin(request: RegisterInput) -> Beginning:
    raise NotImplementedError(DECLARATION)


# Both of the above, as an operation ends, in one transaction (one local activity).
@_declare("keyturn.depart")
async def depart(check: GateCheck) -> Departure:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.check_gate")
async def check_gate(check: GateCheck) -> bool:
    raise NotImplementedError(DECLARATION)


# Device slots (activities/device_slots.py), local activities. A request's answer is None in
# histories of earlier releases, whose device semaphore signalled every grant.
@_declare("keyturn.request_device_slot")
async def request_device_slot(request: SlotRequest) -> SlotClaim | None:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.release_device_slot")
async def release_device_slot(release: SlotRelease) -> None:
    raise NotImplementedError(DECLARATION)


# A waiter's check, now and then, that every holder of the device still runs.
@_declare("keyturn.check_device_slots")
async def check_device_slots(request: SlotRequest) -> SlotClaim:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.workflows_running")
async def workflows_running(refs: list[WorkflowRef]) -> list[bool]:
    raise NotImplementedError(DECLARATION)


# The store side of the change protocol (activities/store_steps.py).
@_declare("keyturn.prepare")
async def prepare(step: StepInput) -> OperationPlan:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.commit")
async def commit(step: CommitInput) -> CommitOutcome:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.note_late_cancel")
async def note_late_cancel(step: CommitInput) -> None:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.finish")
async def finish(result: FinishInput) -> None:
    raise NotImplementedError(DECLARATION)


# Chained operations (activities/child_planning.py).
@_declare("keyturn.plan_children")
async def plan_children(request: ChildrenRequest) -> list[ChildStart]:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.child_not_started")
async def child_not_started(request: ChildNotStarted) -> None:
    raise NotImplementedError(DECLARATION)


# Automatic triggers (activities/triggers.py): a sweep's pages and requests, a delayed operation.
@_declare("keyturn.due_page")
async def due_page(query: DueQuery) -> DuePage:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.request_due")
async def request_due(batch: DueRequests) -> int:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.request_delayed")
async def request_delayed(delayed: DelayedOperation) -> DelayedOutcome:
    raise NotImplementedError(DECLARATION)


# After a jit-create committed: a delayed jit-remove ends the account when its time is up
# (activities/triggers.py); returns the delayed workflow's id.
@_declare("keyturn.schedule_jit_removal")
async def schedule_jit_removal(removal: JitRemoval) -> str:
    raise NotImplementedError(DECLARATION)


# Telling the requesters the outcome (activities/callbacks.py): close the list of callback URLs
# as the operation ends (a local activity; how many), then POST to each, retried by Temporal.
@_declare("keyturn.close_callbacks")
async def close_callbacks(check: GateCheck) -> int:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.deliver_callback")
async def deliver_callback(request: CallbackInput) -> None:
    raise NotImplementedError(DECLARATION)


# The target side (activities/executor_steps.py), on the device's zone task queue.
@_declare("keyturn.change")
async def change(step: StepInput) -> ChangeOutcome:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.probe")
async def probe(step: StepInput) -> ProbeOutcome:
    raise NotImplementedError(DECLARATION)


# Certificates (activities/certificates.py): the store side on the main task queue (opening and
# finishing an operation: local activities), the CA's calls there too, publishing on the zone
# task queue of each device.
@_declare("keyturn.cert_open")
async def cert_open(step: CertStep) -> None:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.cert_finish")
async def cert_finish(finish: CertFinish) -> None:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.cert_request")
async def cert_request(step: CertStep) -> CertRequested:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.cert_approved")
async def cert_approved(approval: CertApproval) -> None:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.cert_sign")
async def cert_sign(step: CertStep) -> None:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.cert_revoke")
async def cert_revoke(step: CertStep) -> None:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.cert_publish_plan")
async def cert_publish_plan(step: CertStep) -> list[PublishTarget]:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.cert_publish")
async def cert_publish(step: PublishStep) -> PublishOutcome:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.cert_renew_due")
async def cert_renew_due(sweep: RenewalSweep) -> int:
    raise NotImplementedError(DECLARATION)


# Only workflows started before the gate and the device-slot workflow (workflows/legacy/) call
# these (activities/legacy/slot_rows.py).
@_declare("keyturn.commit")
async def commit_v1(step: CommitInput) -> CommitOutcome | None:
    """``commit`` as released workflows called it: it answered nothing then."""
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.acquire_slot")
async def acquire_slot(step: StepInput) -> None:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.release_slot")
async def release_slot(step: StepInput) -> None:
    raise NotImplementedError(DECLARATION)


# Tasks (activities/task_steps.py): a run's start and end and each target's preparation (local
# activities), and the task itself, on the device's zone task queue.
@_declare("keyturn.begin_task_run")
async def begin_task_run(start: TaskRunStart) -> TaskRunPlan:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.prepare_task_target")
async def prepare_task_target(step: TaskStep) -> OperationPlan:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.run_task")
async def run_task(step: TaskStep) -> TaskOutcome:
    raise NotImplementedError(DECLARATION)


@_declare("keyturn.end_task_run")
async def end_task_run(end: TaskRunEnd) -> str:
    raise NotImplementedError(DECLARATION)
