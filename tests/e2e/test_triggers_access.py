"""Views, sessions and the verification heartbeat: a read of the secret is audited and followed
by one change, sessions hold expiry changes back and ask for one when the last ends, and a verify
schedule finds drift and reconciles it. Real sshd, real Temporal dev server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from temporalio.service import RPCError, RPCStatusCode

from tests.e2e.conftest import PolicyFactory, Stack
from tests.e2e.helpers import credential, current_secret, ssh_device
from tests.e2e.trigger_helpers import (
    age,
    audit_events,
    operation_ended,
    operations,
    sweep_finished,
)
from tests.servers.sshd import Sshd, Users
from workflows.contracts import delayed_operation_workflow_id

OLD = "V1ew-0ld-pass"
HOUR = 3600


async def _event(stack: Stack, credential_id: str, event: str, session: str) -> dict[str, Any]:
    return await stack.post(
        f"/v1/credentials/{credential_id}/events",
        {"event": event, "session_id": session},
        expect=200,
    )


async def _delayed_result(stack: Stack, credential_id: str) -> str:
    handle = stack.client.get_workflow_handle(
        delayed_operation_workflow_id("change", credential_id)
    )
    result: str = await handle.result()
    return result


async def _delayed_exists(stack: Stack, credential_id: str) -> bool:
    handle = stack.client.get_workflow_handle(
        delayed_operation_workflow_id("change", credential_id)
    )
    try:
        await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def test_views_are_audited_and_followed_by_exactly_one_change(
    stack: Stack, sshd: Sshd, ssh_users: Users, scheduled_policy: PolicyFactory
) -> None:
    rules = await scheduled_policy(change_after_view_seconds=2)
    device = await ssh_device(stack, sshd)
    user = ssh_users.create(OLD)
    cred = await credential(stack, device["id"], user, OLD, policy_id=rules["id"])

    responses = [await stack.api.get(f"/v1/credentials/{cred['id']}/secret") for _ in range(3)]
    assert all(r.headers["cache-control"] == "no-store" for r in responses)
    reads = [r.json() for r in responses]
    assert {(r["password"], r["version_id"]) for r in reads} == {(OLD, cred["current_version_id"])}

    changed = await operation_ended(stack, credential_id=cred["id"])
    assert (changed["kind"], changed["trigger"], changed["status"]) == (
        "change",
        "view",
        "succeeded",
    ), changed
    assert (await _delayed_result(stack, cred["id"])) == f"requested operation {changed['id']}"
    assert [o["id"] for o in await operations(stack, credential_id=cred["id"])] == [changed["id"]]
    viewed = audit_events(stack, "secret.viewed", cred["id"])
    assert len(viewed) == 3
    assert all(
        e.detail["by"] == "admin" and e.detail["version_id"] == cred["current_version_id"]
        for e in viewed
    )
    new = current_secret(stack, cred["id"])
    assert new != OLD and await ssh_users.password_works(user, new)


async def test_a_change_committed_while_a_view_change_waits_satisfies_it(
    stack: Stack, sshd: Sshd, ssh_users: Users, scheduled_policy: PolicyFactory
) -> None:
    delay = 6
    rules = await scheduled_policy(change_after_view_seconds=delay)
    device = await ssh_device(stack, sshd)
    user = ssh_users.create(OLD)
    cred = await credential(stack, device["id"], user, OLD, policy_id=rules["id"])
    viewed_at = datetime.now(UTC)
    await stack.get(f"/v1/credentials/{cred['id']}/secret")

    # The waiting change holds no gate: a manual change runs at once, not queued behind it.
    accepted = await stack.post(
        f"/v1/credentials/{cred['id']}/operations", {"kind": "change"}, expect=202
    )
    assert accepted["status"] == "scheduled", accepted
    manual = await operation_ended(stack, credential_id=cred["id"])
    assert manual["status"] == "succeeded" and manual["trigger"] == "manual"
    committed_at = datetime.fromisoformat(manual["finished_at"]).replace(tzinfo=UTC)
    assert (committed_at - viewed_at).total_seconds() < delay, "too slow to test in between"

    assert (await _delayed_result(stack, cred["id"])).startswith("satisfied"), "not satisfied"
    assert [o["id"] for o in await operations(stack, credential_id=cred["id"])] == [manual["id"]]


async def test_a_view_of_the_new_secret_is_answered_after_a_change_in_between(
    stack: Stack, sshd: Sshd, ssh_users: Users, scheduled_policy: PolicyFactory
) -> None:
    """The second view joins the waiting request (no second workflow) and saw the secret the
    manual change set: that secret must be changed too, so the change is not satisfied."""
    delay = 6
    rules = await scheduled_policy(change_after_view_seconds=delay)
    device = await ssh_device(stack, sshd)
    user = ssh_users.create(OLD)
    cred = await credential(stack, device["id"], user, OLD, policy_id=rules["id"])
    viewed_at = datetime.now(UTC)
    await stack.get(f"/v1/credentials/{cred['id']}/secret")
    manual = await stack.run_operation(cred["id"])
    assert manual["status"] == "succeeded", manual
    second = await stack.get(f"/v1/credentials/{cred['id']}/secret")
    assert second["password"] != OLD
    assert (datetime.now(UTC) - viewed_at).total_seconds() < delay, "too slow to test in between"

    result = await _delayed_result(stack, cred["id"])
    ops = await operations(stack, credential_id=cred["id"])
    assert [o["trigger"] for o in ops] == ["view", "manual"], ops
    assert result == f"requested operation {ops[0]['id']}"
    changed = await operation_ended(stack, credential_id=cred["id"], trigger="view")
    assert changed["status"] == "succeeded"
    assert current_secret(stack, cred["id"]) != second["password"]


async def test_overlapping_sessions_change_once_after_the_last_ends(
    stack: Stack, sshd: Sshd, ssh_users: Users, scheduled_policy: PolicyFactory
) -> None:
    rules = await scheduled_policy(change_after_session_seconds=1)
    device = await ssh_device(stack, sshd)
    user = ssh_users.create(OLD)
    cred = await credential(stack, device["id"], user, OLD, policy_id=rules["id"])

    assert (await _event(stack, cred["id"], "session-start", "s1"))["open_sessions"] == 1
    assert (await _event(stack, cred["id"], "session-start", "s2"))["open_sessions"] == 2
    first_end = await _event(stack, cred["id"], "session-end", "s1")
    assert (first_end["open_sessions"], first_end["change_requested"]) == (1, False)
    assert not await _delayed_exists(stack, cred["id"])
    last_end = await _event(stack, cred["id"], "session-end", "s2")
    assert (last_end["open_sessions"], last_end["change_requested"]) == (0, True)

    changed = await operation_ended(stack, credential_id=cred["id"])
    assert (changed["trigger"], changed["status"]) == ("session-end", "succeeded"), changed
    assert changed["created_at"] > last_end["ended_at"]
    assert (await _delayed_result(stack, cred["id"])) == f"requested operation {changed['id']}"
    assert len(await operations(stack, credential_id=cred["id"])) == 1
    assert await ssh_users.password_works(user, current_secret(stack, cred["id"]))


async def test_an_expiry_change_waits_for_an_open_session(
    stack: Stack, sshd: Sshd, ssh_users: Users, scheduled_policy: PolicyFactory
) -> None:
    rules = await scheduled_policy(change_every_seconds=HOUR)
    device = await ssh_device(stack, sshd)
    user = ssh_users.create(OLD)
    cred = await credential(stack, device["id"], user, OLD, policy_id=rules["id"])
    await _event(stack, cred["id"], "session-start", "in-use")
    age(stack, cred["id"], 2 * HOUR)

    await sweep_finished(stack, "expiry", rules["id"], after=datetime.now(UTC))
    assert await operations(stack, credential_id=cred["id"]) == []

    ended = await _event(stack, cred["id"], "session-end", "in-use")
    changed = await operation_ended(stack, credential_id=cred["id"])
    assert (changed["trigger"], changed["status"]) == ("expiry", "succeeded"), changed
    assert changed["created_at"] > ended["ended_at"]


async def test_an_expiry_change_waits_no_longer_than_the_policy_allows(
    stack: Stack, sshd: Sshd, ssh_users: Users, scheduled_policy: PolicyFactory
) -> None:
    rules = await scheduled_policy(change_every_seconds=HOUR, max_session_wait_seconds=60)
    device = await ssh_device(stack, sshd)
    user = ssh_users.create(OLD)
    cred = await credential(stack, device["id"], user, OLD, policy_id=rules["id"])
    await _event(stack, cred["id"], "session-start", "forgotten")
    age(stack, cred["id"], 2 * HOUR)  # due for an hour: longer than the session may hold it

    changed = await operation_ended(stack, credential_id=cred["id"])
    assert (changed["trigger"], changed["status"]) == ("expiry", "succeeded"), changed


async def test_a_verify_schedule_finds_drift_and_reconciles_it(
    stack: Stack, sshd: Sshd, ssh_users: Users, scheduled_policy: PolicyFactory
) -> None:
    admin_password = "Heartbeat-admin"
    admin = ssh_users.create(admin_password)
    ssh_users.make_admin(admin)
    user = ssh_users.create(OLD)
    rules = await scheduled_policy(verify_every_seconds=HOUR)
    device = await ssh_device(stack, sshd)
    admin_cred = await credential(stack, device["id"], admin, admin_password)
    cred = await credential(
        stack,
        device["id"],
        user,
        OLD,
        policy_id=rules["id"],
        reconcile_credential_id=admin_cred["id"],
        auto_reconcile=True,
    )
    ssh_users.set_password(user, "changed behind Keyturn's back")
    age(stack, cred["id"], 2 * HOUR, column="verified_at")

    verify = await operation_ended(stack, credential_id=cred["id"], kind="verify")
    assert (verify["trigger"], verify["status"], verify["error_type"]) == (
        "verify-schedule",
        "failed",
        "OutOfSync",
    ), verify
    reconcile = await operation_ended(stack, credential_id=cred["id"], kind="reconcile")
    assert (reconcile["trigger"], reconcile["status"]) == ("out-of-sync", "succeeded"), reconcile
    assert (await stack.get(f"/v1/credentials/{cred['id']}"))["sync_state"] == "in_sync"
    assert await ssh_users.password_works(user, current_secret(stack, cred["id"]))
    # Verified by the reconcile's commit: the next sweeps leave it alone.
    await sweep_finished(stack, "verify", rules["id"], after=datetime.now(UTC))
    assert len(await operations(stack, credential_id=cred["id"])) == 2
