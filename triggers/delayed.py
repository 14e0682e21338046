"""Ask for an operation later: a workflow started with a start delay, one per credential and
kind (its id), so more requests while one waits add nothing.

It holds no gate and no row while it waits (it registers nothing until it requests the
operation), so an operation requested meanwhile runs at once; when it fires, a change committed
after the event that asked for it satisfies it, and it requests nothing.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError

from requesting import TemporalUnavailable
from workflows.contracts import (
    DELAYED_OPERATION_WORKFLOW,
    DelayedOperation,
    delayed_operation_workflow_id,
)


async def request_later(
    client: Client, task_queue: str, request: DelayedOperation, delay: timedelta
) -> str:
    """The delayed workflow's id; if one is already waiting for this credential and kind, that
    one stands (it fires no later than this one would, and it covers this event too)."""
    workflow_id = delayed_operation_workflow_id(request.kind, request.credential_id)
    try:
        await client.start_workflow(
            DELAYED_OPERATION_WORKFLOW,
            request,
            id=workflow_id,
            task_queue=task_queue,
            start_delay=delay if delay > timedelta(0) else None,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )
    except RPCError as exc:
        raise TemporalUnavailable(
            f"Temporal at {client.service_client.config.target_host} did not accept the "
            f"delayed {request.kind}: {exc}"
        ) from None
    return workflow_id
