"""The default zone's executor steps on the main task queue (KEYTURN_DEFAULT_ZONE_ON_MAIN_QUEUE):
Temporal hands a step to the worker in its answer to the workflow task that scheduled it.
Operations behave as on a zone's queue: several at once on one credential and its device, each
vault secret the one the target has. Real sshd, real dev server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.e2e.conftest import Stack, running_stack
from tests.e2e.helpers import credential, current_secret, policy, ssh_device
from tests.servers.sshd import Sshd, Users

OLD = "main-queue-old-1"


@pytest.fixture(scope="module")
async def eager(
    temporal: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    async with running_stack(
        temporal, tmp_path_factory.mktemp("main-queue"), default_zone_on_main_queue=True
    ) as stack:
        yield stack


async def _request(stack: Stack, credential_id: str, kind: str) -> dict[str, Any]:
    response = await stack.api.post(
        f"/v1/credentials/{credential_id}/operations", json={"kind": kind}
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def _step_queues(stack: Stack, accepted: dict[str, Any]) -> set[str]:
    """The task queues the operation's executor steps were scheduled on, once it has ended."""
    handle = stack.client.get_workflow_handle(accepted["workflow_id"])
    await handle.result()
    history = await handle.fetch_history()
    return {
        event.activity_task_scheduled_event_attributes.task_queue.name
        for event in history.events
        if event.HasField("activity_task_scheduled_event_attributes")
    }


async def test_changes_and_verifies_on_one_credential_and_device_run_on_the_main_queue(
    eager: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    stack = eager
    device = await ssh_device(stack, sshd)
    pol = await policy(stack)
    users = [ssh_users.create(OLD) for _ in range(2)]
    creds = [
        await credential(stack, device["id"], user, OLD, policy_id=pol["id"]) for user in users
    ]
    first, second = creds
    # A change and a verify on one credential (one waits for the other), a change on another
    # credential of the device, all requested at once.
    requests = await asyncio.gather(
        _request(stack, first["id"], "change"),
        _request(stack, first["id"], "verify"),
        _request(stack, second["id"], "change"),
    )
    assert sorted(r["status"] for r in requests[:2]) == ["queued", "scheduled"]
    queues = await asyncio.gather(*(_step_queues(stack, r) for r in requests))
    assert queues == [{stack.settings.task_queue}] * 3
    for accepted in requests:
        done = await stack.get(f"/v1/operations/{accepted['operation_id']}")
        assert done["status"] == "succeeded", done
    for user, cred in zip(users, creds, strict=True):
        secret = current_secret(stack, cred["id"])
        assert secret != OLD
        assert await ssh_users.password_works(user, secret)
        assert not await ssh_users.password_works(user, OLD)
