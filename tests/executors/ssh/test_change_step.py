"""The change step's trips to the store, and what a cancel leaves of its records.

A change that verifies opens its attempt, loads its job and charges its login in one
transaction, records the change's end, opens the verify's attempt and charges its login in
another, and records the verify's end in a third: every trip saved is store time on every
change. Against the session's real sshd, the activity run in Temporal's ActivityEnvironment.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlmodel import Session
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from store import attempts, jobs
from store.models import AccountLock, LoginCharge, Operation, OperationStatus, utcnow
from tests.executors.ssh.conftest import NEW, OLD, Store
from tests.servers.sshd import Users
from tests.store.helpers import Statements
from workflows.contracts import ProbeOutcome

# Opening the change's attempt (its job, its login's charge); the change's record (the verify's
# attempt, its login's charge); the verify's record.
TRANSACTIONS_OF_A_VERIFIED_CHANGE = 3


@pytest.fixture
def commits(store: Store) -> Iterator[list[int]]:
    """Every commit on the store's engine, counted."""
    counted: list[int] = []

    def count(connection: Connection) -> None:
        counted.append(1)

    event.listen(store.engine, "commit", count)
    yield counted
    event.remove(store.engine, "commit", count)


async def test_a_verified_change_takes_three_transactions(
    store: Store, ssh_users: Users, commits: list[int]
) -> None:
    user = ssh_users.create(OLD)
    operation, device = store.operation(user, OLD, "change")
    with Session(store.engine) as session:
        # Charged before: an account's first charge ever creates its lock row on its own.
        session.add(AccountLock(device_id=device, username=user))
        session.commit()
    commits.clear()  # the setup's own

    outcome = await store.change(operation, verify_after_change=True)

    assert outcome.verified is True
    assert store.attempts(operation) == [("change", "succeeded"), ("verify", "succeeded")]
    assert len(commits) == TRANSACTIONS_OF_A_VERIFIED_CHANGE
    assert store.charges(device) == []  # both logins worked: both charges given back
    assert await ssh_users.password_works(user, NEW)


async def test_the_change_reads_its_operation_once_when_it_opens(
    store: Store, ssh_users: Users
) -> None:
    """The opening's first read brings the job's operation, credential, device and policy in
    one statement, and the job is loaded from it: no second read of the operation."""
    user = ssh_users.create(OLD)
    operation, _ = store.operation(user, OLD, "change")
    with Statements(store.engine) as statements:
        outcome = await store.change(operation, verify_after_change=True)
    opening = statements.first_transaction()

    assert outcome.verified is True
    by_id = [s for s in opening if s.startswith("SELECT operation.") and "operation.id =" in s]
    assert len(by_id) == 1 and "JOIN device" in by_id[0], by_id
    assert not [s for s in opening if s.startswith(("SELECT credential.", "SELECT device."))]


async def test_charges_taken_ahead_count_against_the_budget(store: Store, ssh_users: Users) -> None:
    """A login charged when its attempt opened is charged like any other: with the budget
    full of refusals the attempt takes none ahead and its own login reports the budget spent,
    without touching the target."""
    user = ssh_users.create(OLD)
    operation, device = store.operation(user, OLD, "change", lockout_budget=1)
    with Session(store.engine) as session:
        session.add(AccountLock(device_id=device, username=user))
        session.add(LoginCharge(device_id=device, username=user, state="failed", at=utcnow()))
        session.commit()

    with pytest.raises(ApplicationError) as caught:
        await store.change(operation, verify_after_change=True)

    assert caught.value.type == "LockoutBudgetSpent"
    assert store.attempts(operation) == [("change", "LockoutBudgetSpent")]
    assert store.charges(device) == ["failed"]
    assert await ssh_users.password_works(user, OLD)  # nothing reached the target


async def test_a_cancel_while_the_change_is_recorded_closes_the_verify_it_opened(
    store: Store, ssh_users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change's record opens the verify's attempt; canceled meanwhile, the verify never
    runs, and its attempt says so instead of staying "running" for ever."""
    user = ssh_users.create(OLD)
    operation, device = store.operation(user, OLD, "change")
    entered, proceed = threading.Event(), threading.Event()
    original = attempts.open_attempt

    def held(session: object, operation_id: str, step: str, number: int) -> str:
        opened = original(session, operation_id, step, number)  # type: ignore[arg-type]
        if step == "verify":
            entered.set()
            assert proceed.wait(30)
        return opened

    monkeypatch.setattr(attempts, "open_attempt", held)
    env = ActivityEnvironment()
    change = asyncio.create_task(store.change(operation, env=env, verify_after_change=True))
    try:
        assert await asyncio.to_thread(entered.wait, 30)
        env.cancel()
    finally:
        proceed.set()
    with pytest.raises(asyncio.CancelledError):
        await change

    assert store.attempts(operation) == [("change", "succeeded"), ("verify", "canceled")]
    assert store.charges(device) == []  # the verify's charge, taken ahead, given back
    assert await ssh_users.password_works(user, NEW)  # the change itself went through


async def test_a_job_that_fails_to_load_unexpectedly_is_recorded_as_an_internal_error(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    operation, _ = store.operation("app", OLD, "change")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the store went away")

    monkeypatch.setattr(jobs, "job_in", broken)
    monkeypatch.setattr("activities.executor_steps.job_in", broken)
    with pytest.raises(ApplicationError) as caught:
        await store.change(operation)

    assert caught.value.type == "InternalError"
    assert "RuntimeError: the store went away" in caught.value.message
    # The transaction that opened the attempt was rolled back; the attempt is recorded alone.
    assert store.attempts(operation) == [("change", "error")]


async def test_a_probe_of_an_operation_already_committed_answers_from_the_store(
    store: Store, ssh_users: Users
) -> None:
    """A change that committed (and handed its credential on) lost its answer, and the
    workflow probes: the store's outcome is the answer, and the target, perhaps in another
    operation's hands by now, is not asked."""
    user = ssh_users.create(OLD)
    operation, device = store.operation(user, OLD, "change")
    with Session(store.engine) as session:
        row = session.get(Operation, operation)
        assert row is not None
        row.status = OperationStatus.SUCCEEDED
        session.add(row)
        session.commit()

    outcome = await store.probe(operation)

    assert outcome == ProbeOutcome(pending_works=True, current_works=None)
    assert store.attempts(operation) == [] and store.charges(device) == []
    assert _logins(store, user) == 0


def _logins(store: Store, user: str) -> int:
    return store.sshd.log_path.read_text(errors="replace").count(f"password for {user} ")


async def test_a_change_with_no_pending_secret_gives_its_charge_back(
    store: Store, ssh_users: Users
) -> None:
    user = ssh_users.create(OLD)
    operation, device = store.operation(user, OLD, "change")
    with Session(store.engine) as session:
        session.add(AccountLock(device_id=device, username=user))  # charged ahead from now on
        row = session.get(Operation, operation)
        assert row is not None
        row.pending_version_id = None
        session.add(row)
        session.commit()

    with pytest.raises(ApplicationError) as caught:
        await store.change(operation)

    assert caught.value.non_retryable and "no pending secret" in caught.value.message
    assert store.attempts(operation) == [("change", "error")]
    assert store.charges(device) == [] and _logins(store, user) == 0
