"""Operations: request one (202 at once, the work runs as a workflow) and follow it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import SecretStr
from sqlalchemy import or_
from sqlmodel import Session, col, select

from governance import webhooks
from requesting import (
    CredentialNotFound,
    InvalidRequest,
    OperationRequest,
    SecretChoice,
    TemporalUnavailable,
    request_operation,
)
from starter.authz import APP, OPERATOR, Caller, Reader, allow, credential_for, granted, hidden
from starter.deps import DB, State, StoreRoute
from starter.pages import Cursor, Limit, Page, by_age, keyset_page
from starter.problems import Problem, invalid, not_found, problem_response
from starter.schemas import (
    AttemptOut,
    ChildOut,
    OperationAccepted,
    OperationIn,
    OperationOut,
)
from store.engine import in_thread
from store.models import (
    Attempt,
    Certificate,
    Credential,
    Operation,
    OperationStatus,
    SyncState,
)
from workflows.contracts import CERTIFICATE_KINDS, OPERATION_KINDS, TASK_KIND, TRIGGERS

router = APIRouter(route_class=StoreRoute)
Operator = Annotated[Caller, Depends(allow(OPERATOR))]


@router.post(
    "/credentials/{credential_id}/operations",
    status_code=202,
    response_model=OperationAccepted,
    responses={
        200: {"description": "an operation of this kind was running: joined it"},
        404: problem_response("no such credential"),
        422: problem_response(
            "invalid body: a trigger only Keyturn sets, a field its kind does not take, a "
            "missing version_id (adopt) or password (set-in-vault; private_key for an ssh-key "
            "credential, which must parse), a next_password that breaks the policy (or given "
            "for an ssh-key credential), a callback_url that is not https (or "
            "KEYTURN_WEBHOOK_SECRET unset), a kind the device's executor has no template for "
            "(or, for activate, deactivate, jit-create, jit-remove, no auth_credential_id), a "
            "jit-create without a ttl_seconds in bounds"
        ),
        503: problem_response("Temporal did not accept the operation"),
    },
)
async def create_operation(
    credential_id: str,
    body: OperationIn,
    app: State,
    response: Response,
    caller: Annotated[Caller, Depends(allow(OPERATOR, APP))],
) -> OperationAccepted:
    """Request an operation. ``adopt``, ``set-in-vault`` and a change with ``next_password``
    are never joined to another operation: each acts with the secret it names. An ``app``
    requests ``change`` with trigger ``a2a`` for its granted credentials only."""
    granted(caller, credential_id)
    if caller.role == APP and (body.kind != "change" or body.trigger != "a2a"):
        raise Problem(403, f"{caller.name} is an app: it requests change with trigger a2a only")
    if caller.role == OPERATOR and body.trigger == "a2a":
        raise invalid("trigger", "a2a is an application's trigger: an app principal claims it")
    if body.callback_url is not None:
        refused = webhooks.refusal(body.callback_url, app.settings.webhook_allow_http)
        if refused is None and app.settings.webhook_key is None:
            refused = "callbacks need KEYTURN_WEBHOOK_SECRET (whsec_<base64>) set to sign them"
        if refused is not None:
            raise invalid("callback_url", refused)

    def authorized(db: Session) -> Credential:
        credential = credential_for(db, caller, credential_id)
        if body.kind == "reconcile" and not credential.reconcile_credential_id:
            raise invalid("kind", "reconcile needs the credential's reconcile_credential_id set")
        return credential

    choice = SecretChoice(
        version_id=body.version_id,
        password=_value(body.password),
        next_password=_value(body.next_password),
        private_key=_value(body.private_key),
    )
    try:
        requested = await request_operation(
            app.engine,
            app.client,
            app.settings.task_queue,
            OperationRequest(
                credential_id,
                body.kind,
                body.trigger,
                choice,
                requested_by=caller.name,
                callback_url=body.callback_url,
                ttl_seconds=body.ttl_seconds,
            ),
            app.vault,
            authorized,
        )
    except CredentialNotFound:
        raise not_found("credential", credential_id) from None
    except InvalidRequest as exc:
        raise invalid(exc.field, exc.message) from None
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


def _value(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


@router.get("/operations/{operation_id}", response_model=OperationOut)
def get_operation(operation_id: str, db: DB, caller: Reader) -> OperationOut:
    operation, credential = _visible(db, caller, operation_id)
    return _operation_out(db, operation, credential)


def _visible(db: Session, caller: Caller, operation_id: str) -> tuple[Operation, Credential | None]:
    operation = db.get(Operation, operation_id)
    if operation is None:
        raise not_found("operation", operation_id)
    if operation.credential_id is None:  # a certificate's action: its certificate's profile
        certificate = db.get(Certificate, operation.certificate_id or "")
        hidden(caller, certificate.profile if certificate else "", "operation", operation_id)
        return operation, None
    credential = db.get(Credential, operation.credential_id)
    hidden(caller, credential.profile if credential else "", "operation", operation_id)
    return operation, credential


def _operation_out(db: DB, operation: Operation, credential: Credential | None) -> OperationOut:
    operation_id = operation.id
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
    fields = operation.model_dump()
    if operation.status != OperationStatus.QUEUED:
        fields["waiting_for"] = None  # who it waited for matters only while it waits
    return OperationOut(
        **fields,
        credential_out_of_sync=credential is not None
        and credential.sync_state == SyncState.OUT_OF_SYNC,
        attempts=[AttemptOut(**a.model_dump()) for a in attempts],
        children=[
            ChildOut(operation_id=c.id, credential_id=c.on_credential, kind=c.kind, status=c.status)
            for c in children
        ],
    )


@router.post("/operations/{operation_id}/cancel", status_code=202, response_model=OperationOut)
async def cancel_operation(operation_id: str, app: State, caller: Operator) -> OperationOut:
    """Ask the operation to stop. Vault and target agree when it has (see the README's
    "Cancel"); a cancel that arrives once the commit has begun is too late."""
    operation, _ = await in_thread(app.engine, lambda db: _visible(db, caller, operation_id))
    if OperationStatus(operation.status).terminal:
        raise Problem(409, f"operation {operation_id} has ended ({operation.status})")
    await app.client.get_workflow_handle(operation.workflow_id, run_id=operation.run_id).cancel()
    return await in_thread(app.engine, lambda db: get_operation(operation_id, db, caller))


@router.get(
    "/credentials/{credential_id}/operations",
    response_model=Page[OperationOut],
    responses={404: problem_response("no such credential")},
)
def list_operations(
    credential_id: str, db: DB, caller: Reader, limit: Limit = 100, cursor: Cursor = None
) -> Page[OperationOut]:
    """The credential's operations, oldest first."""
    credential = credential_for(db, caller, credential_id)
    query = select(Operation).where(Operation.credential_id == credential_id)
    return keyset_page(
        db, query, by_age(Operation), limit, cursor,
        lambda op: _operation_out(db, op, credential),
    )  # fmt: skip


