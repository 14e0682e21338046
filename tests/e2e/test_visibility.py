"""Operations are findable in Temporal (Web UI search attributes) and answer a status query."""

from __future__ import annotations

import asyncio
import json

from temporalio.client import Client

from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, policy, ssh_device
from tests.servers.sshd import Sshd, Users
from workflows.contracts import OperationInput, OperationResult

OLD = "Visible-0ld-pass"


async def _find(client: Client, query: str, within: float = 10.0) -> list[str]:
    """Visibility is eventually consistent: poll the list until the workflow shows up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        found = [w.id async for w in client.list_workflows(query)]
        if found or loop.time() > deadline:
            return found
        await asyncio.sleep(0.1)


async def test_operation_is_searchable_and_queryable(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    cred = await credential(stack, device["id"], user, OLD)
    accepted = await stack.post(
        f"/v1/credentials/{cred['id']}/operations", {"kind": "change"}, expect=202
    )
    handle = stack.client.get_workflow_handle(accepted["workflow_id"])
    await handle.result()

    query = (
        f"KeyturnCredentialId = '{cred['id']}' AND KeyturnDeviceId = '{device['id']}' "
        "AND KeyturnOperationKind = 'change' AND KeyturnTrigger = 'manual' "
        "AND KeyturnStatus = 'succeeded'"
    )
    assert await _find(stack.client, query) == [accepted["workflow_id"]]
    by_id = f"KeyturnOperationId = '{accepted['operation_id']}'"
    assert await _find(stack.client, by_id) == [accepted["workflow_id"]]
    other = f"KeyturnCredentialId = '{cred['id']}' AND KeyturnStatus = 'failed'"
    assert [w.id async for w in stack.client.list_workflows(other)] == []
    assert await handle.query("status") == {
        "status": "succeeded",
        "step": "done",
        "operation_id": accepted["operation_id"],
        "waiting_for": None,
    }


async def test_failure_messages_are_encoded_in_history(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack)
    cred = await credential(stack, device["id"], user, "wrong-password", policy_id=pol["id"])
    accepted = await stack.post(
        f"/v1/credentials/{cred['id']}/operations", {"kind": "change"}, expect=202
    )
    handle = stack.client.get_workflow_handle(accepted["workflow_id"], result_type=OperationResult)
    result = await handle.result()
    assert result.error_type == "AuthenticationFailed"
    assert "refused the password" in (result.error or "")  # readable through the codec ...
    raw = json.dumps((await handle.fetch_history()).to_json_dict())
    assert "refused the password" not in raw  # ... and encrypted in Temporal's history
    assert "Encoded failure" in raw


async def test_an_operation_started_with_the_sdk_alone_is_found_by_its_id(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    """The workflow names itself and upserts its id: findable even without the API's help."""
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    cred = await credential(stack, device["id"], user, OLD)
    result = await stack.client.execute_workflow(
        "KeyturnOperation",
        OperationInput(credential_id=cred["id"], kind="verify"),
        id=f"sdk-verify-{cred['id']}",
        task_queue=stack.settings.task_queue,
        result_type=OperationResult,
    )
    query = f"KeyturnOperationId = '{result.operation_id}'"
    assert await _find(stack.client, query) == [f"sdk-verify-{cred['id']}"]
