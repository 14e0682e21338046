"""Every trigger at once on one credential and one device: expiry and verify sweeps, a view, a
session's end, manual and a2a requests. They all queue at the credential's gate and share the
device's slot; each ends, none overlaps another on the credential or (cap 1) on the device, and
the vault's secret logs in at the end. Real sshd, real Temporal dev server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlmodel import Session, col, select

from store.models import Attempt, Credential, Operation
from tests.e2e.conftest import PolicyFactory, Stack
from tests.e2e.helpers import credential, current_secret, ssh_device
from tests.e2e.trigger_helpers import age, eventually, operations
from tests.servers.sshd import Sshd, Users
from workflows.contracts import delayed_operation_workflow_id

OLD = "T0gether-0ld"
HOUR = 3600
TERMINAL = ("succeeded", "failed", "canceled")


def _settled(stack: Stack, credential_ids: list[str], since: datetime) -> bool:
    """Both clocks of every credential restarted after ``since`` and nothing left in flight."""
    with Session(stack.engine) as session:
        for credential_id in credential_ids:
            row = session.get(Credential, credential_id)
            assert row is not None
            for at in (row.secret_changed_at, row.verified_at):
                if at.replace(tzinfo=UTC) <= since:
                    return False
        pending = session.exec(
            select(Operation).where(
                col(Operation.credential_id).in_(credential_ids),
                col(Operation.finished_at).is_(None),
            )
        ).all()
        return not pending


def _overlaps(spans: list[tuple[datetime, datetime]]) -> bool:
    spans = sorted(spans)
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))


async def test_every_trigger_at_once_on_one_credential_and_device(
    stack: Stack, sshd: Sshd, ssh_users: Users, scheduled_policy: PolicyFactory
) -> None:
    rules = await scheduled_policy(
        change_every_seconds=HOUR,
        verify_every_seconds=HOUR,
        change_after_view_seconds=0,
        change_after_session_seconds=0,
        max_concurrent_operations=1,
    )
    device = await ssh_device(stack, sshd)
    users = [ssh_users.create(OLD) for _ in range(3)]
    creds = [await credential(stack, device["id"], u, OLD, policy_id=rules["id"]) for u in users]
    ids = [c["id"] for c in creds]
    target = ids[0]
    await stack.post(
        f"/v1/credentials/{target}/events", {"event": "session-start", "session_id": "s"}, 200
    )
    started = datetime.now(UTC)
    for credential_id in ids:
        age(stack, credential_id, 2 * HOUR)
        age(stack, credential_id, 2 * HOUR, column="verified_at")

    async def request(kind: str, trigger: str) -> None:
        response = await stack.api.post(
            f"/v1/credentials/{target}/operations", json={"kind": kind, "trigger": trigger}
        )
        assert response.status_code in (200, 202), response.text

    async def view() -> None:
        await stack.get(f"/v1/credentials/{target}/secret")

    async def session_end() -> None:
        await stack.post(
            f"/v1/credentials/{target}/events", {"event": "session-end", "session_id": "s"}, 200
        )

    await asyncio.gather(
        request("change", "manual"),
        request("verify", "manual"),
        request("change", "a2a"),
        view(),
        session_end(),
    )

    async def settled() -> bool:
        return _settled(stack, ids, started)

    await eventually(settled, 90, "every credential changed and verified since the requests")
    handle = stack.client.get_workflow_handle(delayed_operation_workflow_id("change", target))
    await handle.result()  # the view's (or session's) change has run or been satisfied

    ops = await operations(stack, device_id=device["id"])
    assert ops and all(o["status"] == "succeeded" for o in ops), [
        (o["trigger"], o["status"], o["error"]) for o in ops
    ]
    triggers = {o["trigger"] for o in ops if o["credential_id"] == target}
    assert (
        {"manual"}
        <= triggers
        <= {"manual", "a2a", "view", "session-end", "expiry", "verify-schedule"}
    )
    assert {o["trigger"] for o in ops if o["credential_id"] != target} <= {
        "expiry",
        "verify-schedule",
    }
    with Session(stack.engine) as session:
        attempts = session.exec(
            select(Attempt, Operation).where(
                Attempt.operation_id == Operation.id, col(Operation.credential_id).in_(ids)
            )
        ).all()
    spans = [(a.started_at, a.finished_at) for a, _ in attempts if a.finished_at]
    assert len(spans) == len(attempts) >= 3 * 2  # each credential changed and verified
    assert not _overlaps(spans), "two operations used the device (cap 1) at once"
    # One writer per credential: an operation's steps never interleave with another's.
    by_operation: dict[str, list[Attempt]] = {}
    for attempt, operation in attempts:
        by_operation.setdefault(operation.id, []).append(attempt)
    for credential_id in ids:
        steps = [
            (min(a.started_at for a in rows), max(a.finished_at or a.started_at for a in rows))
            for operation_id, rows in by_operation.items()
            if next(o for o in ops if o["id"] == operation_id)["credential_id"] == credential_id
        ]
        assert not _overlaps(steps), f"operations on {credential_id} overlapped"
    for user, credential_id in zip(users, ids, strict=True):
        assert await ssh_users.password_works(user, current_secret(stack, credential_id))
