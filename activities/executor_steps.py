"""Executor-facing activities: run the change, probe which secret logs in.

They run on the task queue of the device's zone. Every call is recorded as an attempt with its
redacted transcript; an ExecutorError becomes an ApplicationError whose type is the error's kind,
so the workflow's retry policy can tell retryable failures from the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.heartbeats import beats_while_running
from activities.key_steps import KeySteps
from activities.slot_grants import tell_granted
from activities.store_steps import commit_in
from executors.base import (
    Account,
    AuthenticationFailed,
    ConfigurationError,
    ConnectFailed,
    ExecutorError,
    HostKeyMismatch,
    LoginProgress,
    LoginRequest,
    LoginResult,
    OutcomeUnknown,
    RunRequest,
    get_executor,
    redact,
)
from keyturn import failpoints
from store import attempts, audit, device_slots, gate, lockout
from store.engine import session_scope
from store.jobs import Job, job_in
from store.lockout import Budget, BudgetBusy, BudgetSpent, LockoutLedger
from store.models import Device, DeviceSlotClaim, Operation, OperationStatus
from store.queries import get_or_raise, operation_rows
from store.vault import Vault
from store.versions import seen_working
from workflows import steps
from workflows.contracts import (
    CHOSEN_SECRET_KINDS,
    NOTHING_SENT_DETAIL,
    SWITCH_KINDS,
    ChangeOutcome,
    CommitInput,
    CommitOutcome,
    Departure,
    ProbeOutcome,
    SlotRelease,
    StepInput,
    WorkflowRef,
)
from workflows.steps import implements

_T = TypeVar("_T")
_L = TypeVar("_L")
_O = TypeVar("_O")


@dataclasses.dataclass(frozen=True)
class OpenedAttempt:
    """An attempt opened in the store and, if it took one with it, the charge for its first
    login (the budget it is for, the charge)."""

    attempt_id: str
    ahead: tuple[Budget, str] | None = None


@dataclasses.dataclass
class _AttemptWrites:
    """What an attempt's logins leave for the transaction that records the attempt's end: the
    lockout charges to settle and the secret versions seen logging in. One commit per attempt
    instead of one more per login: transactions were the change path's largest store cost.

    A worker lost before that transaction leaves the charges in flight, as a worker lost before
    a settle always did: they count against the budget until they leave its window."""

    settlements: list[tuple[str, bool]] = dataclasses.field(default_factory=list)
    seen_working: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # version, op
    # The device slot to give back with the attempt (a verified change: nothing else follows on
    # the device), and, once given back, the claims it was handed to, whose workflows to tell.
    slot: SlotRelease | None = None
    handed: list[DeviceSlotClaim] | None = None
    # The commit to make with the attempt (a verified change), and, once made, its outcome;
    # whether to leave the credential's gate with it, and, once left, who to tell.
    commit: CommitInput | None = None
    committed: CommitOutcome | None = None
    depart: bool = False
    credential_id: str | None = None  # the committing operation's: whose gate to lock
    departure: Departure | None = None
    # Charges taken with the attempt's opening for its first login (by budget): the login
    # takes its own; one left unused is given back.
    ahead: dict[Budget, str] = dataclasses.field(default_factory=dict)
    # The attempt to open with this one's record (operation, step, number: the verify that
    # follows a change) and the budget of its first login, and, once open, the attempt.
    then_open: tuple[str, str, int] | None = None
    then_charge: Budget | None = None
    opened: OpenedAttempt | None = None

    def apply(self, session: Session) -> None:
        """Write what is waiting, in ``session``'s transaction, and forget it."""
        for charge, failed in self.settlements:
            lockout.settle(session, charge, failed=failed)
        for version_id, operation_id in self.seen_working:
            seen_working(session, version_id, operation_id)
        # The gate, then the commit (which appends to the audit trail); the slot is given back
        # after the attempt's record: the order in which transactions take locks
        # (store/row_locks.py).
        if self.commit is not None:
            operation_id = self.commit.operation_id
            if self.depart:
                gate.lock_of(session, operation_id, self.credential_id)
            self.committed = commit_in(session, self.commit)
            if self.depart and self.committed.committed:
                follower, receivers = gate.depart(session, operation_id, locked=True)
                ahead = WorkflowRef(follower.workflow_id, follower.run_id) if follower else None
                self.departure = Departure(ahead, receivers)
        for charge in self.ahead.values():
            lockout.settle(session, charge, failed=False)
        self.settlements, self.seen_working, self.commit = [], [], None
        self.ahead, self.depart = {}, False

    def after_record(self, session: Session) -> None:
        """What goes after the attempt's record in its transaction: the device slot given back,
        the attempt it opens (which starts once this one has ended) and the charge for that
        one's first login. After, because the record locks the audit trail's head, which comes
        before a device's and an account's locks (store/row_locks.py)."""
        if self.slot is not None:
            self.handed = device_slots.release(session, self.slot.device_id, self.slot.token) or []
            self.slot = None
        if self.then_open is not None:
            opened = attempts.open_attempt(session, *self.then_open)
            ahead = _charged_ahead(session, self.then_charge)
            self.opened, self.then_open = OpenedAttempt(opened, ahead), None  # opened first
        self.then_charge = None

    @classmethod
    def of(cls, opened: OpenedAttempt) -> _AttemptWrites:
        """The writes of an attempt just opened, holding the charge its opening took."""
        return cls(ahead=dict([opened.ahead]) if opened.ahead else {})


