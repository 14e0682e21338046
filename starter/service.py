"""Starting operations: one place that turns a request into a durable workflow."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from keyturn.settings import Settings
from starter.problems import Problem
from store.engine import session_scope
from store.models import Credential, Operation
from workflows.contracts import WORKFLOW_NAME, OperationInput, operation_workflow_id
from workflows.operation import initial_search_attributes


async def request_operation(
    engine: Engine,
    client: Client,
    settings: Settings,
    credential: Credential,
    kind: str,
    trigger: str,
) -> tuple[Operation, bool]:
    """Start an operation, or join the one of this kind already running for the credential.

    The fixed workflow id makes Temporal the arbiter: of two racing requests exactly one starts
    a workflow, and the other is told which operation to follow. Returns (operation, joined).
    """
    workflow_id = operation_workflow_id(kind, credential.id)
    operation = Operation(
        credential_id=credential.id, kind=kind, trigger=trigger, workflow_id=workflow_id
    )
    await asyncio.to_thread(_save, engine, operation)
    try:
        await client.start_workflow(
            WORKFLOW_NAME,
            OperationInput(operation.id, credential.id, credential.device_id, kind, trigger),
            id=workflow_id,
            task_queue=settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=initial_search_attributes(
                OperationInput(operation.id, credential.id, credential.device_id, kind, trigger)
            ),
            memo={"operation_id": operation.id},
        )
    except WorkflowAlreadyStartedError:
        await asyncio.to_thread(_delete, engine, operation.id)
        running = await _running_operation(engine, client, workflow_id)
        if running is None:  # it finished between our attempt and our look: try once more
            return await request_operation(engine, client, settings, credential, kind, trigger)
        return running, True
    except RPCError as exc:
        await asyncio.to_thread(_delete, engine, operation.id)
        raise Problem(
            503, f"Temporal at {settings.temporal_address} did not accept the operation: {exc}"
        ) from None
    return operation, False


async def _running_operation(engine: Engine, client: Client, workflow_id: str) -> Operation | None:
    description = await client.get_workflow_handle(workflow_id).describe()
    if description.status != WorkflowExecutionStatus.RUNNING:
        return None
    operation_id = await description.memo_value("operation_id", type_hint=str)
    return await asyncio.to_thread(_get, engine, operation_id)


def _get(engine: Engine, operation_id: str) -> Operation | None:
    with Session(engine) as db:
        return db.get(Operation, operation_id)


def _save(engine: Engine, operation: Operation) -> None:
    with session_scope(engine) as db:
        db.add(operation)


def _delete(engine: Engine, operation_id: str) -> None:
    with session_scope(engine) as db:
        row = db.get(Operation, operation_id)
        if row is not None:
            db.delete(row)
