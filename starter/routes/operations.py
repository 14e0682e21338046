"""Operations: request one (202 at once, the work runs as a workflow) and follow it."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlmodel import col, select

from governance import webhooks
from requesting import (
    CredentialNotFound,
    OperationRequest,
    TemporalUnavailable,
    request_operation,
)
from starter.deps import ADMIN, DB, State, StoreRoute
from starter.problems import Problem, invalid, not_found
from starter.schemas import AttemptOut, ChildOut, OperationAccepted, OperationIn, OperationOut
from store.engine import in_thread
from store.models import Attempt, Credential, Operation, OperationStatus, SyncState

router = APIRouter(route_class=StoreRoute)


@router.post(
    "/credentials/{credential_id}/operations",
    status_code=202,
    response_model=OperationAccepted,
    responses={
        200: {"description": "an operation of this kind was running: joined it"},
        404: {"description": "no such credential"},
        422: {"description": "the body is not valid (kind, trigger, callback_url)"},
        503: {"description": "Temporal did not take the operation"},
    },
)
async def create_operation(
    credential_id: str, body: OperationIn, app: State, response: Response
) -> OperationAccepted:
    credential = await in_thread(app.engine, lambda db: db.get(Credential, credential_id))
    if credential is None:
        raise not_found("credential", credential_id)
    if body.kind == "reconcile" and not credential.reconcile_credential_id:
        raise invalid("kind", "reconcile needs the credential's reconcile_credential_id set")
    if body.callback_url is not None:
        refused = webhooks.refusal(body.callback_url, app.settings.webhook_allow_http)
        if refused is None and app.settings.webhook_key is None:
            refused = "callbacks need KEYTURN_WEBHOOK_SECRET (whsec_<base64>) set to sign them"
        if refused is not None:
            raise invalid("callback_url", refused)
    try:
        requested = await request_operation(
            app.engine,
            app.client,
            app.settings.task_queue,
            OperationRequest(
                credential_id,
                body.kind,
                body.trigger,
                requested_by=ADMIN,
                callback_url=body.callback_url,
            ),
        )
    except CredentialNotFound:
        raise not_found("credential", credential_id) from None
    except TemporalUnavailable as exc:
        raise Problem(503, str(exc)) from None
    if requested.joined:
        response.status_code = 200
    return OperationAccepted(
        operation_id=requested.operation_id,
        workflow_id=requested.workflow_id,
        status=requested.status,
        joined=requested.joined,
    )


@router.get("/operations/{operation_id}", response_model=OperationOut)
def get_operation(operation_id: str, db: DB) -> OperationOut:
    operation = db.get(Operation, operation_id)
    if operation is None:
        raise not_found("operation", operation_id)
    attempts = db.exec(
        select(Attempt)
        .where(Attempt.operation_id == operation_id)
        .order_by(col(Attempt.started_at))
    )
    children = db.exec(
        select(Operation)
        .where(Operation.parent_operation_id == operation_id)
        .order_by(col(Operation.created_at))
    )
    credential = db.get(Credential, operation.credential_id)
    fields = operation.model_dump()
    if operation.status != OperationStatus.QUEUED:
        fields["waiting_for"] = None  # who it waited for matters only while it waits
    return OperationOut(
        **fields,
        credential_out_of_sync=credential is not None
        and credential.sync_state == SyncState.OUT_OF_SYNC,
        attempts=[AttemptOut(**a.model_dump()) for a in attempts],
        children=[
            ChildOut(operation_id=c.id, credential_id=c.credential_id, kind=c.kind, status=c.status)
            for c in children
        ],
    )


@router.post("/operations/{operation_id}/cancel", status_code=202, response_model=OperationOut)
async def cancel_operation(operation_id: str, app: State) -> OperationOut:
    """Ask the operation to stop. Vault and target agree when it has (see the README's
    "Cancel"); a cancel that arrives once the commit has begun is too late."""
    operation = await in_thread(app.engine, lambda db: db.get(Operation, operation_id))
    if operation is None:
        raise not_found("operation", operation_id)
    if OperationStatus(operation.status).terminal:
        raise Problem(409, f"operation {operation_id} has ended ({operation.status})")
    await app.client.get_workflow_handle(operation.workflow_id, run_id=operation.run_id).cancel()
    return await in_thread(app.engine, lambda db: get_operation(operation_id, db))


@router.get("/credentials/{credential_id}/operations", response_model=list[OperationOut])
def list_operations(credential_id: str, db: DB) -> list[OperationOut]:
    if db.get(Credential, credential_id) is None:
        raise not_found("credential", credential_id)
    operations = db.exec(
        select(Operation)
        .where(Operation.credential_id == credential_id)
        .order_by(col(Operation.created_at))
    )
    return [get_operation(op.id, db) for op in operations]
