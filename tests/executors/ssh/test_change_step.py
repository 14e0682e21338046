"""The change step's trips to the store, and what a cancel leaves of its records.

A change that verifies opens its attempt and loads its job in one transaction, records the
change's end and opens the verify's attempt in another, and records the verify's end (with the
lockout charges of each login in between): every trip saved is store time on every change.
Against the session's real sshd, the activity run in Temporal's ActivityEnvironment.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Connection
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from store import attempts, jobs
from tests.executors.ssh.conftest import NEW, OLD, Store
from tests.servers.sshd import Users

# Opening the change's attempt with its job; the change login's charge; the change's record
# with the verify's attempt; the verify login's charge; the verify's record.
TRANSACTIONS_OF_A_VERIFIED_CHANGE = 5


@pytest.fixture
def commits(store: Store) -> Iterator[list[int]]:
    """Every commit on the store's engine, counted."""
    counted: list[int] = []

    def count(connection: Connection) -> None:
        counted.append(1)

    event.listen(store.engine, "commit", count)
    yield counted
    event.remove(store.engine, "commit", count)


async def test_a_verified_change_takes_five_transactions(
    store: Store, ssh_users: Users, commits: list[int]
) -> None:
    user = ssh_users.create(OLD)
    operation, _ = store.operation(user, OLD, "change")
    commits.clear()  # the operation's own

    outcome = await store.change(operation, verify_after_change=True)

    assert outcome.verified is True
    assert store.attempts(operation) == [("change", "succeeded"), ("verify", "succeeded")]
    assert len(commits) == TRANSACTIONS_OF_A_VERIFIED_CHANGE
    assert await ssh_users.password_works(user, NEW)


async def test_a_cancel_while_the_change_is_recorded_closes_the_verify_it_opened(
    store: Store, ssh_users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change's record opens the verify's attempt; canceled meanwhile, the verify never
    runs, and its attempt says so instead of staying "running" for ever."""
    user = ssh_users.create(OLD)
    operation, _ = store.operation(user, OLD, "change")
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
