"""A start naming a revision of the operation's steps newer than the worker's (an API of a newer
Keyturn during an upgrade): the worker fails its workflow task rather than run its own steps
into a history the newer release could not replay. The operation waits for a newer worker and
touches nothing meanwhile: no row, no gate held, so other operations on its credential go on;
once a newer worker serves the queue, it runs. Real sshd, real Temporal dev server."""

from __future__ import annotations

import asyncio

import pytest
from sqlmodel import Session, col, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from store.models import Operation
from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, current_secret, ssh_device, start_change
from tests.servers.sshd import Sshd, Users
from workflows import operation as operation_module
from workflows.contracts import (
    OPERATION_REVISION,
)

OLD = "N3wer-rev-old-pass"


async def _failed_task_message(
    client: Client, handle: WorkflowHandle[object, object], within: float = 30
) -> str:
    """The message of the workflow's first failed workflow task, once it is recorded (decoded:
    failure messages are encrypted in the history)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                failure = event.workflow_task_failed_event_attributes.failure
                return str(await client.data_converter.decode_failure(failure))
        assert loop.time() < deadline, "no workflow task failed"
        await asyncio.sleep(0.05)


async def test_a_start_of_a_newer_revision_waits_for_a_newer_worker_and_blocks_nothing(
    stack: Stack, sshd: Sshd, ssh_users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    cred = await credential(stack, device["id"], user, OLD)
    newer = await start_change(stack, cred, device, OPERATION_REVISION + 1, "newer-revision")
    try:
        # A change and a verify through the API on the same credential and device, at once (a
        # second change would join the first).
        changes = await asyncio.gather(
            stack.run_operation(cred["id"]), stack.run_operation(cred["id"], "verify")
        )
        message = await _failed_task_message(stack.client, newer)
        described = await newer.describe()
        with Session(stack.engine) as db:
            rows = db.exec(select(Operation).where(col(Operation.workflow_id) == newer.id)).all()

        assert f"revision {OPERATION_REVISION + 1} is newer" in message, message
        assert described.status == WorkflowExecutionStatus.RUNNING
        assert rows == [], "the refused start wrote to the store"
        assert [c["status"] for c in changes] == ["succeeded", "succeeded"], changes
        assert await ssh_users.password_works(user, current_secret(stack, cred["id"]))

        # The worker is now of the newer release (the workflow module is shared with the
        # sandbox): the task's next try, a workflow task timeout later, runs the operation.
        monkeypatch.setattr(operation_module, "OPERATION_REVISION", OPERATION_REVISION + 1)
        async with asyncio.timeout(60):
            result = await newer.result()
    finally:
        if (await newer.describe()).status == WorkflowExecutionStatus.RUNNING:
            await newer.terminate("test over")

    assert result.status == "succeeded", result
    assert await ssh_users.password_works(user, current_secret(stack, cred["id"]))
