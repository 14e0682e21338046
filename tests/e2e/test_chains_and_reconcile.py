"""Chained children, reconciliation, cancel and the credential links that drive them."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from temporalio.client import WorkflowFailureError

from tests.e2e.conftest import Stack
from tests.e2e.helpers import (
    credential,
    current_secret,
    policy,
    ssh_device,
    wait_for_attempts,
)
from tests.servers.sshd import Sshd, Users

OLD = "Chain-0ld-pass"


async def _wait_terminal(stack: Stack, operation_id: str, within: float = 60) -> dict[str, Any]:
    """Children run on their own (ABANDON): follow one until its workflow ends (its own
    children are listed from then on), then read it through the API."""
    op = await stack.get(f"/v1/operations/{operation_id}")
    handle = stack.client.get_workflow_handle(op["workflow_id"])
    with contextlib.suppress(WorkflowFailureError):  # a canceled operation ends that way
        await asyncio.wait_for(handle.result(), within)
    return await stack.get(f"/v1/operations/{operation_id}")


async def test_a_parent_change_chains_to_children_and_a_failing_child_stays_alone(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    device = await ssh_device(stack, sshd)
    pol = await policy(stack, max_attempts=1)
    parent_user = ssh_users.create(OLD)
    parent = await credential(stack, device["id"], parent_user, OLD, policy_id=pol["id"])
    children = []
    for index in range(3):
        user = ssh_users.create(OLD)
        # The second child's vault password is wrong: its change fails.
        password = "wrong-password" if index == 1 else OLD
        children.append(
            (
                user,
                await credential(
                    stack, device["id"], user, password, policy_id=pol["id"], parent_id=parent["id"]
                ),
            )
        )
    grandchild_user = ssh_users.create(OLD)
    grandchild = await credential(
        stack, device["id"], grandchild_user, OLD, parent_id=children[0][1]["id"]
    )

    op = await stack.run_operation(parent["id"])

    assert op["status"] == "succeeded"
    assert {c["credential_id"] for c in op["children"]} == {c["id"] for _, c in children}
    outcomes = {}
    for child in op["children"]:
        done = await _wait_terminal(stack, child["operation_id"])
        assert done["trigger"] == "parent-changed" and done["parent_operation_id"] == op["id"]
        outcomes[child["credential_id"]] = done
    assert [outcomes[c["id"]]["status"] for _, c in children] == [
        "succeeded",
        "failed",
        "succeeded",
    ]
    # The parent and the siblings are untouched by the failure.
    assert (await stack.get(f"/v1/operations/{op['id']}"))["status"] == "succeeded"
    for index, (user, cred) in enumerate(children):
        if index != 1:
            assert await ssh_users.password_works(user, current_secret(stack, cred["id"]))
    # Children of children work too.
    first_child_op = outcomes[children[0][1]["id"]]
    [grand_op] = first_child_op["children"]
    assert grand_op["credential_id"] == grandchild["id"]
    assert (await _wait_terminal(stack, grand_op["operation_id"]))["status"] == "succeeded"
    assert await ssh_users.password_works(grandchild_user, current_secret(stack, grandchild["id"]))


async def test_parent_cycles_are_refused(stack: Stack, sshd: Sshd) -> None:
    device = await ssh_device(stack, sshd)
    a = await credential(stack, device["id"], "a", "pw-a-123")
    b = await credential(stack, device["id"], "b", "pw-b-123", parent_id=a["id"])
    c = await credential(stack, device["id"], "c", "pw-c-123", parent_id=b["id"])

    cycle = await stack.api.patch(f"/v1/credentials/{a['id']}", json={"parent_id": c["id"]})
    assert cycle.status_code == 422 and "cycle" in cycle.json()["detail"]
    itself = await stack.api.patch(f"/v1/credentials/{a['id']}", json={"parent_id": a["id"]})
    assert itself.status_code == 422
    assert (await stack.get(f"/v1/credentials/{a['id']}"))["parent_id"] is None
    moved = await stack.api.patch(f"/v1/credentials/{c['id']}", json={"parent_id": a["id"]})
    assert moved.status_code == 200 and moved.json()["parent_id"] == a["id"]
    bad = await stack.api.patch(f"/v1/credentials/{c['id']}", json={"auto_reconcile": True})
    assert bad.status_code == 422 and "reconcile_credential_id" in bad.json()["detail"]


async def test_drift_is_detected_by_verify_and_reconciled(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    admin_password = "Rec0ncile-admin"
    admin = ssh_users.create(admin_password)
    ssh_users.make_admin(admin)
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    admin_cred = await credential(stack, device["id"], admin, admin_password)
    cred = await credential(stack, device["id"], user, OLD)
    patched = await stack.api.patch(
        f"/v1/credentials/{cred['id']}",
        json={"reconcile_credential_id": admin_cred["id"], "auto_reconcile": True},
    )
    assert patched.status_code == 200, patched.text

    ssh_users.set_password(user, "changed behind Keyturn's back")
    verify = await stack.run_operation(cred["id"], "verify")

    assert verify["status"] == "failed" and verify["credential_out_of_sync"]
    [reconcile] = verify["children"]
    assert reconcile["kind"] == "reconcile"
    done = await _wait_terminal(stack, reconcile["operation_id"])
    assert done["status"] == "succeeded", done
    assert (await stack.get(f"/v1/credentials/{cred['id']}"))["sync_state"] == "in_sync"
    assert await ssh_users.password_works(user, current_secret(stack, cred["id"]))


async def test_a_change_with_a_refused_secret_reconciles_when_asked(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    admin_password = "Rec0ncile-admin2"
    admin = ssh_users.create(admin_password)
    ssh_users.make_admin(admin)
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    admin_cred = await credential(stack, device["id"], admin, admin_password)
    cred = await credential(
        stack,
        device["id"],
        user,
        "drifted-away",
        reconcile_credential_id=admin_cred["id"],
        auto_reconcile=True,
    )

    op = await stack.run_operation(cred["id"])

    assert op["status"] == "succeeded", op
    assert op["resolution"].startswith("reconciled")
    assert await ssh_users.password_works(user, current_secret(stack, cred["id"]))
    # Asked for explicitly, reconcile works too; without a reconcile credential it is refused.
    assert (await stack.run_operation(cred["id"], "reconcile"))["status"] == "succeeded"
    plain = await credential(stack, device["id"], ssh_users.create(OLD), OLD)
    refused = await stack.api.post(
        f"/v1/credentials/{plain['id']}/operations", json={"kind": "reconcile"}
    )
    assert refused.status_code == 422


async def test_cancel_through_the_api(stack: Stack, ssh_users: Users) -> None:
    down = Sshd()
    down.start()
    down.stop()
    try:
        device = await ssh_device(stack, down)
        pol = await policy(stack, max_attempts=50, retry_interval_seconds=0.5, backoff=1.0)
        cred = await credential(
            stack, device["id"], ssh_users.create(OLD), OLD, policy_id=pol["id"]
        )
        accepted = await stack.post(
            f"/v1/credentials/{cred['id']}/operations", {"kind": "change"}, expect=202
        )
        await wait_for_attempts(stack, accepted["operation_id"], 1, within=30)

        response = await stack.api.post(f"/v1/operations/{accepted['operation_id']}/cancel")
        assert response.status_code == 202, response.text
        done = await _wait_terminal(stack, accepted["operation_id"])
        assert done["status"] == "canceled"
        again = await stack.api.post(f"/v1/operations/{accepted['operation_id']}/cancel")
        assert again.status_code == 409
        assert (await stack.api.post("/v1/operations/nope/cancel")).status_code == 404
    finally:
        down.close()
