"""Cancel at each step of an operation: waiting for a device slot, during the change (passwd held
at a prompt), between change and verify, during the commit. Whatever the step, vault and target
agree afterwards and no attempt is left running. Real sshd, real Temporal dev server; the
templates below hold the target at a known point so the cancel lands there."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select
from temporalio.client import WorkflowFailureError

from activities import executor_steps, store_steps
from activities.begin import BeginActivities
from activities.store_steps import commit_in
from store.models import Attempt, DeviceSlotClaim, Operation, SecretVersion
from tests.e2e.conftest import Stack
from tests.e2e.helpers import (
    cancel_requested,
    credential,
    current_secret,
    policy,
    ssh_device,
    ssh_template,
    start_change,
    wait_for_step,
)
from tests.servers.sshd import Sshd, Users
from workflows.contracts import (
    OPERATION_REVISION,
    CommitInput,
    CommitOutcome,
    RegisterInput,
)

OLD = "Canc3l-old-pass"
PASSWD = (Path(__file__).parents[2] / "executors/templates/ssh/linux-passwd.tpl").read_text()
# passwd waits at its "Retype new password:" prompt: the target has not changed yet.
HELD_AT_PROMPT = """# kind: change
spawn: passwd
expect: (?i)current password:
send: {{ current_password }}
expect: (?i)new password:
send: {{ new_password }}
expect: keyturn-never-appears
"""
# passwd has changed the password; then the script waits on a command that never answers.
# The held command is named for its test ({hold}): a user id is reused once its throwaway
# account is deleted, and a command left from an earlier test must not be taken for this one's.
HELD_AFTER_PASSWD = PASSWD + "exec: exec -a {hold} sleep 300\nexpect: keyturn-never-appears\n"
HELD_VERIFY = "# kind: verify\nexec: exec -a {hold} sleep 300\nexpect: keyturn-never-appears\n"


async def _process_of(user: str, name: str, within: float = 30) -> None:
    """Wait until ``user`` runs ``name`` on the target: the operation is where the test wants."""
    await _until_pgrep(["-U", user, "-x", name], within)


@pytest.fixture
async def hold() -> AsyncIterator[str]:
    """A name for this test's held command (``_holding`` waits for it); killed at the end."""
    name = f"keyturn-held-{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        killer = await asyncio.create_subprocess_exec("pkill", "-f", name)
        await killer.wait()


async def _holding(hold: str, within: float = 30) -> None:
    await _until_pgrep(["-f", hold], within)


