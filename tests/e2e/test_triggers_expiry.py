"""Expiry as Temporal Schedules: a policy's sweep changes what has aged past its period, leaves
what has not, waits for the change window, and stops while the policy is paused. Real sshd, real
Temporal dev server, sweeps every second (the stack's KEYTURN_SWEEP_INTERVAL_SECONDS)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from tests.e2e.conftest import PolicyFactory, Stack
from tests.e2e.helpers import credential, current_secret, ssh_device
from tests.e2e.trigger_helpers import (
    age,
    listed_by_temporal_cli,
    operation_ended,
    operations,
    schedule_exists,
    sweep_finished,
)
from tests.servers.sshd import Sshd, Users
from workflows.contracts import delayed_operation_workflow_id, schedule_id

OLD = "Exp1ry-0ld-pass"
HOUR = 3600


def _clock(at: datetime) -> str:
    return at.strftime("%H:%M")


async def test_an_expired_secret_is_changed_and_a_fresh_one_is_not(
    stack: Stack, sshd: Sshd, ssh_users: Users, scheduled_policy: PolicyFactory
) -> None:
    rules = await scheduled_policy(change_every_seconds=HOUR)
    device = await ssh_device(stack, sshd)
    expired_user, fresh_user = ssh_users.create(OLD), ssh_users.create(OLD)
    expired = await credential(stack, device["id"], expired_user, OLD, policy_id=rules["id"])
    fresh = await credential(stack, device["id"], fresh_user, OLD, policy_id=rules["id"])
    age(stack, expired["id"], 2 * HOUR)

    changed = await operation_ended(stack, credential_id=expired["id"])
    assert (changed["kind"], changed["trigger"], changed["status"]) == (
        "change",
        "expiry",
        "succeeded",
    ), changed
    # A whole sweep after the change: the fresh secret is untouched, the changed one not again.
    await sweep_finished(stack, "expiry", rules["id"], after=datetime.now(UTC))
    assert await operations(stack, credential_id=fresh["id"]) == []
    assert len(await operations(stack, credential_id=expired["id"])) == 1
    assert await ssh_users.password_works(expired_user, current_secret(stack, expired["id"]))
    assert await ssh_users.password_works(fresh_user, OLD)
    # The trigger is on the operation's workflow too.
    found = [
        w.id
        async for w in stack.client.list_workflows(
            f"KeyturnCredentialId = '{expired['id']}' AND KeyturnTrigger = 'expiry'"
        )
    ]
    assert found in ([], [changed["workflow_id"]])  # visibility may lag; never another


async def test_outside_its_window_an_expired_secret_waits_for_the_window(
    stack: Stack, sshd: Sshd, ssh_users: Users, scheduled_policy: PolicyFactory
) -> None:
    now = datetime.now(UTC)
    closed = {
        "start": _clock(now + timedelta(hours=6)),
        "end": _clock(now + timedelta(hours=7)),
        "timezone": "UTC",
    }
    rules = await scheduled_policy(change_every_seconds=HOUR, change_window=closed)
    assert rules["change_window"]["days"] == ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    device = await ssh_device(stack, sshd)
    user = ssh_users.create(OLD)
    waiting = await credential(stack, device["id"], user, OLD, policy_id=rules["id"])
    age(stack, waiting["id"], 2 * HOUR)

    result = await sweep_finished(stack, "expiry", rules["id"], after=datetime.now(UTC))
    assert "outside the policy's change window" in result, result
    assert await operations(stack, credential_id=waiting["id"]) == []

    # The window opens (here: the policy's window is moved to now).
    opened = {
        **closed,
        "start": _clock(now - timedelta(hours=1)),
        "end": _clock(now + timedelta(hours=1)),
    }
    response = await stack.api.patch(f"/v1/policies/{rules['id']}", json={"change_window": opened})
    assert response.status_code == 200, response.text
    changed = await operation_ended(stack, credential_id=waiting["id"])
    assert (changed["trigger"], changed["status"]) == ("expiry", "succeeded"), changed


async def test_pausing_a_policy_stops_its_expiry_changes(
    stack: Stack, sshd: Sshd, ssh_users: Users, scheduled_policy: PolicyFactory
) -> None:
    rules = await scheduled_policy(change_every_seconds=HOUR)
    paused = await stack.api.patch(f"/v1/policies/{rules['id']}", json={"paused": True})
    assert paused.status_code == 200 and paused.json()["paused"] is True, paused.text
    assert (await stack.get(f"/v1/policies/{rules['id']}"))["paused"] is True
    await listed_by_temporal_cli(stack, schedule_id("expiry", rules["id"]), paused=True)

    device = await ssh_device(stack, sshd)
    user = ssh_users.create(OLD)
    held = await credential(stack, device["id"], user, OLD, policy_id=rules["id"])
    age(stack, held["id"], 2 * HOUR)
    handle = stack.client.get_schedule_handle(schedule_id("expiry", rules["id"]))
    actions = (await handle.describe()).info.num_actions
    # Three sweep intervals pass: a paused schedule starts no sweep, so nothing is changed.
    deadline = datetime.now(UTC) + timedelta(seconds=3 * stack.settings.sweep_interval_seconds)
    while datetime.now(UTC) < deadline:
        assert (await handle.describe()).info.num_actions == actions
        assert await operations(stack, credential_id=held["id"]) == []
        await asyncio.sleep(0.2)

    resumed = await stack.api.patch(f"/v1/policies/{rules['id']}", json={"paused": False})
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    await listed_by_temporal_cli(stack, schedule_id("expiry", rules["id"]), paused=False)
    changed = await operation_ended(stack, credential_id=held["id"])
    assert (changed["trigger"], changed["status"]) == ("expiry", "succeeded"), changed

    # No expiry period any more: the schedule goes.
    response = await stack.api.patch(
        f"/v1/policies/{rules['id']}", json={"change_every_seconds": None}
    )
    assert response.status_code == 200 and response.json()["change_every_seconds"] is None
    assert not await schedule_exists(stack, "expiry", rules["id"])
    await listed_by_temporal_cli(stack, schedule_id("expiry", rules["id"]), paused=None)


async def test_a_jitter_spreads_expiry_changes_through_delayed_requests(
    stack: Stack, sshd: Sshd, ssh_users: Users, scheduled_policy: PolicyFactory
) -> None:
    rules = await scheduled_policy(change_every_seconds=HOUR, jitter_seconds=2)
    device = await ssh_device(stack, sshd)
    users = [ssh_users.create(OLD) for _ in range(2)]
    creds = [await credential(stack, device["id"], u, OLD, policy_id=rules["id"]) for u in users]
    for cred in creds:
        age(stack, cred["id"], 2 * HOUR)

    for user, cred in zip(users, creds, strict=True):
        changed = await operation_ended(stack, credential_id=cred["id"])
        assert (changed["trigger"], changed["status"]) == ("expiry", "succeeded"), changed
        # Requested by the credential's delayed workflow, at its offset within the jitter.
        delayed = stack.client.get_workflow_handle(
            delayed_operation_workflow_id("change", cred["id"])
        )
        assert await delayed.result() == f"requested operation {changed['id']}"
        assert await ssh_users.password_works(user, current_secret(stack, cred["id"]))
    await sweep_finished(stack, "expiry", rules["id"], after=datetime.now(UTC))
    assert all([len(await operations(stack, credential_id=c["id"])) == 1 for c in creds])
