"""A password change over SSH, end to end: HTTP API → Temporal workflow → worker → real sshd."""

from __future__ import annotations

import asyncssh
import pytest
from temporalio.client import WorkflowFailureError

from tests.e2e.conftest import Stack
from tests.e2e.helpers import (
    credential,
    current_secret,
    policy,
    ssh_device,
    versions,
    wait_for_attempts,
)
from tests.servers.sshd import Sshd, Users

OLD = "Old-pass w0rd;$#'\"\\x"


async def test_change_through_the_api(stack: Stack, sshd: Sshd, ssh_users: Users) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack)
    cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
    before = cred["current_version_id"]

    op = await stack.run_operation(cred["id"])

    assert op["status"] == "succeeded", op
    new = current_secret(stack, cred["id"])
    assert new != OLD
    assert await ssh_users.password_works(user, new)
    assert not await ssh_users.password_works(user, OLD)
    after = await stack.get(f"/v1/credentials/{cred['id']}")
    assert after["current_version_id"] != before
    assert after["sync_state"] == "in_sync"
    states = dict(versions(stack, cred["id"]))
    assert states[before] == "previous" and states[after["current_version_id"]] == "current"
    steps = [(a["step"], a["number"], a["outcome"]) for a in op["attempts"]]
    assert steps == [("change", 1, "succeeded"), ("verify", 1, "succeeded")]
    change = op["attempts"][0]
    assert change["started_at"] and change["finished_at"]
    assert "passwd" in change["transcript"] and "***" in change["transcript"]


async def test_change_through_a_privileged_account(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    admin_password = "Adm1n pass'word\"$"
    admin = ssh_users.create(admin_password)
    ssh_users.make_admin(admin)
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    admin_cred = await credential(stack, device["id"], admin, admin_password)
    cred = await credential(stack, device["id"], user, OLD, auth_credential_id=admin_cred["id"])
    assert cred["change_template"] == "ssh/linux-chpasswd"

    op = await stack.run_operation(cred["id"])

    assert op["status"] == "succeeded", op
    assert await ssh_users.password_works(user, current_secret(stack, cred["id"]))
    assert not await ssh_users.password_works(user, OLD)
    assert await ssh_users.password_works(admin, admin_password)  # the admin is untouched


async def test_wrong_current_password_fails_at_once_and_changes_nothing(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack)
    cred = await credential(stack, device["id"], user, "not-the-password", policy_id=pol["id"])

    op = await stack.run_operation(cred["id"])

    assert op["status"] == "failed"
    assert op["error_type"] == "AuthenticationFailed"
    assert "refused the password" in op["error"] and device["name"] in op["error"]
    assert [a["step"] for a in op["attempts"]] == ["change"]  # no retry
    assert current_secret(stack, cred["id"]) == "not-the-password"
    assert (await stack.get(f"/v1/credentials/{cred['id']}"))["current_version_id"] == cred[
        "current_version_id"
    ]
    assert await ssh_users.password_works(user, OLD)


async def test_unreachable_target_is_retried_per_policy_then_fails(
    stack: Stack, ssh_users: Users
) -> None:
    down = Sshd()
    down.start()
    down.stop()  # a real port where nothing listens any more
    try:
        user = ssh_users.create(OLD)
        device = await ssh_device(stack, down)
        pol = await policy(stack, max_attempts=3, retry_interval_seconds=0.2)
        cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])

        op = await stack.run_operation(cred["id"])

        assert op["status"] == "failed"
        assert op["error_type"] == "ConnectFailed"
        outcomes = [(a["step"], a["number"], a["outcome"]) for a in op["attempts"]]
        assert outcomes == [("change", n, "ConnectFailed") for n in (1, 2, 3)]
        assert current_secret(stack, cred["id"]) == OLD
        assert "failed" in dict(versions(stack, cred["id"])).values()  # the unused pending
    finally:
        down.close()


