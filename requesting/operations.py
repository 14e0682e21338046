"""Turn a request into a durable operation workflow, or join the one already in flight.

Nothing here holds a database connection while it waits for Temporal: store work runs in a
thread, between the awaits, so a burst of requests never exhausts the pool.
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

from store import gate
from store.engine import in_thread
from store.models import Credential, Operation, OperationStatus, new_id
from workflows.contracts import (
    WORKFLOW_NAME,
    OperationInput,
    initial_search_attributes,
    operation_workflow_id,
)

# A request that finds a running operation of its kind joins it; if that one ends between the
# start attempt and the look, the request starts again (a bounded number of times).
START_TRIES = 3


class RequestFailed(Exception):
    """The operation could not be requested; the message says what to do."""


class CredentialNotFound(RequestFailed):
    def __init__(self, credential_id: str) -> None:
        self.credential_id = credential_id
        super().__init__(f"no credential with id {credential_id!r}")


class TemporalUnavailable(RequestFailed):
    """Temporal did not take the workflow (unreachable, or it kept ending as requests came)."""


@dataclass(frozen=True)
class OperationRequest:
    credential_id: str
    kind: str = "change"
    trigger: str = "manual"
    requested_by: str | None = None  # the principal (audit trail, SIEM); None: Keyturn itself
    # Where the outcome is POSTed when the operation ends. Kept in the store only, never in the
    # workflow's input: a URL may carry a token of the receiver's.
    callback_url: str | None = None


@dataclass(frozen=True)
class Requested:
    operation_id: str
    workflow_id: str
    status: str  # scheduled, or queued when another operation on the credential is ahead
    joined: bool  # an operation of this kind was already in flight: this is it


async def request_operation(
    engine: Engine, client: Client, task_queue: str, request: OperationRequest
) -> Requested:
    """Start an operation, or join the one of this kind already in flight on the credential.

    The per-kind workflow id makes Temporal the arbiter of joins: of two racing requests exactly
    one starts a workflow. The started one is registered at the credential's gate before this
    returns, so requests are queued in the order they were answered.
    """
    credential = await in_thread(engine, lambda db: db.get(Credential, request.credential_id))
    if credential is None:
        raise CredentialNotFound(request.credential_id)
    workflow_id = operation_workflow_id(request.kind, credential.id)
    for _ in range(START_TRIES):
        operation = OperationInput(
            credential_id=credential.id,
            kind=request.kind,
            trigger=request.trigger,
            operation_id=new_id(),
            device_id=credential.device_id,
            callback=request.callback_url is not None,
            requested_by=request.requested_by,
        )
        try:
            handle = await client.start_workflow(
                WORKFLOW_NAME,
                operation,
                id=workflow_id,
                task_queue=task_queue,
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
            raise TemporalUnavailable(
                f"Temporal at {client.service_client.config.target_host} did not accept the "
                f"operation: {exc}"
            ) from None
        admission = await asyncio.to_thread(
            gate.admit,
            engine,
            gate.Registration(
                operation.operation_id,
                credential.id,
                request.kind,
                request.trigger,
                workflow_id,
                handle.result_run_id or None,
                requested_by=request.requested_by,
                callback_url=request.callback_url,
            ),
        )
        status = OperationStatus.QUEUED if admission.queued else OperationStatus.SCHEDULED
        return Requested(operation.operation_id, workflow_id, status, joined=False)
    raise TemporalUnavailable(
        f"operations on {workflow_id} kept ending as requests arrived; send the request again"
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