async def in_thread_to_the_end(work: Callable[..., _T], *args: Any) -> _T:
    """``work(*args)`` in a thread, run to its end even if the step is canceled meanwhile; the
    cancel goes on once it is done. A step beats for its whole run, so a cancel can reach it
    while its store work waits for a thread, and a canceled await of work still queued would
    drop it (an attempt left open, a result not kept)."""
    running = asyncio.ensure_future(asyncio.to_thread(work, *args))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):  # the cancel, not the work's error, is the answer
            await asyncio.shield(running)
        raise


# The running attempt's writes (set by ExecutorActivities._recorded around the attempt's body).
_ATTEMPT_WRITES: ContextVar[_AttemptWrites] = ContextVar("attempt_writes")


def _attempt_writes() -> _AttemptWrites:
    """The running attempt's writes: logins and their outcomes happen only inside an attempt."""
    try:
        return _ATTEMPT_WRITES.get()
    except LookupError:
        raise RuntimeError("a login outside ExecutorActivities._recorded") from None


class _AlreadyCommitted(Exception):
    """A change step run again after it committed (its answer was lost), or a probe of the
    change after that: the store has the answer, the target is not asked."""


class _LoadFailed(Exception):
    """Loading a step's job failed for a reason other than its configuration (a bug, the
    store): the attempt is recorded as an internal error in a transaction of its own."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(detail)
        self.step, self.detail = step, detail


def _attempt_number(step: StepInput) -> int:
    """The workflow numbers attempts; operations started before it did use Temporal's count."""
    return step.attempt or activity.info().attempt


