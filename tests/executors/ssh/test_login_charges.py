"""What a login costs the lockout budget, through the executor activities against a real sshd.

Every login is charged before it is tried. The charge is given back only when the login is known
not to have counted as a failure on the target: the secret never reached it (the connection or
its handshake did not complete) or the target accepted it. A refusal keeps the charge, and so
does a failure whose login outcome is unknown, which also stops the step: a retry could lock
the account. The activities run in Temporal's ActivityEnvironment on a SQLite store of their own.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlmodel import Session
from temporalio.exceptions import ApplicationError

import executors.ssh.executor
from store.models import Attempt
from tests.executors.ssh.conftest import OLD, Store, closed_port
from tests.servers.sshd import Sshd, Users
from workflows.contracts import ProbeOutcome


def _failed_logins(sshd: Sshd, user: str) -> int:
    return sshd.log_path.read_text(errors="replace").count(f"Failed password for {user} ")


async def test_a_refused_connection_gives_the_charge_back(store: Store) -> None:
    operation, device = store.operation("nobody", OLD, port=closed_port())

    with pytest.raises(ApplicationError) as caught:
        await store.probe(operation)

    assert caught.value.type == "ConnectFailed"
    assert not caught.value.non_retryable  # nothing reached the target: safe to retry
    assert store.charges(device) == []
    assert store.attempts(operation) == [("probe", "ConnectFailed")]


async def test_a_refused_password_keeps_the_charge(store: Store, ssh_users: Users) -> None:
    user = ssh_users.create(OLD)
    operation, device = store.operation(user, "not-the-password")

    outcome = await store.probe(operation)

    assert outcome == ProbeOutcome(pending_works=False, current_works=False)
    assert store.charges(device) == ["failed"]
    assert _failed_logins(store.sshd, user) == 1  # what the target counted


async def test_a_failure_after_the_login_gives_the_charge_back(
    store: Store, ssh_users: Users
) -> None:
    user = ssh_users.create(OLD)
    template = store.template("# kind: change\nexec: false\nexit: 0\n")
    operation, device = store.operation(user, OLD, "change", change_template=template)

    with pytest.raises(ApplicationError) as caught:
        await store.change(operation)

    assert caught.value.type == "ChangeRejected"
    assert store.charges(device) == []  # the login worked: it cost nothing
    assert _failed_logins(store.sshd, user) == 0


async def test_a_login_cut_off_before_its_verdict_keeps_the_charge_and_stops(
    store: Store, ssh_users: Users
) -> None:
    user = ssh_users.create(OLD)
    # PAM takes about 2 s to refuse a password; the login gives up after 1.2 s, once the
    # password is on its way: the target's verdict is never heard.
    operation, device = store.operation(
        user, "not-the-password", connect_timeout_seconds=0.4, read_timeout_seconds=0.8
    )

    with pytest.raises(ApplicationError) as caught:
        await store.probe(operation)

    assert caught.value.type == "ConnectFailed"
    assert caught.value.non_retryable  # retrying might lock the account
    assert "after the password was sent" in caught.value.message
    assert store.charges(device) == ["failed"]
    # The target did count it, after Keyturn stopped listening: the charge was right.
    for _ in range(100):
        if _failed_logins(store.sshd, user) == 1:
            break
        await asyncio.sleep(0.1)
    assert _failed_logins(store.sshd, user) == 1


async def test_an_unclassified_error_during_the_login_keeps_the_charge_and_stops(
    store: Store, ssh_users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = ssh_users.create(OLD)
    operation, device = store.operation(user, OLD)

    async def broken(*args: object) -> None:
        raise RuntimeError(f"something no executor expected (password {OLD})")

    monkeypatch.setattr(executors.ssh.executor, "_connect", broken)
    with pytest.raises(ApplicationError) as caught:
        await store.probe(operation)

    assert caught.value.type == "ExecutorError" and caught.value.non_retryable
    assert "RuntimeError" in caught.value.message and OLD not in caught.value.message
    assert store.charges(device) == ["failed"]
    assert OLD not in store.detail(operation)


async def test_a_configuration_error_is_recorded_and_costs_no_login(store: Store) -> None:
    operation, device = store.operation("app", OLD, "change", change_template="test/gone")

    with pytest.raises(ApplicationError) as caught:
        await store.change(operation)

    assert caught.value.type == "ConfigurationError" and caught.value.non_retryable
    assert store.attempts(operation) == [("change", "ConfigurationError")]
    detail = store.detail(operation)
    assert "'test/gone'" in detail and "change_template" in detail and "ssh/linux-passwd" in detail
    assert store.charges(device) == []


async def test_a_configuration_error_after_a_possibly_applied_attempt_is_not_nothing_sent(
    store: Store,
) -> None:
    operation, device = store.operation("app", OLD, "change", change_template="test/gone")
    with Session(store.engine) as session:  # attempt 1 may have reached the target
        session.add(Attempt(operation_id=operation, step="change", number=1, outcome="error"))
        session.commit()

    with pytest.raises(ApplicationError) as caught:
        await store.change(operation, attempt=2)

    # Not ConfigurationError, which the workflow reads as "nothing was sent": it must probe.
    assert caught.value.type == "OutcomeUnknown"
    assert "an earlier attempt may have applied the change" in caught.value.message
    assert store.attempts(operation)[-1] == ("change", "OutcomeUnknown")
    assert store.charges(device) == []
