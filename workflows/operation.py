"""The operation workflow: the change protocol of DESIGN.md, as durable orchestration.

register → wait for the credential's gate → prepare (store) → change (executor, retried per
policy) → verify (executor) → commit (store, compare-and-set) → children → leave the gate.
A jit-create follows the same path (its template creates the account) and, once committed,
schedules the account's removal; activate, deactivate and jit-remove run their template, then
log in to see the account in the state asked for (``_switch``): no secret changes.

- One writer per credential: every operation registers at its credential's gate (store/gate.py)
  and, if another is ahead, waits for that one's signal; leaving signals the next. No workflow
  per credential outlives the operations in flight.
- Device slots come from the device's semaphore workflow (workflows/device_slots.py): taken
  before an executor call, given back before sleeping between attempts, so an operation waiting
  out a retry interval or a lockout window holds no slot. Waiting records no timer and no retry.
- When a change fails in a way that leaves the outcome open, or a cancel arrives after the new
  secret may have been sent, the workflow probes before deciding, so the vault only ever moves to
  a secret the target has been seen to accept.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    FailureError,
    TimeoutError,
    WorkflowAlreadyStartedError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from workflows import steps
    from workflows.contracts import (
        CALLBACK_WORKFLOW,
        CHOSEN_SECRET_KINDS,
        NON_RETRYABLE_KINDS,
        NOTHING_SENT_DETAIL,
        NOTHING_SENT_KINDS,
        OPERATION_REVISION,
        SA_CREDENTIAL,
        SA_DEVICE,
        SA_KIND,
        SA_OPERATION,
        SA_STATUS,
        SA_TRIGGER,
        SWITCH_KINDS,
        WORKFLOW_NAME,
        Admission,
        Beginning,
        CallbackInput,
        ChangeOutcome,
        ChildNotStarted,
        ChildrenRequest,
        ChildStart,
        CommitInput,
        CommitOutcome,
        Departure,
        FailureKind,
        FinishInput,
        GateCheck,
        JitRemoval,
        OperationInput,
        OperationPlan,
        OperationResult,
        ProbeOutcome,
        RegisterInput,
        SlotClaim,
        SlotRelease,
        SlotRequest,
        StepInput,
        WorkflowRef,
        callback_workflow_id,
        initial_search_attributes,
        slot_token,
    )
    from workflows.legacy.operation_v1 import LegacyOperation
    from workflows.slot_holder import SlotHolder

_P = TypeVar("_P")
_R = TypeVar("_R")
# Histories without this marker were started before the gate: they replay LegacyOperation.
GATE_PATCH = "one-writer-gate"
# Operations that ask for a callback start its workflow when they end (none did before).
CALLBACK_PATCH = "callback-on-end"
# Histories with this marker close the operation's list of callback URLs as it ends (every
# requester's, joins included) and tell each; before, only a starting request's URL was told.
CALLBACKS_CLOSED_PATCH = "callbacks-closed-on-end"
# The operation id became a search attribute: histories without the marker did not upsert it.
OPERATION_ID_PATCH = "operation-id-search-attribute"
# Histories with this marker verify inside the change activity (StepInput.verify_after_change).
VERIFY_IN_CHANGE_PATCH = "verify-in-change"
# One marker for every patch above: a history that has it behaves as if each of them were
# recorded. Every patch costs its history a marker and a search-attribute upsert; four of them
# were a fifth of an operation's events. Histories recorded before it still call each patch.
# The next change to this workflow adds its own patch beside this one, as before.
ALL_PATCHES_OF_2026_11 = "all-patches-of-2026-11"
# Its successor, the one marker of histories from this release on: every patch above, and an
# operation that departs in one step (leaves its gate and closes its callback URLs: depart).
# Histories with the 2026-11 marker still leave, then close, in two.
ALL_PATCHES_OF_2026_12 = "all-patches-of-2026-12"
STORE_TIMEOUT = timedelta(seconds=30)
COMMIT_TIMEOUT = timedelta(seconds=10)
# Store steps are local activities: short, idempotent, and on the workflow's own worker, so they
# cost no task-queue round trip. They retry until the store answers (losing a commit is never an
# option), except for errors that say retrying cannot help.
STORE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=["NotRegistrable", "ConfigurationError"],
)
# A queued operation asks whether the one ahead still lives this often: it is signalled when its
# turn comes, so this only matters if the one ahead was terminated without leaving.
GATE_CHECK_INTERVAL = timedelta(minutes=5)
VERIFIED = "verified: the new secret logs in"


class NewerRevision(RuntimeError):
    """A start naming a revision newer than this worker's: it fails the workflow task, not the
    workflow (not a Temporal FailureError), so the operation waits for a newer worker."""


@workflow.defn(name=WORKFLOW_NAME)
class OperationWorkflow:
    def __init__(self) -> None:
        self._legacy: LegacyOperation | None = None
        self._all_patches = False  # set by run, first thing (see _patched)
        self._departs_at_once = False  # the history has ALL_PATCHES_OF_2026_12
        self._status = "scheduled"
        self._step = "register"
        self._resolution = VERIFIED
        self._operation_id = ""
        self._device_id = ""
        self._order_key = ""
        self._waiting_for: str | None = None
        self._gate_open = False
        # The change step left the gate (with its commit): how many requesters to tell.
        self._departed_telling: int | None = None
        self._slots = SlotHolder(self._call)
        self._slot: str | None = None  # the device slot token held (or asked for) now
        # The slot is a claim in the store (histories of earlier releases: the semaphore's).
        self._slot_in_store = False
        self._slots_asked = 0
        # The begin step's claim on the first slot, until the first device step waits for it.
        self._begun_claim: SlotClaim | None = None
        self._may_have_sent = False  # a change activity was started: the pending may be live
        self._canceled = False
        self._committing = False  # the commit has begun: a cancel is too late
        self._committed: CommitOutcome | None = None  # what the change step's own commit said
        self._late_cancel = False
        self._kind = ""  # the operation's kind, once it runs
        # The starter named this revision and no earlier release began the run: the operation
        # begins in one step and its change step commits (OperationInput.revision).
        self._newest = False

    @workflow.query
    def status(self) -> dict[str, str | None]:
        if self._legacy is not None:
            return dict(self._legacy.status())
        return {
            "status": self._status,
            "step": self._step,
            "operation_id": self._operation_id,
            "waiting_for": self._waiting_for,
        }

    @workflow.signal(name="gate_open")
    def gate_open(self) -> None:
        """The operation ahead on the credential has left the gate: this one's turn."""
        self._gate_open = True

    @workflow.signal(name="slot_granted")
    def slot_granted(self, token: str) -> None:
        self._slots.granted(token)

    @staticmethod
    def _begun_by_an_earlier_release() -> bool:
        """Whether a start that names a revision was nevertheless begun by a worker of an
        earlier release (during an upgrade: it ignores the field and records its patch marker
        first). Only a replay can tell, by that marker; a first run records none, so its
        replays find none either."""
        if not workflow.unsafe.is_replaying():
            return False
        return workflow.patched(ALL_PATCHES_OF_2026_12) or workflow.patched(ALL_PATCHES_OF_2026_11)

    def _patched(self, patch_id: str) -> bool:
        """``workflow.patched``, answered True without a marker once the history has the
        marker that stands for all of them (ALL_PATCHES_OF_2026_11)."""
        return self._all_patches or workflow.patched(patch_id)

    @workflow.run
    async def run(self, op: OperationInput) -> OperationResult:
        if op.revision > OPERATION_REVISION:
            # A starter of a newer release asked for steps this worker does not know. Running
            # this release's steps would write a history the newer release cannot replay, so
            # the workflow task fails instead: Temporal tries it again, and a worker of that
            # release runs it. This is what lets a later revision drop or reorder a command.
            raise NewerRevision(
                f"operation revision {op.revision} is newer than this worker's "
                f"({OPERATION_REVISION}): a worker of a newer Keyturn runs it"
            )
        # Asked first, in the first workflow task: a history recorded before the marker existed
        # has none here, and replays each patch's own marker below.
        # A new run records only the newest marker; a history has at most one of the two.
        self._newest = op.revision >= OPERATION_REVISION and not self._begun_by_an_earlier_release()
        if self._newest:
            # Its starter asked for this revision (the start input is in the history): every
            # patch applies, and no marker is needed to say so.
            self._departs_at_once = self._all_patches = True
        else:
            self._departs_at_once = workflow.patched(ALL_PATCHES_OF_2026_12)
            self._all_patches = self._departs_at_once or workflow.patched(ALL_PATCHES_OF_2026_11)
        if not self._patched(GATE_PATCH):
            self._legacy = LegacyOperation()
            return await self._legacy.run(op)
        info = workflow.info()
        self._kind = op.kind
        self._operation_id = op.operation_id or workflow.uuid4().hex
        registration = RegisterInput(
            self._operation_id,
            op.credential_id,
            op.kind,
            op.trigger,
            info.workflow_id,
            info.run_id,
            op.parent_operation_id,
            op.version_id,
            op.requested_by,
            op.ttl_seconds,
        )
        try:
            beginning = await self._begin(op, registration)
        except asyncio.CancelledError:
            # Canceled while registering: the row may exist; record it and leave the queue.
            if self._newest:
                await self._canceled_while_beginning(op)
            else:
                with contextlib.suppress(ActivityError):  # no row: nothing to record
                    await self._call(
                        steps.finish,
                        FinishInput(self._operation_id, "canceled", "canceled before it started"),
                    )
            await self._leave(op, ending=False)
            raise
        admission = beginning.admission
        self._device_id = admission.device_id
        if beginning.slot is not None:
            self._slots_asked = 1
            self._slot = slot_token(self._operation_id, 1)
            self._slot_in_store = True
            self._begun_claim = beginning.slot
        self._order_key = admission.order_key
        self._status = "queued" if admission.queued else "running"
        # Started with the SDK alone, the workflow has no search attributes or memo yet.
        updates = [
            SA_CREDENTIAL.value_set(op.credential_id),
            SA_DEVICE.value_set(admission.device_id),
            SA_KIND.value_set(op.kind),
            SA_TRIGGER.value_set(op.trigger),
            SA_STATUS.value_set(self._status),
        ]
        if self._patched(OPERATION_ID_PATCH):
            updates.append(SA_OPERATION.value_set(self._operation_id))
        workflow.upsert_search_attributes(updates)
        if workflow.memo_value("operation_id", None, type_hint=str) != self._operation_id:
            workflow.upsert_memo({"operation_id": self._operation_id})
        try:
            result = await self._gated(op, admission, beginning.plan)
        except BaseException:
            # Whatever happened, the next operation on the credential must be told.
            await self._to_the_end(self._leave_gate)
            raise
        await self._leave(op, ending=True)
        if self._canceled:
            raise asyncio.CancelledError(result.resolution)
        return result

    async def _canceled_while_beginning(self, op: OperationInput) -> None:
        """The begin step was canceled before it ran (or between two tries): a try that
        committed may have claimed the first slot and stored a pending secret, never sent."""
        if op.device_id:
            await self._slots.give_back(op.device_id, slot_token(self._operation_id, 1))
        # No row: nothing to record (a local activity failing for good may surface bare).
        with contextlib.suppress(ActivityError, ApplicationError):
            await self._call(
                steps.finish,
                FinishInput(
                    self._operation_id,
                    "canceled",
                    "canceled before it started",
                    pending_version_fate="failed",
                ),
            )

    async def _begin(self, op: OperationInput, registration: RegisterInput) -> Beginning:
        """Register; in this revision, also prepare and claim the first slot if the operation
        holds its credential's gate (one step: steps.begin)."""
        if self._newest:
            return await self._call(steps.begin, registration)
        return Beginning(await self._call(steps.register, registration))

    async def _gated(
        self, op: OperationInput, admission: Admission, prepared: OperationPlan | None
    ) -> OperationResult:
        step = StepInput(self._operation_id, via_reconcile=op.kind == "reconcile")
        if admission.queued:
            try:
                if self._newest:
                    self._raise_if_canceled()  # asked for while the begin step ran
                await self._wait_for_turn(admission)
            except asyncio.CancelledError:
                self._canceled = True
                queued = FinishInput(
                    self._operation_id,
                    "canceled",
                    f"canceled while queued behind operation {self._waiting_for}",
                )
                await self._call(steps.finish, queued)
                self._move("canceled", "done")
                return _result(queued)
        if admission.queued:
            self._move("running", "prepare")
        self._step = "prepare"
        plan: OperationPlan | None = None
        finish: FinishInput | None
        try:
            # Prepared by the begin step already, unless the operation was queued.
            plan = prepared if prepared is not None else await self._call(steps.prepare, step)
            finish = await self._on_device(op, step, plan)
        except asyncio.CancelledError:
            if self._committed is not None:
                # The change step had committed (a cancel while its slot was given back):
                # too late.
                self._late_cancel = True
                finish = None
            else:
                self._canceled = True
                finish = await self._after_cancel(step, plan)
        except (ActivityError, ApplicationError) as err:
            # A local activity failing for good surfaces as its ApplicationError (seen with this
            # SDK), not wrapped in an ActivityError.
            cause = err.cause if isinstance(err, ActivityError) else err
            if plan is not None or not isinstance(cause, ApplicationError):
                raise
            kind, message = cause.type or "", cause.message
            if kind != FailureKind.CONFIGURATION:
                raise
            # Prepare refused the request (a chosen secret it cannot act with, say, from a
            # program that started the workflow itself): record why; nothing was sent. Before,
            # such a workflow failed with its row left open; none can be running to replay.
            finish = FinishInput(
                self._operation_id, "failed", "nothing was sent to the target", kind, message
            )
        children: tuple[str, ...] = ()
        if finish is None:
            assert plan is not None
            # Once the commit begins nothing stops it: a cancel now is answered "too late".
            self._committing = True
            finish, children = await self._to_the_end(
                lambda: self._commit_and_chain(op, step, plan)
            )
        else:
            await self._to_the_end(lambda: self._call(steps.finish, finish))
            if finish.out_of_sync and plan and plan.auto_reconcile and op.kind == "verify":
                children = await self._start_children(op, "reconcile")
        if finish is None:
            status = "canceled" if self._canceled else "succeeded"
            if self._late_cancel:
                self._resolution += " (a cancel arrived after the commit had begun: too late)"
                await self._call(
                    steps.note_late_cancel, CommitInput(self._operation_id, self._resolution)
                )
            result = OperationResult(self._operation_id, status, self._resolution)
        else:
            result = _result(finish)
        self._move(result.status, "done")
        return dataclasses.replace(result, children=children)

    async def _wait_for_turn(self, admission: Admission) -> None:
        self._waiting_for = admission.waiting_for
        self._step = f"queued behind operation {admission.waiting_for}"
        while not self._gate_open:
            try:
                await workflow.wait_condition(lambda: self._gate_open, timeout=GATE_CHECK_INTERVAL)
            except builtins.TimeoutError:
                if await self._call(steps.check_gate, GateCheck(self._operation_id)):
                    self._gate_open = True
        self._waiting_for = None

    async def _on_device(
        self, op: OperationInput, step: StepInput, plan: OperationPlan
    ) -> FinishInput | None:
        """The executor steps. None means: commit. Device slots are given back at the end."""
        try:
            if op.kind == "verify":
                return await self._verify(step, plan)
            if op.kind in CHOSEN_SECRET_KINDS:
                return await self._try_chosen(step, plan)
            if op.kind in SWITCH_KINDS:
                return await self._switch(op.kind, step, plan)
            finish = await self._change(step, plan, commit_too=self._newest)
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
            await self._drop_slot()

    async def _after_cancel(
        self, step: StepInput, plan: OperationPlan | None
    ) -> FinishInput | None:
        """A cancel stopped the device steps. If the new secret may have reached the target,
        ask the target which secret it has, so vault and target agree before the operation
        ends canceled. None: the new secret is live, commit it (as canceled)."""
        reason = f"canceled during {self._step}"
        if plan is not None and self._may_have_sent and self._kind in SWITCH_KINDS:
            return await self._switch_after_cancel(step, plan, reason)
        if plan is None or not self._may_have_sent:
            return FinishInput(
                self._operation_id,
                "canceled",
                f"{reason}: nothing was sent to the target",
                pending_version_fate="failed",
            )
        self._step = "probe after cancel"
        try:
            probe = await self._probe(
                dataclasses.replace(step, login_only=True),
                plan,
                "canceled",
                f"{reason}; the target could not be probed",
            )
        finally:
            await self._drop_slot()
        if isinstance(probe, FinishInput):
            return probe
        if probe.pending_works:
            self._resolution = f"{reason}; probe: the new secret logs in, adopted"
            return None
        if probe.current_works:
            return FinishInput(
                self._operation_id,
                "canceled",
                f"{reason}; probe: the current secret still logs in",
                pending_version_fate="failed",
            )
        return FinishInput(
            self._operation_id,
            "canceled",
            f"{reason}; probe: neither the pending nor the current secret logs in",
            "OutOfSync",
            "neither the new nor the old secret logs in",
            out_of_sync=True,
        )

    async def _switch_after_cancel(
        self, step: StepInput, plan: OperationPlan, reason: str
    ) -> FinishInput:
        """An activate, deactivate or jit-remove canceled once its template may have run: log
        in to see which state the account is in, so the credential's "active" says so. The
        secret never moved, so whatever the login shows, nothing is out of sync."""
        self._step = "probe after cancel"
        try:
            probe = await self._executor(
                steps.probe, dataclasses.replace(step, login_only=True), plan
            )
        except ActivityError:
            return FinishInput(
                self._operation_id, "canceled", f"{reason}; the target could not be asked"
            )
        finally:
            await self._drop_slot()
        works = bool(probe.current_works)
        state = "the login works" if works else "the login is refused"
        return FinishInput(
            self._operation_id, "canceled", f"{reason}; probe: {state}", login_works=works
        )

    async def _commit_and_chain(
        self, op: OperationInput, step: StepInput, plan: OperationPlan
    ) -> tuple[FinishInput | None, tuple[str, ...]]:
        self._step = "commit"
        status = "canceled" if self._canceled else "succeeded"
        # The change step may have committed already (a recorded answer says so).
        outcome = self._committed or await self._commit(
            CommitInput(self._operation_id, self._resolution, status=status)
        )
        if self._canceled and outcome.found_status == "succeeded":
            # The change step had committed before the cancel, and its answer was lost (its
            # worker died): the store's outcome stands, and the cancel came too late.
            self._canceled, self._late_cancel = False, True
            self._resolution = outcome.found_resolution or self._resolution
        if not outcome.committed:
            finish = await self._after_moved_current(step, plan, outcome.detail, status)
            if finish is not None:
                await self._call(steps.finish, finish)
                return finish, ()
        if op.kind == "jit-create":
            # The account exists from now on: its removal is scheduled before anything else,
            # canceled or not (a durable timer on the Temporal server, see triggers/delayed.py).
            await workflow.execute_activity(
                steps.schedule_jit_removal,
                JitRemoval(self._operation_id, op.ttl_seconds),
                start_to_close_timeout=STORE_TIMEOUT,
                retry_policy=STORE_RETRY,
            )
            return None, ()
        if self._canceled or op.kind == "verify" or op.kind in CHOSEN_SECRET_KINDS:
            return None, ()  # recovery by hand moves no chained credential
        return None, await self._start_children(op, "parent-changed", outcome.children)

    async def _after_moved_current(
        self, step: StepInput, plan: OperationPlan, detail: str, status: str
    ) -> FinishInput | None:
        """Commit found the vault's current secret is no longer the one prepare read: never
        overwrite it blindly; adopt whichever secret the target accepts."""
        try:
            probe = await self._probe(
                step, plan, "failed", f"{detail}; the target could not be probed"
            )
        finally:
            await self._drop_slot()
        if isinstance(probe, FinishInput):
            return probe
        if probe.pending_works:
            self._resolution = f"{detail}; probe: the new secret logs in, adopted"
            await self._commit(
                CommitInput(self._operation_id, self._resolution, adopt=True, status=status)
            )
            return None
        if probe.current_works:
            return FinishInput(
                self._operation_id,
                "failed",
                f"{detail}; probe: the newer current secret logs in, kept",
                "CurrentMoved",
                detail,
                pending_version_fate="failed",
            )
        return FinishInput(
            self._operation_id,
            "failed",
            f"{detail}; probe: neither the pending nor the current secret logs in",
            "OutOfSync",
            detail,
            out_of_sync=True,
        )

    async def _start_children(
        self, op: OperationInput, reason: str, planned: tuple[ChildStart, ...] | None = None
    ) -> tuple[str, ...]:
        """Start chained operations (ABANDON): their outcome never changes this one's. Each
        registers itself and queues at its own credential's gate. ``planned``: as the commit
        planned them; None asks plan_children (histories of earlier releases did so)."""
        self._step = "children"
        starts = (
            list(planned)
            if planned is not None
            else await self._call(steps.plan_children, ChildrenRequest(self._operation_id, reason))
        )
        started = []
        for child in starts:
            try:
                handle = await workflow.start_child_workflow(
                    WORKFLOW_NAME,
                    child.operation,
                    id=child.workflow_id,
                    task_queue=workflow.info().task_queue,
                    parent_close_policy=ParentClosePolicy.ABANDON,
                    search_attributes=initial_search_attributes(child.operation),
                    memo={"operation_id": child.operation.operation_id},
                )
                # Registered now (the child does it too, idempotently), so the parent lists
                # its children the moment it ends.
                await self._call(
                    steps.register,
                    RegisterInput(
                        child.operation.operation_id,
                        child.operation.credential_id,
                        child.operation.kind,
                        child.operation.trigger,
                        child.workflow_id,
                        handle.first_execution_run_id or "",
                        self._operation_id,
                    ),
                )
                started.append(child.operation.operation_id)
            except WorkflowAlreadyStartedError:
                await self._call(
                    steps.child_not_started,
                    ChildNotStarted(
                        child.operation.operation_id,
                        f"an operation of this kind was already running ({child.workflow_id}); "
                        "it covers this change",
                    ),
                )
        return tuple(started)

    async def _change(
        self, step: StepInput, plan: OperationPlan, *, commit_too: bool = False
    ) -> FinishInput | None:
        """None means: commit (or, if the change step did, ``self._committed`` says how it
        went). Otherwise the terminal state to record. ``commit_too``: the change step commits
        once the new secret logs in, with the resolution of a change verified at once."""
        self._step = "change"
        change_step = step
        if self._patched(VERIFY_IN_CHANGE_PATCH):
            commit = CommitInput(self._operation_id, VERIFIED) if commit_too else None
            change_step = dataclasses.replace(
                step, verify_after_change=True, commit=commit, depart=commit_too
            )
        try:
            outcome = await self._executor(steps.change, change_step, plan)
        except ActivityError as err:
            kind, message = _cause(err)
            if _sent_nothing(err):
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
        if outcome.committed is not None:
            self._committed = outcome.committed
            if outcome.departed:
                self._departed_telling = outcome.receivers
            return None  # verified and committed inside the change activity
        if outcome.verified:
            return None  # verified inside the change activity: commit
        return await self._after_probe(step, plan, None, None)

    async def _after_probe(
        self, step: StepInput, plan: OperationPlan, kind: str | None, message: str | None
    ) -> FinishInput | None:
        probe = await self._probe(
            step, plan, "failed", "outcome unknown: the target could not be probed", kind, message
        )
        if isinstance(probe, FinishInput):
            return probe
        if probe.pending_works:
            if kind is not None:
                self._resolution = f"probe after {kind}: the new secret logs in, adopted"
            return None  # the target has the new secret: commit it
        if probe.current_works is None:
            # jit-create: only the new account's secret was tried, and it does not log in.
            return FinishInput(
                step.operation_id,
                "failed",
                "probe: the new account's secret does not log in",
                kind or "ChangeNotApplied",
                message or "the account was not created with the new secret",
                pending_version_fate="failed",
            )
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

    async def _probe(
        self,
        step: StepInput,
        plan: OperationPlan,
        status: str,
        unknown: str,
        kind: str | None = None,
        message: str | None = None,
    ) -> ProbeOutcome | FinishInput:
        """Which secret logs in on the target; when the target cannot be asked, the terminal
        state to record (``status``, resolution ``unknown``, credential out of sync). ``kind``
        and ``message``: the error that made the question necessary, reported first."""
        try:
            return await self._executor(steps.probe, step, plan)
        except ActivityError as err:
            probe_kind, probe_message = _cause(err)
            return FinishInput(
                self._operation_id,
                status,
                unknown,
                kind or probe_kind,
                message or probe_message,
                out_of_sync=True,
            )

    async def _try_chosen(self, step: StepInput, plan: OperationPlan) -> FinishInput | None:
        """adopt and set-in-vault: the chosen secret (prepare made it this operation's pending
        one) becomes current only once it logs in; otherwise nothing changes on the credential.
        The probe tries that secret alone: the current one is not what was asked about, and
        each refused login spends the lockout budget. None means: commit."""
        self._step = "verify"
        try:
            probe = await self._executor(steps.probe, step, plan)
        except ActivityError as err:
            kind, message = _cause(err)
            return FinishInput(
                step.operation_id,
                "failed",
                "the target could not be asked: nothing changed",
                kind,
                message,
                pending_version_fate="failed",  # only a version this operation made is failed
            )
        if probe.pending_works:
            self._resolution = "verified: the chosen secret logs in, made current"
            return None
        return FinishInput(
            step.operation_id,
            "failed",
            "the chosen secret is refused: nothing changed",
            "SecretRefused",
            "the chosen secret does not log in on the target",
            pending_version_fate="failed",
        )

    async def _switch(self, kind: str, step: StepInput, plan: OperationPlan) -> FinishInput:
        """activate, deactivate, jit-remove: run the kind's template, then log in with the
        current secret to see the account in the state asked for (activate: the login works;
        the others: it is refused). That login decides, not the template's outcome: a template
        that failed on an account already in that state (unlocking one not locked) did what was
        asked. The secret never changes, so nothing here can put the credential out of sync."""
        self._step = kind
        wants_login = kind == "activate"
        error: tuple[str, str] | None = None
        try:
            await self._executor(steps.change, step, plan)
        except ActivityError as err:
            if _sent_nothing(err):
                return FinishInput(
                    step.operation_id, "failed", "nothing was sent to the target", *_cause(err)
                )
            error = _cause(err)
        self._step = "verify"
        asked = "the login works" if wants_login else "the login is refused"
        try:
            probe = await self._executor(
                steps.probe, dataclasses.replace(step, login_only=True), plan
            )
        except ActivityError as err:
            return FinishInput(
                step.operation_id,
                "failed",
                f"the target could not be asked whether {asked}",
                *(error or _cause(err)),
            )
        works = bool(probe.current_works)
        if works == wants_login:
            resolution = f"verified: {asked}"
            if error is not None:
                resolution = f"the template failed ({error[0]}), but {asked}: as asked"
            return FinishInput(step.operation_id, "succeeded", resolution, login_works=works)
        still = "the login is still refused" if wants_login else "the login still works"
        error_type, message = error or ("ChangeNotApplied", f"{kind} ran, but {still}")
        return FinishInput(
            step.operation_id,
            "failed",
            f"verify: {still}",
            error_type,
            message,
            login_works=works,
        )

    async def _verify(self, step: StepInput, plan: OperationPlan) -> FinishInput | None:
        """Does the current secret log in? A verify requested after a restore also tries the
        pending secret of the operation that was in flight (tried first by the probe) and, if
        the target has it, commits it (None). Other verifies have no pending secret."""
        self._step = "verify"
        try:
            probe = await self._executor(steps.probe, step, plan)
        except ActivityError as err:
            kind, message = _cause(err)
            resolution = (
                "nothing was sent to the target: fix the configuration"
                if kind == FailureKind.CONFIGURATION
                else "the target could not be reached"
            )
            return FinishInput(step.operation_id, "failed", resolution, kind, message)
        if probe.pending_works:
            self._resolution = "after a restore: the interrupted change's secret logs in, adopted"
            return None
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
        self,
        activity: Callable[[StepInput], Awaitable[_R]],
        step: StepInput,
        plan: OperationPlan,
    ) -> _R:
        """One executor step, retried per the policy by this workflow (not by Temporal), so the
        device slot can be given back while it sleeps between attempts. A cancel waits for the
        executor to stop (the attempt is recorded) and surfaces as CancelledError."""
        attempt = 0
        while True:
            attempt += 1
            if self._newest:
                # A cancel asked for while a store step ran that then completed is raised here,
                # before the target is touched (earlier releases ran the step first).
                self._raise_if_canceled()
            await self._take_slot(plan)
            sent_before = self._may_have_sent
            if activity is steps.change:
                self._may_have_sent = True
            # A change that verifies gives its slot back itself once the new secret logs in (a
            # claim in the store only: an earlier release's semaphore must hear of it).
            gives_back = step.verify_after_change and self._slot_in_store and bool(self._slot)
            slot = SlotRelease(self._device_id, self._slot or "") if gives_back else None
            try:
                result = await workflow.execute_activity(
                    activity,
                    dataclasses.replace(step, attempt=attempt, slot=slot),
                    task_queue=plan.zone_task_queue,
                    # A change that verifies too makes two logins: it gets two steps' time.
                    start_to_close_timeout=timedelta(
                        seconds=plan.step_timeout_seconds * (2 if step.verify_after_change else 1)
                    ),
                    heartbeat_timeout=plan.heartbeat_timeout,
                    retry_policy=RetryPolicy(maximum_attempts=1),
                    cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
                if isinstance(result, ChangeOutcome) and result.slot_given_back:
                    self._slots.given_back(self._slot or "")
                    self._slot = None
                if isinstance(result, ChangeOutcome) and result.committed is not None:
                    # It committed: from now on a cancel is too late (one asked for while it
                    # ran was not raised, since it then completed).
                    self._committing = True
                    self._late_cancel = workflow.cancellation_reason() is not None
                self._raise_if_canceled()
                return result
            except ActivityError as err:
                if gives_back:
                    # It may have given the slot back, to another operation now on the device,
                    # before it failed or was canceled: the next device step takes a new one.
                    await self._drop_slot()
                if is_cancelled_exception(err):
                    raise asyncio.CancelledError() from err
                self._raise_if_canceled()
                if _sent_nothing(err):
                    self._may_have_sent = sent_before
                delay = _retry_delay(err, plan, attempt)
                if delay is None:
                    raise
            # Never hold a device slot while sleeping (retry interval or lockout window).
            await self._drop_slot()
            self._step = f"{activity.__name__}: retry in {delay.total_seconds():g}s"
            await workflow.sleep(delay)

    def _raise_if_canceled(self) -> None:
        """A cancel requested while an activity ran that then completed (or failed) is not
        raised by the SDK at the next await: raise it here, once, between device steps."""
        if (
            workflow.cancellation_reason() is not None
            and not self._canceled
            and not self._committing
        ):
            raise asyncio.CancelledError()

    async def _to_the_end(self, steps: Callable[[], Coroutine[Any, Any, _R]]) -> _R:
        """Run ``steps()`` to completion whatever cancel arrives meanwhile (noted as too late).
        Takes the function, not a coroutine: a workflow evicted before this runs leaves no
        coroutine unawaited; nor does one torn down outside its event loop as this begins."""
        coroutine = steps()
        try:
            task = asyncio.ensure_future(coroutine)
        except BaseException:
            coroutine.close()  # no loop to run it on: the workflow is being torn down
            raise
        while True:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                self._late_cancel = self._late_cancel or not self._canceled
                if task.done():  # it ended in the same activation as the cancel
                    return task.result()

    async def _tell_requesters(self) -> None:
        """Close the list of callback URLs (a request that joins from now on starts a new
        operation instead) and, if anyone asked, tell each of them the outcome."""
        receivers = await self._call(steps.close_callbacks, GateCheck(self._operation_id))
        if receivers:
            await self._start_callback(receivers)

    async def _start_callback(self, receivers: int) -> None:
        """Tell the requesters the outcome, from a workflow of its own (ABANDON) that Temporal
        retries: this operation ends now, whatever the receivers do. ``receivers`` 0: the one
        callback an older release's operation had."""
        # A run of this workflow that was reset may have started it already.
        with contextlib.suppress(WorkflowAlreadyStartedError):
            await workflow.start_child_workflow(
                CALLBACK_WORKFLOW,
                CallbackInput(self._operation_id, receivers),
                id=callback_workflow_id(self._operation_id),
                task_queue=workflow.info().task_queue,
                parent_close_policy=ParentClosePolicy.ABANDON,
            )

    async def _leave(self, op: OperationInput, *, ending: bool) -> None:
        """Leave the gate and tell the requesters, the way this history's release did: in one
        step (depart), or in two; the first releases with callbacks told them only as the
        operation ended (``ending``), not when it was canceled while registering."""
        if self._departed_telling is not None:
            # The change step left the gate with its commit: only the requesters are left.
            receivers = self._departed_telling
            if receivers:
                await self._to_the_end(lambda: self._start_callback(receivers))
            return
        if self._departs_at_once:
            await self._to_the_end(self._depart)
            return
        await self._to_the_end(self._leave_gate)
        if self._patched(CALLBACKS_CLOSED_PATCH):
            await self._to_the_end(self._tell_requesters)
        elif ending and op.callback and self._patched(CALLBACK_PATCH):
            await self._to_the_end(lambda: self._start_callback(0))

    async def _depart(self) -> None:
        """Leave the gate and close the callback URLs in one step; tell the next operation its
        turn has come, and the requesters (if any) the outcome."""
        departure: Departure = await self._call(steps.depart, GateCheck(self._operation_id))
        if departure.follower is not None:
            await self._signal(departure.follower, "gate_open")
        if departure.receivers:
            await self._start_callback(departure.receivers)

    async def _leave_gate(self) -> None:
        follower: WorkflowRef | None = await self._call(
            steps.leave_gate,
            GateCheck(self._operation_id),
        )
        if follower is not None:
            await self._signal(follower, "gate_open")

    async def _take_slot(self, plan: OperationPlan) -> None:
        """Take one of the device's slots: at once when one is free, else when the operation
        that gives one back signals this one's turn (workflows/slot_holder.py)."""
        claim: SlotClaim | None
        if self._slot is not None:
            if self._begun_claim is None:
                return  # held already
            # The begin step claimed it: wait for it here if it was not free.
            claim, self._begun_claim = self._begun_claim, None
            request = self._slot_request(plan, self._slot)
        else:
            self._slots_asked += 1
            self._slot = slot_token(self._operation_id, self._slots_asked)
            request = self._slot_request(plan, self._slot)
            claim = await self._slots.claim(request)
            self._slot_in_store = claim is not None
        step = self._step

        def waiting() -> None:
            self._step = "waiting for a device slot"

        await self._slots.wait(request, claim, waiting)
        self._step = step

    def _slot_request(self, plan: OperationPlan, token: str) -> SlotRequest:
        info = workflow.info()
        return SlotRequest(
            plan.device_id or self._device_id,
            token,
            WorkflowRef(info.workflow_id, info.run_id),
            plan.device_capacity,
            self._order_key,
        )

    async def _drop_slot(self) -> None:
        if self._slot is None:
            return
        token, self._slot = self._slot, None
        await self._slots.give_back(self._device_id, token)

    async def _commit(self, commit: CommitInput) -> CommitOutcome:
        """A regular activity, not a local one: its completion is in the history the moment it
        lands, so a replay (after a cancel request, say) never runs the workflow as if the
        commit had not happened."""
        return await workflow.execute_activity(
            steps.commit,
            commit,
            # Short: a worker lost mid-commit is noticed soon; a retry is harmless (idempotent).
            start_to_close_timeout=COMMIT_TIMEOUT,
            retry_policy=STORE_RETRY,
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )

    async def _signal(self, ref: WorkflowRef, signal: str) -> None:
        try:
            await workflow.get_external_workflow_handle(ref.workflow_id, run_id=ref.run_id).signal(
                signal
            )
        except FailureError:
            # Its workflow has ended (terminated): the next operation's gate check finds it.
            workflow.logger.warning("could not signal %s: it has ended", ref.workflow_id)

    async def _call(self, activity: Callable[[_P], Awaitable[_R]], arg: _P) -> _R:
        """A store step (local activity). A cancel that interrupts it surfaces as
        CancelledError, the way every other step's does."""
        try:
            result = await workflow.execute_local_activity(
                activity,
                arg,
                start_to_close_timeout=STORE_TIMEOUT,
                retry_policy=STORE_RETRY,
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise asyncio.CancelledError() from err
            raise
        return result

    def _move(self, status: str, step: str) -> None:
        self._status = status
        self._step = step
        workflow.upsert_search_attributes([SA_STATUS.value_set(status)])


def _result(finish: FinishInput) -> OperationResult:
    return OperationResult(
        finish.operation_id, finish.status, finish.resolution, finish.error_type, finish.error
    )


def _retry_delay(err: ActivityError, plan: OperationPlan, attempt: int) -> timedelta | None:
    """How long to wait before the next attempt, or None when there is none to make."""
    if attempt >= plan.max_attempts:
        return None
    cause = err.cause
    if isinstance(cause, ApplicationError):
        if cause.non_retryable or cause.type in NON_RETRYABLE_KINDS:
            return None
        if cause.next_retry_delay is not None:  # e.g. the lockout window's end
            return cause.next_retry_delay
    elif not isinstance(cause, TimeoutError):  # a lost worker times out: retry; anything else
        return None
    return timedelta(seconds=plan.retry_interval_seconds * max(plan.backoff, 1.0) ** (attempt - 1))


def _sent_nothing(err: ActivityError) -> bool:
    """The failed step provably never reached the target (in any of its attempts)."""
    cause = err.cause
    details = list(cause.details) if isinstance(cause, ApplicationError) else []
    return _cause(err)[0] in NOTHING_SENT_KINDS or details == [NOTHING_SENT_DETAIL]


def _cause(err: ActivityError) -> tuple[str, str]:
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return cause.type or "ApplicationError", cause.message
    return type(cause).__name__ if cause else "ActivityError", str(cause or err)