class ExecutorActivities:
    def __init__(self, engine: Engine, vault: Vault, client: Client | None = None) -> None:
        self._engine = engine
        self._vault = vault
        self._ledger = LockoutLedger(engine)
        # To tell the waiters of a device slot a verified change gives back; without it, the
        # change leaves its slot for the workflow to give back.
        self._client = client

    @implements(steps.change)
    @beats_while_running
    async def change(self, step: StepInput) -> ChangeOutcome:
        try:
            job, opened, may_have_sent = await self._opening(step, "change")
        except _AlreadyCommitted:
            # An earlier attempt committed and its answer was lost (a worker killed after
            # the commit): the operation is done; the target is not asked again.
            return ChangeOutcome(
                already_applied=False, verified=True, committed=CommitOutcome(True)
            )
        switch = job.operation.kind in SWITCH_KINDS  # runs its template; no secret changes
        if job.pending_password is None and not switch:
            detail = "operation has no pending secret"
            await in_thread_to_the_end(self._never_ran, opened, "error", detail)
            raise ApplicationError(detail, non_retryable=True)
        if job.holds_key:

            async def key_change() -> tuple[str, ChangeOutcome]:
                return await KeySteps(self, self._engine, job).change(may_have_sent)

            outcome = await self._recorded(job, opened, key_change, may_have_sent=may_have_sent)
            failpoints.reach(failpoints.AFTER_CHANGE)
            return outcome  # verified on every device inside the change (key_steps)
        executor = get_executor(job.device.executor)
        pending_account = Account(job.credential.username, job.pending_password or "")

        change_writes: list[_AttemptWrites] = []  # the change attempt's, once it succeeded

        async def attempt() -> tuple[str, ChangeOutcome]:
            try:
                answer = await attempt_once()
            except (
                ConnectFailed,
                AuthenticationFailed,
                HostKeyMismatch,
                ConfigurationError,
            ) as exc:
                if not may_have_sent:
                    raise
                # An earlier attempt may have changed the secret: whatever stops this one says
                # nothing about that, so the outcome stays unknown and the workflow must probe
                # (never conclude "nothing was sent" and fail the pending secret).
                raise _may_have_applied(exc) from None
            if step.verify_after_change:
                # The verify's attempt is opened with this one's record: one transaction less.
                mine = _attempt_writes()
                mine.then_open = (step.operation_id, "verify", 1)
                mine.then_charge = _budget(job, pending_account.username)
                change_writes.append(mine)
            return answer

        async def attempt_once() -> tuple[str, ChangeOutcome]:
            # A retry after an attempt that may have reached the target first asks whether the
            # pending secret is already live, so the change is never applied twice.
            if may_have_sent and not switch:
                probe = await self._login(
                    job,
                    pending_account,
                    lambda: executor.check_login(LoginRequest(job.target, pending_account)),
                )
                if probe.ok:
                    return "pending secret already live (probe)", ChangeOutcome(
                        already_applied=True
                    )
            request = RunRequest(
                job.target, job.connecting_account, job.change_template, job.context()
            )
            result = await self._login(job, job.connecting_account, lambda: executor.run(request))
            await self._pin_learned_key(job, result.learned_host_key)
            return result.transcript, ChangeOutcome(already_applied=False)

        try:
            outcome = await self._recorded(job, opened, attempt, may_have_sent=may_have_sent)
        except asyncio.CancelledError:
            # Canceled while the change's record was written: the verify it opened never runs.
            if change_writes and change_writes[0].opened is not None:
                await asyncio.shield(asyncio.to_thread(self._never_ran, change_writes[0].opened))
            raise
        failpoints.reach(failpoints.AFTER_CHANGE)
        if not step.verify_after_change:
            return outcome
        writes: list[_AttemptWrites] = []  # the verify attempt's, once it ran
        # A change found already applied is committed by the workflow: its resolution says so.
        commit = None if outcome.already_applied else step.commit
        verify = change_writes[0].opened if change_writes else None
        verified = await self._verify_pending(job, step, pending_account, writes, commit, verify)
        committed = writes[0].committed if writes else None
        outcome = dataclasses.replace(outcome, verified=verified, committed=committed)
        handed = writes[0].handed if writes else None
        departure = writes[0].departure if writes else None
        if departure is not None:
            outcome = dataclasses.replace(outcome, departed=True, receivers=departure.receivers)
        if handed is None and departure is None:
            return outcome
        telling = asyncio.ensure_future(self._tell(step, handed, departure))
        try:
            await asyncio.shield(telling)
        except RPCError as exc:
            # The change is done and verified: that is this step's answer. A waiter handed the
            # slot holds it in the store, the next operation at the gate too: each finds out at
            # its next check.
            activity.logger.warning("could not tell the operations waiting: %s", exc)
        except asyncio.CancelledError:
            if committed is None:
                raise
            # Committed: the answer must say so, whatever the cancel (it is too late). The
            # waiters are told meanwhile, or find out at their next check.
        failpoints.reach(failpoints.AFTER_VERIFY)
        return dataclasses.replace(outcome, slot_given_back=handed is not None)

    async def _tell(
        self, step: StepInput, handed: list[DeviceSlotClaim] | None, departure: Departure | None
    ) -> None:
        """Tell the claims handed the step's device slot, and the operation that now holds the
        credential's gate, that their turn has come: each whatever became of the other."""
        client = self._client
        assert client is not None

        async def slot_granted() -> None:
            if handed is not None:
                assert step.slot is not None
                await tell_granted(client, self._engine, step.slot.device_id, handed)

        async def gate_open() -> None:
            if departure is not None and departure.follower is not None:
                ahead = departure.follower
                handle = client.get_workflow_handle(ahead.workflow_id, run_id=ahead.run_id)
                try:
                    await handle.signal("gate_open")
                except RPCError as exc:
                    if exc.status != RPCStatusCode.NOT_FOUND:  # NOT_FOUND: it has ended
                        raise

        told = await asyncio.gather(slot_granted(), gate_open(), return_exceptions=True)
        for failure in told:
            if isinstance(failure, BaseException):
                raise failure

    async def _verify_pending(
        self,
        job: Job,
        step: StepInput,
        account: Account,
        writes: list[_AttemptWrites],
        commit: CommitInput | None,
        opened: OpenedAttempt | None,
    ) -> bool | None:
        """The verify step, right after the change, with the job already loaded: a fresh login
        with the new secret running the verify template, charged and recorded like any other.
        None when it could not say (unreachable, budget spent…): the workflow probes. Once the
        new secret logs in, the step's device slot is given back and ``commit`` made with the
        attempt's record (``writes`` gets the attempt's writes, which then name who was handed
        the slot and what the commit answered). ``opened``: its attempt, opened with the
        change's record, if it was."""
        executor = get_executor(job.device.executor)
        if opened is None:
            # The operation's first verify, whichever change attempt it follows.
            opened = await self._open_attempt(step.operation_id, "verify", 1)

        async def attempt() -> tuple[str, bool]:
            request = LoginRequest(job.target, account, job.verify_template, job.context())
            result = await self._login(job, account, lambda: executor.check_login(request))
            await self._pin_learned_key(job, result.learned_host_key)
            if result.ok:
                await self._seen_working(job, job.operation.pending_version_id)
                mine = _attempt_writes()
                if step.slot is not None and self._client is not None:
                    mine.slot = step.slot
                mine.commit, mine.credential_id = commit, job.credential.id
                # Leaving the gate means telling the next operation: only with a client.
                mine.depart = commit is not None and step.depart and self._client is not None
                if mine.slot is not None or commit is not None:
                    writes.append(mine)
            return f"[pending] {'logs in' if result.ok else 'refused'}\n{result.transcript}", (
                result.ok
            )

        try:
            return await self._recorded(job, opened, attempt)
        except ApplicationError:
            return None  # recorded on the attempt; the workflow's probe decides

    @implements(steps.probe)
    @beats_while_running
    async def probe(self, step: StepInput) -> ProbeOutcome:
        """Does the pending secret log in? If not, the current one? (how an outcome is known)"""
        try:
            job, opened, _ = await self._opening(step, None)
        except _AlreadyCommitted:
            # The change committed and its answer was lost: the store knows the new secret is
            # the target's (and the credential may be in another operation's hands by now).
            return ProbeOutcome(pending_works=True, current_works=None)
        if job.holds_key:

            async def key_probe() -> tuple[str, ProbeOutcome]:
                return await KeySteps(self, self._engine, job).probe(step.login_only)

            return await self._recorded(job, opened, key_probe)
        executor = get_executor(job.device.executor)
        username = job.credential.username

        async def attempt() -> tuple[str, ProbeOutcome]:
            transcripts = []
            if job.pending_password is not None:
                account = Account(username, job.pending_password)
                # After a cancel only the login matters: a verify template that hung is what
                # the operation may have been canceled for.
                template = None if step.login_only else job.verify_template
                request = LoginRequest(job.target, account, template, job.context())
                pending = await self._login(job, account, lambda: executor.check_login(request))
                transcripts.append(f"[pending] {'logs in' if pending.ok else 'refused'}")
                transcripts.append(pending.transcript)
                await self._pin_learned_key(job, pending.learned_host_key)
                if pending.ok:
                    await self._seen_working(job, job.operation.pending_version_id)
                    return "\n".join(transcripts), ProbeOutcome(True, None)
                if job.operation.kind in (*CHOSEN_SECRET_KINDS, "jit-create"):
                    # Only the chosen (or the new account's) secret was asked about; a login
                    # with the current one would spend the lockout budget for an answer no
                    # one uses (a just-in-time account's current secret is a placeholder).
                    return "\n".join(transcripts), ProbeOutcome(False, None)
            account = Account(username, job.current_password)
            current = await self._login(
                job, account, lambda: executor.check_login(LoginRequest(job.target, account))
            )
            transcripts.append(f"[current] {'logs in' if current.ok else 'refused'}")
            await self._pin_learned_key(job, current.learned_host_key)
            if current.ok:
                await self._seen_working(job, job.current_version_id)
            return "\n".join(transcripts), ProbeOutcome(False, current.ok)

        return await self._recorded(job, opened, attempt)

    async def _login(
        self,
        job: Job,
        account: Account,
        call: Callable[[], Awaitable[_L]],
        device_id: str | None = None,
    ) -> _L:
        """One login that may be refused, charged to the account's lockout budget.

        The charge is kept unless the login is known not to have counted as a failure on the
        target: it is given back when the login worked (or the failure came after it was
        accepted) and when the secret never reached the target (ExecutorError.login). A
        refusal keeps it, and so does a failure whose login outcome is unknown, which also
        stops the step: retrying could lock the account. An exception the executor did not
        classify (or a cancellation mid-call) is such a failure.
        """
        budget = _budget(job, account.username, device_id)
        charge = await self._reserve(budget, job.target.connect_timeout + job.target.read_timeout)
        failed = True  # until the call's outcome says otherwise
        try:
            result = await call()
            failed = isinstance(result, LoginResult) and not result.ok
            return result
        except ExecutorError as exc:
            failed = exc.login in (LoginProgress.REFUSED, LoginProgress.UNKNOWN)
            raise
        except Exception as exc:
            raise ExecutorError(
                job.device.name,
                "login",
                redact(
                    f"unexpected {type(exc).__name__} from the {job.device.executor} executor: "
                    f"{exc}; whether the target counted a failed login is unknown, so the "
                    "login stays charged to the lockout budget and is not retried",
                    (*job.secrets, account.password),
                ),
                login=LoginProgress.UNKNOWN,
            ) from exc
        finally:
            _attempt_writes().settlements.append((charge, failed))

    async def _reserve(self, budget: Budget, patience: float) -> str:
        """A charge for one login. Logins of the same account in flight elsewhere (many changes
        through one privileged account) may hold the whole budget for a moment: wait for them
        to settle, up to ``patience`` seconds, before reporting the budget spent."""
        writes = _attempt_writes()
        ahead = writes.ahead.pop(budget, None)
        if ahead is not None:
            return ahead  # taken when the attempt was opened
        if writes.settlements:
            # A second login in one attempt: its first must not hold the budget against it.
            await asyncio.to_thread(self._apply_now, writes)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        pause = 0.05
        while True:
            try:
                return await asyncio.to_thread(self._ledger.reserve, budget)
            except BudgetBusy:
                if loop.time() >= deadline:
                    raise  # a BudgetSpent, retried by the workflow after a short pause
                await asyncio.sleep(pause)  # backoff between looks at the ledger
                pause = min(pause * 2, 1.0)

    def _begin(
        self, step_input: StepInput, step: str | None, number: int
    ) -> tuple[Job, OpenedAttempt, bool]:
        """Open the attempt row, load the job and charge the attempt's first login, in one
        transaction.

        Also answers, for a retried change, whether the previous attempt may have reached the
        target. A probe is recorded as "verify" within a change, "probe" in a verify operation.
        A job that cannot be loaded is recorded too: a ConfigurationError as such (not
        retried), anything else as an internal error. Before a retry of a change that may have
        reached the target, it is OutcomeUnknown instead: "nothing was sent" would fail a
        pending secret that may be live.
        """
        operation_id = step_input.operation_id
        try:
            with session_scope(self._engine) as session:
                # The job's rows in one statement, read once: job_in takes them. If one is
                # missing, job_in looks them up again to name it, on the attempt's record.
                rows = operation_rows(session, operation_id)
                operation = rows[0] if rows else get_or_raise(session, Operation, operation_id)
                done = operation.status == OperationStatus.SUCCEEDED
                if done and (step == "change" or (step is None and operation.kind != "verify")):
                    raise _AlreadyCommitted()
                step = step or ("probe" if operation.kind == "verify" else "verify")
                may_have_sent = (
                    step == "change"
                    and number > 1
                    and attempts.earlier_may_have_sent(session, operation_id, number)
                )
                attempt_id = attempts.open_attempt(session, operation_id, step, number)
                try:
                    job = job_in(
                        session,
                        self._vault,
                        operation_id,
                        step_input.via_reconcile,
                        for_change=step == "change",
                        loaded=rows,
                    )
                except ExecutorError as exc:  # ConfigurationError (check_target may say more)
                    error: ExecutorError = _may_have_applied(exc) if may_have_sent else exc
                    attempts.finish_attempt(session, attempt_id, error.kind, str(error), "")
                    refused = _failure(error, ())
                except Exception as exc:
                    raise _LoadFailed(step, f"{type(exc).__name__}: {exc}") from exc
                else:
                    ahead = _charged_ahead(session, _first_login(job, step, may_have_sent))
                    if job.insecure_transport is not None:
                        audit.record_once(
                            session,
                            "transport.insecure_allowed",
                            operation_id=operation_id,
                            credential_id=job.credential.id,
                            device_id=job.device.id,
                            reason=job.insecure_transport,
                        )
                    return job, OpenedAttempt(attempt_id, ahead), may_have_sent
        except _LoadFailed as failed:
            # Not a refusal of the job: its transaction is rolled back; record the attempt alone.
            with session_scope(self._engine) as session:
                attempt_id = attempts.open_attempt(session, operation_id, failed.step, number)
                attempts.finish_attempt(session, attempt_id, "error", failed.detail, "")
            raise ApplicationError(failed.detail, type="InternalError") from None
        raise refused

    async def _recorded(
        self,
        job: Job,
        opened: OpenedAttempt,
        body: Callable[[], Awaitable[tuple[str, _T]]],
        *,
        may_have_sent: bool = True,
    ) -> _T:
        """Run one attempt and record it. ``may_have_sent``: whether an earlier attempt may
        have reached the target, which decides what a spent lockout budget means."""
        writes = _AttemptWrites.of(opened)
        attempt_id = opened.attempt_id
        finish = functools.partial(self._finish_attempt, writes=writes)
        entered = _ATTEMPT_WRITES.set(writes)
        try:
            transcript, outcome = await body()
        except BudgetSpent as exc:
            await in_thread_to_the_end(finish, attempt_id, "LockoutBudgetSpent", str(exc), "", job)
            # Retryable, after the window frees a login: the wait is Temporal's, durable.
            raise ApplicationError(
                str(exc),
                *([] if may_have_sent else [NOTHING_SENT_DETAIL]),
                type="LockoutBudgetSpent",
                next_retry_delay=exc.retry_after,
            ) from None
        except ExecutorError as exc:
            await in_thread_to_the_end(finish, attempt_id, exc.kind, str(exc), exc.transcript, job)
            raise _failure(exc, job.secrets) from None
        except asyncio.CancelledError:
            # The operation was canceled: the executor has stopped; say so before going.
            await in_thread_to_the_end(
                finish,
                attempt_id,
                "canceled",
                "the operation was canceled while this attempt ran",
                "",
                job,
            )
            raise
        except Exception as exc:
            detail = redact(f"{type(exc).__name__}: {exc}", job.secrets)
            await in_thread_to_the_end(finish, attempt_id, "error", detail, "", job)
            raise ApplicationError(detail, type="InternalError") from None
        finally:
            _ATTEMPT_WRITES.reset(entered)
        recording = asyncio.ensure_future(
            asyncio.to_thread(finish, attempt_id, "succeeded", None, transcript, job)
        )
        try:
            await asyncio.shield(recording)
        except asyncio.CancelledError:
            if writes.committed is None and writes.commit is None:
                if writes.then_open is not None or writes.opened is not None:
                    # The record opens the next attempt: wait for its id, so the caller can
                    # say that attempt never ran.
                    await recording
                raise
            # A cancel reached the step while the record of its verify was written with the
            # commit: that transaction goes on in its thread, so the answer must say whether it
            # landed (a commit the workflow was not told of would be undone by no one).
            await recording
        return outcome

    def _start_attempt(self, operation_id: str, step: str, number: int) -> str:
        with session_scope(self._engine) as session:
            return attempts.open_attempt(session, operation_id, step, number)

    async def _open_attempt(self, operation_id: str, step: str, number: int) -> OpenedAttempt:
        """``_start_attempt`` in a thread (see ``_opened``)."""
        return await self._opened(
            lambda: OpenedAttempt(self._start_attempt(operation_id, step, number)),
            lambda opened: opened,
        )

    async def _opening(self, step: StepInput, name: str | None) -> tuple[Job, OpenedAttempt, bool]:
        """``_begin`` in a thread (see ``_opened``)."""
        return await self._opened(
            lambda: self._begin(step, name, _attempt_number(step)), lambda begun: begun[1]
        )

    async def _opened(
        self, opening: Callable[[], _O], attempt_of: Callable[[_O], OpenedAttempt]
    ) -> _O:
        """What ``opening`` answers, run in a thread. A step beats (and so can be canceled)
        while it waits for one, and a cancel cannot stop the thread's transaction: the attempt
        it opened is then closed as never run (its login's charge given back) before the
        cancel goes on."""
        running = asyncio.ensure_future(asyncio.to_thread(opening))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # it failed: nothing was opened
                opened = attempt_of(await asyncio.shield(running))
                await in_thread_to_the_end(self._never_ran, opened)
            raise

    def _never_ran(
        self,
        opened: OpenedAttempt,
        outcome: str = "canceled",
        detail: str = "the operation was canceled before this attempt ran",
    ) -> None:
        """Close an attempt whose body never ran, giving back its login's charge."""
        self._finish_attempt(
            opened.attempt_id,
            outcome,
            detail,
            "",
            writes=_AttemptWrites.of(opened),
        )

    def _finish_attempt(
        self,
        attempt_id: str,
        outcome: str,
        detail: str | None,
        transcript: str,
        job: Job | None = None,  # loaded already: its ids spare the audit record's lookups
        writes: _AttemptWrites | None = None,
    ) -> None:
        with session_scope(self._engine) as session:
            if writes is not None:
                writes.apply(session)
            whose = None
            if job is not None:
                principal = job.operation.requested_by or audit.KEYTURN
                whose = attempts.Whose(job.credential.id, job.device.id, principal)
            attempts.finish_attempt(session, attempt_id, outcome, detail, transcript, whose)
            if writes is not None:
                writes.after_record(session)

    async def _seen_working(self, job: Job, version_id: str | None) -> None:
        if version_id:
            _attempt_writes().seen_working.append((version_id, job.operation.id))

    def _apply_now(self, writes: _AttemptWrites) -> None:
        with session_scope(self._engine) as session:
            writes.apply(session)

    async def _pin_learned_key(self, job: Job, key: str | None, device_id: str = "") -> None:
        if key:
            await asyncio.to_thread(self._pin_key, device_id or job.device.id, key)

    def _pin_key(self, device_id: str, key: str) -> None:
        """Trust on first use: the first key seen is pinned; later connections must match it."""
        with session_scope(self._engine) as session:
            device = session.get(Device, device_id)
            if device is not None and not device.host_keys:
                device.host_keys = [key]
                session.add(device)
                audit.record(session, "device.host_key_pinned", device_id=device.id, key=key)