@router.get(
    "/operations",
    response_model=Page[OperationOut],
    responses={422: {"description": "an unknown kind, trigger or status, or a bad cursor"}},
)
def search_operations(
    db: DB,
    caller: Reader,
    credential_id: str | None = None,
    certificate_id: str | None = None,
    device_id: str | None = None,
    kind: str | None = None,
    trigger: str | None = None,
    status: str | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[OperationOut]:
    """Operations, newest first, filtered by any of credential, certificate, device, kind,
    trigger, status. A certificate's actions (cert-*) are operations too."""
    for field, value, allowed in (
        ("kind", kind, (*OPERATION_KINDS, TASK_KIND, *CERTIFICATE_KINDS)),
        ("trigger", trigger, TRIGGERS),
        ("status", status, tuple(OperationStatus)),
    ):
        if value is not None and value not in allowed:
            raise invalid(field, f"one of {', '.join(allowed)}")
    query = select(Operation)
    if caller.profiles is not None:
        in_profiles = select(Credential.id).where(caller.sees_rows(Credential.profile))
        certificates = select(Certificate.id).where(caller.sees_rows(Certificate.profile))
        query = query.where(
            or_(
                col(Operation.credential_id).in_(in_profiles),
                col(Operation.certificate_id).in_(certificates),
            )
        )
    if credential_id is not None:
        query = query.where(Operation.credential_id == credential_id)
    if certificate_id is not None:
        query = query.where(Operation.certificate_id == certificate_id)
    if device_id is not None:
        on_device = select(Credential.id).where(Credential.device_id == device_id)
        query = query.where(col(Operation.credential_id).in_(on_device))
    if kind is not None:
        query = query.where(Operation.kind == kind)
    if trigger is not None:
        query = query.where(Operation.trigger == trigger)
    if status is not None:
        query = query.where(Operation.status == OperationStatus(status))
    return keyset_page(
        db, query, by_age(Operation), limit, cursor,
        lambda op: _operation_out(db, op, db.get(Credential, op.credential_id or "")),
        descending=True,
    )  # fmt: skip