async def _until_pgrep(args: list[str], within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        # -U: the real uid (passwd is set-uid root, its effective uid is not the user's).
        pgrep = await asyncio.create_subprocess_exec(
            "pgrep", *args, stdout=asyncio.subprocess.DEVNULL
        )
        if await pgrep.wait() == 0:
            return
        assert loop.time() < deadline, f"no process matched pgrep {' '.join(args)}"
        await asyncio.sleep(0.05)


async def _request(stack: Stack, credential_id: str) -> dict[str, Any]:
    return await stack.post(
        f"/v1/credentials/{credential_id}/operations", {"kind": "change"}, expect=202
    )


async def _cancel_and_wait(stack: Stack, accepted: dict[str, Any]) -> dict[str, Any]:
    response = await stack.api.post(f"/v1/operations/{accepted['operation_id']}/cancel")
    assert response.status_code == 202, response.text
    handle = stack.client.get_workflow_handle(accepted["workflow_id"])
    with pytest.raises(WorkflowFailureError):  # the workflow ends canceled
        await asyncio.wait_for(handle.result(), 60)
    return await stack.get(f"/v1/operations/{accepted['operation_id']}")


def _states(stack: Stack, operation_id: str) -> tuple[list[str], str | None]:
    """Outcomes of every attempt, and the state of the operation's pending version."""
    with Session(stack.engine) as session:
        attempts = session.exec(
            select(Attempt.outcome)
            .where(Attempt.operation_id == operation_id)
            .order_by(col(Attempt.started_at))
        ).all()
        operation = session.get(Operation, operation_id)
        assert operation is not None
        pending = (
            session.get(SecretVersion, operation.pending_version_id)
            if operation.pending_version_id
            else None
        )
        return list(attempts), pending.state if pending else None


async def test_cancel_while_waiting_for_a_device_slot(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    device = await ssh_device(stack, sshd, max_concurrent_operations=1)
    pol = await policy(stack, read_timeout_seconds=120)
    held = await ssh_template(stack, HELD_AT_PROMPT, "change")
    holder_user, waiter_user = ssh_users.create(OLD), ssh_users.create(OLD)
    holder = await credential(
        stack, device["id"], holder_user, OLD, policy_id=pol["id"], change_template=held
    )
    waiter = await credential(stack, device["id"], waiter_user, OLD, policy_id=pol["id"])
    holding = await _request(stack, holder["id"])
    await _process_of(holder_user, "passwd")
    waiting = await _request(stack, waiter["id"])
    await wait_for_step(stack, waiting["workflow_id"], "waiting for a device slot")

    canceled = await _cancel_and_wait(stack, waiting)

    assert canceled["status"] == "canceled"
    assert "nothing was sent" in canceled["resolution"]
    assert _states(stack, waiting["operation_id"]) == ([], "failed")
    assert current_secret(stack, waiter["id"]) == OLD
    # The holder was never disturbed; canceled in turn (passwd still at its prompt), it finds
    # by probing that the target kept the old password.
    done = await _cancel_and_wait(stack, holding)
    assert done["status"] == "canceled" and "current secret still logs in" in done["resolution"]
    outcomes, pending = _states(stack, holding["operation_id"])
    assert outcomes[0] == "canceled" and "running" not in outcomes and pending == "failed"
    assert current_secret(stack, holder["id"]) == OLD
    assert await ssh_users.password_works(holder_user, OLD)


async def test_cancel_during_the_change_after_the_target_took_it(
    stack: Stack, sshd: Sshd, ssh_users: Users, hold: str
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack, read_timeout_seconds=120)
    held = await ssh_template(stack, HELD_AFTER_PASSWD.replace("{hold}", hold), "change")
    cred = await credential(
        stack, device["id"], user, OLD, policy_id=pol["id"], change_template=held
    )
    accepted = await _request(stack, cred["id"])
    await _holding(hold)

    done = await _cancel_and_wait(stack, accepted)

    assert done["status"] == "canceled"
    assert "the new secret logs in, adopted" in done["resolution"]
    outcomes, pending = _states(stack, accepted["operation_id"])
    assert outcomes == ["canceled", "succeeded"] and pending == "current"
    new = current_secret(stack, cred["id"])
    assert new != OLD and await ssh_users.password_works(user, new)


async def test_cancel_between_change_and_verify(
    stack: Stack, sshd: Sshd, ssh_users: Users, hold: str
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack, read_timeout_seconds=120)
    held_verify = await ssh_template(stack, HELD_VERIFY.replace("{hold}", hold), "verify")
    cred = await credential(
        stack, device["id"], user, OLD, policy_id=pol["id"], verify_template=held_verify
    )
    accepted = await _request(stack, cred["id"])
    await _holding(hold)  # the change is done; verify runs its (held) template

    done = await _cancel_and_wait(stack, accepted)

    assert done["status"] == "canceled"
    assert "adopted" in done["resolution"]
    outcomes, pending = _states(stack, accepted["operation_id"])
    assert outcomes == ["succeeded", "canceled", "succeeded"] and pending == "current"
    assert await ssh_users.password_works(user, current_secret(stack, cred["id"]))


class _HeldCommit:
    """The real commit, entered only when the test lets it: so a cancel can arrive mid-commit,
    whether the change step commits with its verify or the commit step does."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.proceed = threading.Event()
        self.by_the_commit_step = False

    def __call__(self, session: Session, step: CommitInput) -> CommitOutcome:
        # The commit step is a store activity, run in the worker's store threads; the change
        # step commits from a thread of its own event loop.
        self.by_the_commit_step = threading.current_thread().name.startswith("keyturn-store")
        self.entered.set()
        assert self.proceed.wait(60)
        return commit_in(session, step)


@pytest.fixture
def held_commit(monkeypatch: pytest.MonkeyPatch) -> Iterator[_HeldCommit]:
    held = _HeldCommit()
    monkeypatch.setattr(store_steps, "commit_in", held)
    monkeypatch.setattr(executor_steps, "commit_in", held)
    yield held
    held.proceed.set()


@pytest.mark.parametrize(
    "revision", [0, OPERATION_REVISION], ids=["commit-step", "commit-in-the-change-step"]
)
async def test_cancel_during_the_commit_is_too_late(
    stack: Stack, sshd: Sshd, ssh_users: Users, held_commit: _HeldCommit, revision: int
) -> None:
    """Started naming no revision, the workflow commits in a step of its own; naming this
    revision, the change step commits with its verify. A cancel mid-commit is too late either
    way."""
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    cred = await credential(stack, device["id"], user, OLD)
    handle = await start_change(stack, cred, device, revision, "held-commit")
    assert await asyncio.to_thread(held_commit.entered.wait, 60)
    assert held_commit.by_the_commit_step == (revision == 0)

    await handle.cancel()
    held_commit.proceed.set()
    result = await handle.result()

    assert result.status == "succeeded"
    assert "too late" in result.resolution
    operation = await stack.get(f"/v1/operations/{result.operation_id}")
    assert operation["status"] == "succeeded" and "too late" in operation["resolution"]
    assert "running" not in [a["outcome"] for a in operation["attempts"]]
    assert await ssh_users.password_works(user, current_secret(stack, cred["id"]))


async def test_a_cancel_while_the_operation_begins_stops_it_before_the_target(
    stack: Stack, sshd: Sshd, ssh_users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The begin step registered, prepared and claimed the device's slot when the cancel came
    (its answer not yet given): the operation ends canceled with nothing sent, its pending
    secret failed, its slot given back and its credential's gate free."""
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd, max_concurrent_operations=1)
    cred = await credential(stack, device["id"], user, OLD)
    began, proceed = threading.Event(), threading.Event()
    original = BeginActivities._begin

    def held(self: BeginActivities, request: RegisterInput) -> Any:
        answer = original(self, request)
        began.set()
        assert proceed.wait(60)
        return answer

    monkeypatch.setattr(BeginActivities, "_begin", held)
    handle = await start_change(stack, cred, device, OPERATION_REVISION, "held-begin")
    try:
        assert await asyncio.to_thread(began.wait, 60)
        await handle.cancel()
        # The cancel is in the history before the begin step's answer is.
        await cancel_requested(stack, handle.id)
    finally:
        proceed.set()
    with pytest.raises(WorkflowFailureError):  # it ends canceled
        await handle.result()
    monkeypatch.undo()

    with Session(stack.engine) as db:
        operation = db.exec(select(Operation).where(col(Operation.workflow_id) == handle.id)).one()
        pending = db.get(SecretVersion, operation.pending_version_id)
        tried = db.exec(select(Attempt).where(col(Attempt.operation_id) == operation.id)).all()
        claims = db.exec(
            select(DeviceSlotClaim).where(col(DeviceSlotClaim.device_id) == device["id"])
        ).all()
    assert operation.status == "canceled", operation
    assert "nothing was sent" in (operation.resolution or ""), operation.resolution
    assert pending is not None and pending.state == "failed", pending
    assert tried == [] and claims == [], (tried, claims)
    assert await ssh_users.password_works(user, OLD)
    async with asyncio.timeout(60):  # it would queue for ever behind an operation at the gate
        changed = await stack.run_operation(cred["id"])
    assert changed["status"] == "succeeded", changed
