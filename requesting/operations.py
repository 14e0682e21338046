"""Turn a request into a durable operation workflow, or join the one already in flight.

Nothing here holds a database connection while it waits for Temporal: store work runs in a
thread, between the awaits, so a burst of requests never exhausts the pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from requesting.chosen import SecretChoice, check_secret_choice, fail_unused, store_supplied
from requesting.errors import CredentialNotFound, InvalidRequest, TemporalUnavailable
from requesting.lifecycle import check_lifecycle
from store import gate
from store.engine import in_thread, session_scope
from store.models import Credential, Operation, OperationStatus, new_id
from store.vault import Vault
from workflows.contracts import (
    OPERATION_KINDS,
    OPERATION_REVISION,
    TRIGGERS,
    WORKFLOW_NAME,
    OperationInput,
    chosen_secret_workflow_id,
    initial_search_attributes,
    operation_workflow_id,
)

# A request that finds a running operation of its kind joins it; if that one ends between the
# start attempt and the look, the request starts again (a bounded number of times).
START_TRIES = 3
# A joining request that finds the operation ending waits this long for its workflow to close.
ENDING_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class OperationRequest:
    credential_id: str
    kind: str = "change"
    trigger: str = "manual"
    # adopt, set-in-vault and a change's next password name the secret to act with.
    choice: SecretChoice = SecretChoice()
    requested_by: str | None = None  # the principal (audit trail, SIEM); None: Keyturn itself
    # Where the outcome is POSTed when the operation ends. Kept in the store only, never in the
    # workflow's input: a URL may carry a token of the receiver's.
    callback_url: str | None = None
    ttl_seconds: int | None = None  # jit-create: how long the account lives once created


@dataclass(frozen=True)
class Requested:
    operation_id: str
    workflow_id: str
    status: str  # scheduled, or queued when another operation on the credential is ahead
    joined: bool  # an operation of this kind was already in flight: this is it
    run_id: str | None = None  # the workflow run joined


async def request_operation(
    engine: Engine,
    client: Client,
    task_queue: str,
    request: OperationRequest,
    vault: Vault | None = None,
    authorize: Callable[[Session], Credential] | None = None,
) -> Requested:
    """Start an operation, or join the one of this kind already in flight on the credential.

    The per-kind workflow id makes Temporal the arbiter of joins: of two racing requests exactly
    one starts a workflow. The started one is registered at the credential's gate before this
    returns, so requests are queued in the order they were answered. A request that names its
    secret (``request.choice``) is checked first (InvalidRequest) and never joins; ``vault``
    stores a supplied value and is needed only then. ``authorize`` reads the credential for a
    caller who may be refused it (its exception goes up as it is), in the trip to the store
    that checks the request.
    """
    if request.kind not in OPERATION_KINDS:
        raise InvalidRequest("kind", f"{request.kind!r} is not one of {', '.join(OPERATION_KINDS)}")
    if request.trigger not in TRIGGERS:
        raise InvalidRequest("trigger", f"{request.trigger!r} is not one of {', '.join(TRIGGERS)}")

    def checked(db: Session) -> Credential:
        credential = (
            authorize(db) if authorize is not None else db.get(Credential, request.credential_id)
        )
        if credential is None:
            raise CredentialNotFound(request.credential_id)
        check_secret_choice(db, credential, request.kind, request.choice)
        check_lifecycle(db, credential, request.kind, request.ttl_seconds)
        return credential

    # One trip to the store for the reads: each trip is a thread hop and a session.
    credential = await in_thread(engine, checked)
    if request.choice.names_a_secret:
        return await request_with_chosen_secret(
            engine, client, task_queue, credential, request, vault
        )
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
            ttl_seconds=request.ttl_seconds or 0,
            revision=OPERATION_REVISION,
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
            if running is not None and await _joined_callback(engine, client, running, request):
                return running
            continue  # it ended (or is ending) between our attempt and our look: start one
        except RPCError as exc:
            raise TemporalUnavailable(
                f"Temporal at {client.service_client.config.target_host} did not accept the "
                f"operation: {exc}"
            ) from None
        return await _admitted(engine, operation, workflow_id, handle.result_run_id, request)
    raise TemporalUnavailable(
        f"operations on {workflow_id} kept ending as requests arrived; send the request again"
    )


async def request_with_chosen_secret(
    engine: Engine,
    client: Client,
    task_queue: str,
    credential: Credential,
    request: OperationRequest,
    vault: Vault | None,
) -> Requested:
    """An operation that acts with a secret the request names: its own workflow (never joined),
    queued at the credential's gate like any other. A supplied value is stored encrypted as a
    pending version of this operation before the workflow starts, so only its id travels.
    The choice must have been checked (``check_secret_choice``), or come from the store."""
    operation_id = new_id()
    version_id = request.choice.version_id
    secret = request.choice.supplied
    if secret is not None:
        if vault is None:
            raise TypeError("a request that supplies a secret needs the vault to store it")
        version_id = await in_thread(
            engine, lambda db: store_supplied(db, vault, credential, operation_id, secret)
        )
    assert version_id is not None
    operation = OperationInput(
        credential_id=credential.id,
        kind=request.kind,
        trigger=request.trigger,
        operation_id=operation_id,
        device_id=credential.device_id,
        version_id=version_id,
        callback=request.callback_url is not None,
        requested_by=request.requested_by,
        revision=OPERATION_REVISION,
    )
    workflow_id = chosen_secret_workflow_id(request.kind, credential.id, operation_id)
    try:
        handle = await client.start_workflow(
            WORKFLOW_NAME,
            operation,
            id=workflow_id,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=initial_search_attributes(operation),
            memo={"operation_id": operation_id},
        )
    except RPCError as exc:
        if secret is not None:  # no operation will ever use it
            await in_thread(engine, lambda db: fail_unused(db, version_id))
        raise TemporalUnavailable(
            f"Temporal at {client.service_client.config.target_host} did not accept the "
            f"operation: {exc}"
        ) from None
    return await _admitted(engine, operation, workflow_id, handle.result_run_id, request)


async def _admitted(
    engine: Engine,
    operation: OperationInput,
    workflow_id: str,
    run_id: str | None,
    request: OperationRequest,
) -> Requested:
    """Register the started operation at its credential's gate before answering, so requests
    are queued in the order they were answered."""
    admission = await asyncio.to_thread(
        gate.admit,
        engine,
        gate.Registration(
            operation.operation_id,
            operation.credential_id,
            operation.kind,
            operation.trigger,
            workflow_id,
            run_id or None,
            source_version_id=operation.version_id or None,
            requested_by=request.requested_by,
            callback_url=request.callback_url,
            ttl_seconds=operation.ttl_seconds or None,
        ),
    )
    status = OperationStatus.QUEUED if admission.queued else OperationStatus.SCHEDULED
    return Requested(operation.operation_id, workflow_id, status, joined=False)


async def _joined_callback(
    engine: Engine, client: Client, running: Requested, request: OperationRequest
) -> bool:
    """Register the joining request's callback URL on the operation in flight. False when that
    operation has already closed its callbacks: it is ending, so once its workflow has ended
    (which frees the workflow id) the request starts an operation of its own, whose outcome it
    will be told, instead of joining one that would never tell it."""
    url = request.callback_url
    if url is None:
        return True

    def join() -> bool:
        with session_scope(engine) as db:
            return gate.join_callback(db, running.operation_id, request.credential_id, url)

    if await asyncio.to_thread(join):
        return True
    handle = client.get_workflow_handle(running.workflow_id, run_id=running.run_id)
    try:
        await asyncio.wait_for(handle.result(), ENDING_WAIT_SECONDS)
    except WorkflowFailureError:
        pass  # ended canceled or failed: its id is free all the same
    except TimeoutError:
        raise TemporalUnavailable(
            f"operation {running.operation_id} has ended but its workflow {running.workflow_id} "
            f"is still closing; send the request again"
        ) from None
    return False


async def _running_operation(engine: Engine, client: Client, workflow_id: str) -> Requested | None:
    description = await client.get_workflow_handle(workflow_id).describe()
    if description.status != WorkflowExecutionStatus.RUNNING:
        return None
    operation_id = await description.memo_value("operation_id", None, type_hint=str)
    row = await in_thread(engine, lambda db: _operation_row(db, operation_id, description.run_id))
    if row is not None:
        return Requested(row.id, workflow_id, row.status, joined=True, run_id=description.run_id)
    if operation_id is None:
        # Started with the Temporal client alone and not registered yet: its own id comes with
        # its first step; until then the workflow is what there is to follow.
        status = await client.get_workflow_handle(workflow_id).query("status")
        operation_id = status.get("operation_id") or None
        if operation_id is None:
            return None
    return Requested(
        operation_id, workflow_id, OperationStatus.SCHEDULED, joined=True, run_id=description.run_id
    )


def _operation_row(db: Session, operation_id: str | None, run_id: str) -> Operation | None:
    if operation_id is not None:
        return db.get(Operation, operation_id)
    return db.exec(select(Operation).where(Operation.run_id == run_id)).first()
