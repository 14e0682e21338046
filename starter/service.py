"""Requesting operations: one place that turns a request into a durable workflow.

Every front door (the HTTP API, the CLI, and later schedules and sweeps) comes here; a program
with only a Temporal client can also start the workflow itself, and the workflow registers its
own row, so both paths behave the same. Nothing here holds a database connection while it waits
for Temporal: store work runs in a thread, between the awaits.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from activities.gate import register_operation
from keyturn.settings import Settings
from starter.deps import in_thread
from starter.problems import Problem
from store.models import Credential, Operation, OperationStatus, new_id
from workflows.contracts import (
    WORKFLOW_NAME,
    OperationInput,
    RegisterInput,
    operation_workflow_id,
)
from workflows.operation import initial_search_attributes

# A request that finds a running operation of its kind joins it; if that one ends between the
# start attempt and the look, the request starts again (a bounded number of times).
START_TRIES = 3


@dataclass(frozen=True)
class Requested:
    operation_id: str
    workflow_id: str
    status: str
    joined: bool


async def request_operation(
    engine: Engine,
    client: Client,
    settings: Settings,
    credential: Credential,
    kind: str,
    trigger: str,
) -> Requested:
    """Start an operation, or join the one of this kind already in flight on the credential.

    The per-kind workflow id makes Temporal the arbiter of joins: of two racing requests exactly
    one starts a workflow. The started one is registered at the credential's gate before this
    returns, so requests are queued in the order they were answered.
    """
    workflow_id = operation_workflow_id(kind, credential.id)
    for _ in range(START_TRIES):
        operation = OperationInput(
            credential_id=credential.id,
            kind=kind,
            trigger=trigger,
            operation_id=new_id(),
            device_id=credential.device_id,
        )
        try:
            handle = await client.start_workflow(
                WORKFLOW_NAME,
                operation,
                id=workflow_id,
                task_queue=settings.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                search_attributes=initial_search_attributes(operation),
                memo={"operation_id": operation.operation_id},
            )
        except WorkflowAlreadyStartedError:
            running = await _running_operation(engine, client, workflow_id)
            if running is not None:
                return running
            continue  # it ended between our attempt and our look: start one
        except RPCError as exc:
            raise Problem(
                503, f"Temporal at {settings.temporal_address} did not accept the operation: {exc}"
            ) from None
        admission = await asyncio.to_thread(
            register_operation,
            engine,
            RegisterInput(
                operation.operation_id,
                credential.id,
                kind,
                trigger,
                workflow_id,
                handle.result_run_id or "",
            ),
        )
        status = OperationStatus.QUEUED if admission.queued else OperationStatus.SCHEDULED
        return Requested(operation.operation_id, workflow_id, status, joined=False)
    raise Problem(
        503, f"operations on {workflow_id} kept ending as requests arrived; send the request again"
    )


async def _running_operation(engine: Engine, client: Client, workflow_id: str) -> Requested | None:
    description = await client.get_workflow_handle(workflow_id).describe()
    if description.status != WorkflowExecutionStatus.RUNNING:
        return None
    operation_id = await description.memo_value("operation_id", None, type_hint=str)
    row = await in_thread(engine, lambda db: _operation_row(db, operation_id, description.run_id))
    if row is not None:
        return Requested(row.id, workflow_id, row.status, joined=True)
    if operation_id is None:
        # Started with the Temporal client alone and not registered yet: its own id comes with
        # its first step; until then the workflow is what there is to follow.
        status = await client.get_workflow_handle(workflow_id).query("status")
        operation_id = status.get("operation_id") or None
        if operation_id is None:
            return None
    return Requested(operation_id, workflow_id, OperationStatus.SCHEDULED, joined=True)


def _operation_row(db: Session, operation_id: str | None, run_id: str) -> Operation | None:
    if operation_id is not None:
        return db.get(Operation, operation_id)
    return db.exec(select(Operation).where(Operation.run_id == run_id)).first()
