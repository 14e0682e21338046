"""Activate, deactivate and just-in-time accounts through the API, for end-to-end tests."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import Stack
from workflows.contracts import delayed_operation_workflow_id, operation_workflow_id


async def operation_ended(stack: Stack, operation_id: str) -> dict[str, Any]:
    """Wait for a requested operation's workflow to end; the operation as the API shows it."""
    row = await stack.get(f"/v1/operations/{operation_id}")
    await stack.client.get_workflow_handle(row["workflow_id"]).result()
    return await stack.get(f"/v1/operations/{operation_id}")


async def jit_removal_ended(stack: Stack, credential_id: str) -> dict[str, Any]:
    """Wait for the delayed jit-remove of a just-in-time account (Temporal fires it when the
    account's time to live ends), then for the removal it requested; that operation."""
    delayed = stack.client.get_workflow_handle(
        delayed_operation_workflow_id("jit-remove", credential_id)
    )
    outcome = await delayed.result()
    assert outcome.startswith("requested operation"), outcome
    await stack.client.get_workflow_handle(
        operation_workflow_id("jit-remove", credential_id)
    ).result()
    operation_id = outcome.split()[2]
    return await stack.get(f"/v1/operations/{operation_id}")


async def credential_row(stack: Stack, credential_id: str) -> dict[str, Any]:
    return await stack.get(f"/v1/credentials/{credential_id}")


async def session_event(stack: Stack, credential_id: str, event: str, session_id: str) -> Any:
    return await stack.post(
        f"/v1/credentials/{credential_id}/events",
        {"event": event, "session_id": session_id},
        expect=200,
    )