def _budget(job: Job, username: str, device_id: str | None = None) -> Budget:
    """The lockout budget of ``username``'s logins on the job's device (or ``device_id``: a
    key target is its own device)."""
    return Budget(
        device_id or job.device.id,
        username,
        job.policy.lockout_budget,
        timedelta(seconds=job.policy.lockout_window_seconds),
    )


def _charged_ahead(session: Session, budget: Budget | None) -> tuple[Budget, str] | None:
    """A charge for a login of ``budget`` taken in ``session``'s transaction, with its budget
    (what the login looks for), or None: the login then reserves on its own."""
    charge = lockout.reserve_ahead(session, budget) if budget is not None else None
    return (budget, charge) if budget is not None and charge is not None else None


def _first_login(job: Job, step: str, may_have_sent: bool) -> Budget | None:
    """The budget of the step's first login, when it is known before the step runs: a change
    logs in first as its connecting account (a retry that may have reached the target first
    probes the pending secret: not known ahead), a verify or probe as the credential. A key's
    steps log in on each of its devices: none."""
    if job.holds_key or (step == "change" and may_have_sent):
        return None
    if step == "change":
        return _budget(job, job.connecting_account.username)
    return _budget(job, job.credential.username)


def _failure(exc: ExecutorError, secrets: tuple[str, ...]) -> ApplicationError:
    """The activity error of an executor failure: its kind as the type, retryable only when
    the kind allows it and the login's outcome is known (ExecutorError.may_retry)."""
    return ApplicationError(
        redact(str(exc), secrets), type=exc.kind, non_retryable=not exc.may_retry
    )


def _may_have_applied(exc: ExecutorError) -> OutcomeUnknown:
    """A failure of a retried change whose earlier attempt may have applied it."""
    return OutcomeUnknown(
        exc.device,
        exc.step,
        f"{exc.cause} (an earlier attempt may have applied the change)",
        exc.transcript,
        login=exc.login,
    )