async def test_target_back_before_the_last_attempt_succeeds(stack: Stack, ssh_users: Users) -> None:
    flaky = Sshd()
    flaky.start()
    flaky.stop()
    try:
        user = ssh_users.create(OLD)
        device = await ssh_device(stack, flaky)
        pol = await policy(stack, max_attempts=5, retry_interval_seconds=1.0, backoff=1.0)
        cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
        accepted = await stack.post(
            f"/v1/credentials/{cred['id']}/operations", {"kind": "change"}, expect=202
        )
        # A second request while the first runs joins it instead of racing it.
        again = await stack.post(
            f"/v1/credentials/{cred['id']}/operations", {"kind": "change"}, expect=200
        )
        assert again["joined"] and again["operation_id"] == accepted["operation_id"]

        await wait_for_attempts(stack, accepted["operation_id"], 2, within=30)
        flaky.start()
        await stack.client.get_workflow_handle(accepted["workflow_id"]).result()

        op = await stack.get(f"/v1/operations/{accepted['operation_id']}")
        assert op["status"] == "succeeded", op
        changes = [a for a in op["attempts"] if a["step"] == "change"]
        assert len(changes) >= 3
        assert all(a["outcome"] == "ConnectFailed" for a in changes[:-1])
        assert changes[-1]["outcome"] == "succeeded"
        new = current_secret(stack, cred["id"])
        async with asyncssh.connect(
            "127.0.0.1",
            port=flaky.port,
            username=user,
            password=new,
            known_hosts=None,
            client_keys=None,
            agent_path=None,
        ) as conn:
            assert str((await conn.run("id -un", check=True)).stdout).strip() == user
    finally:
        flaky.close()


async def test_host_key_mismatch_is_refused_without_retry(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    user = ssh_users.create(OLD)
    impostor_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    device = await ssh_device(stack, sshd, host_keys=[impostor_key.strip()])
    pol = await policy(stack)
    cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])

    op = await stack.run_operation(cred["id"])

    assert op["status"] == "failed"
    assert op["error_type"] == "HostKeyMismatch"
    assert len(op["attempts"]) == 1
    assert current_secret(stack, cred["id"]) == OLD
    assert await ssh_users.password_works(user, OLD)


async def test_trust_on_first_use_pins_the_key_it_saw(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd, host_keys=[], trust_on_first_use=True)

    cred = await credential(stack, device["id"], user, OLD)
    op = await stack.run_operation(cred["id"])

    assert op["status"] == "succeeded", op
    pinned = (await stack.get(f"/v1/devices/{device['id']}"))["host_keys"]
    assert [k.split()[:2] for k in pinned] == [sshd.host_key_line.split()[:2]]


@pytest.mark.parametrize("kind", ["verify"])
async def test_verify_operation_reports_sync_state(
    stack: Stack, sshd: Sshd, ssh_users: Users, kind: str
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    cred = await credential(stack, device["id"], user, OLD)
    assert (await stack.run_operation(cred["id"], kind))["status"] == "succeeded"

    ssh_users.set_password(user, "changed behind Keyturn's back")
    op = await stack.run_operation(cred["id"], kind)

    assert op["status"] == "failed" and op["error_type"] == "OutOfSync"
    assert (await stack.get(f"/v1/credentials/{cred['id']}"))["sync_state"] == "out_of_sync"


async def test_a_canceled_operation_is_recorded_as_canceled(stack: Stack, ssh_users: Users) -> None:
    down = Sshd()
    down.start()
    down.stop()
    try:
        user = ssh_users.create(OLD)
        device = await ssh_device(stack, down)
        pol = await policy(stack, max_attempts=50, retry_interval_seconds=0.5, backoff=1.0)
        cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
        accepted = await stack.post(
            f"/v1/credentials/{cred['id']}/operations", {"kind": "change"}, expect=202
        )
        await wait_for_attempts(stack, accepted["operation_id"], 1, within=30)
        handle = stack.client.get_workflow_handle(accepted["workflow_id"])
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()

        op = await stack.get(f"/v1/operations/{accepted['operation_id']}")
        assert op["status"] == "canceled"
        assert current_secret(stack, cred["id"]) == OLD
        # A new request after a cancel starts a fresh operation.
        again = await stack.post(
            f"/v1/credentials/{cred['id']}/operations", {"kind": "change"}, expect=202
        )
        assert again["operation_id"] != accepted["operation_id"]
        await stack.client.get_workflow_handle(again["workflow_id"]).cancel()
    finally:
        down.close()
