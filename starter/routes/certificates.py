"""Certificates: request one (Keyturn makes its key and CSR, a CA signs it, it is published),
follow it, approve, revoke, publish again, renew; and each CA's CRL.

Every action is an operation of its own kind (cert-request, cert-sign, cert-publish,
cert-revoke) run by the certificate's workflow: one action at a time per certificate, a second
one is answered 409 while one runs (or waits for approval), with nothing stored for it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from sqlmodel import Session, select
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from executors.base import get_executor, installs_files
from executors.ca.base import get_ca_plugin
from requesting import TemporalUnavailable
from requesting.certificates import (
    CertificateBusy,
    CertificateRequested,
    request_certificate_action,
)
from starter.authz import APPROVER, OPERATOR, Caller, Reader, allow, hidden
from starter.certificate_schemas import (
    ActionIn,
    ApproveIn,
    CaOut,
    CertificateActionAccepted,
    CertificateCreated,
    CertificateIn,
    CertificateOut,
    RevokeIn,
)
from starter.deps import DB, AppState, State, StoreRoute
from starter.pages import Cursor, Limit, Page, by_age, keyset_page, shown_as
from starter.problems import Problem, invalid, not_found, problem_response
from store.certificates import record_created
from store.engine import in_thread
from store.models import (
    Certificate,
    CertificateAuthority,
    CertStatus,
    Credential,
    Device,
    Principal,
    Role,
)
from triggers.certificate_renewal import ensure_renewal_schedule
from workflows.contracts import (
    CERT_APPROVE_UPDATE,
    CERT_PUBLISH,
    CERT_REQUEST,
    CERT_REVOKE,
    CertApproval,
    certificate_workflow_id,
)

router = APIRouter(route_class=StoreRoute, tags=["certificates"])
Operator = Annotated[Caller, Depends(allow(OPERATOR))]
Approver = Annotated[Caller, Depends(allow(APPROVER))]
PKIX_CRL = "application/pkix-crl"  # RFC 2585: a DER-encoded CRL
_BUSY = problem_response(
    "another action on this certificate is running or waiting for approval: one at a time"
)
_TEMPORAL = problem_response("Temporal did not accept the action")


@router.post(
    "/certificates",
    status_code=201,
    response_model=CertificateCreated,
    responses={
        403: problem_response("a profile outside the caller's"),
        409: problem_response("a certificate with this name exists"),
        422: problem_response(
            "invalid body: an unknown CA, a key type the CA does not sign, bad subject or SANs, "
            "validity_days out of 1..3650, a publish_to device or credential that does not "
            "exist (or is not on that device), an executor that cannot install files"
        ),
        503: _TEMPORAL,
    },
)
async def create_certificate(
    body: CertificateIn, app: State, caller: Operator
) -> CertificateCreated:
    """Request a certificate: Keyturn makes its key pair and CSR (the key sealed in the vault),
    waits for an approver other than the requester when approvers exist, has the CA sign it
    and publishes it to each ``publish_to`` device."""
    if not caller.sees(body.profile):
        raise Problem(403, f"{caller.name} may not place objects in profile {body.profile!r}")
    certificate = await in_thread(app.engine, lambda db: _create(db, body, caller))
    if certificate.renew_before_days is not None:
        try:
            await ensure_renewal_schedule(app.client, app.settings)
        except TemporalUnavailable as exc:
            raise Problem(503, str(exc)) from None
    requested = await _request(app, certificate.id, CERT_REQUEST, caller)
    shown = CertificateOut.model_validate(certificate, from_attributes=True)
    return CertificateCreated(
        **shown.model_dump(), operation_id=requested.operation_id,
        workflow_id=requested.workflow_id,
    )  # fmt: skip


def _create(db: Session, body: CertificateIn, caller: Caller) -> Certificate:
    ca = db.get(CertificateAuthority, body.ca)
    if ca is None:
        known = ", ".join(db.exec(select(CertificateAuthority.name)).all()) or "none"
        raise invalid("ca", f"no CA named {body.ca!r} (CAs: {known}; keyturn ca init makes one)")
    try:
        plugin = get_ca_plugin(ca.plugin)
    except LookupError as exc:
        raise invalid("ca", str(exc)) from None
    if body.key_type not in plugin.key_types:
        raise invalid("key_type", f"CA {ca.name!r} signs {', '.join(plugin.key_types)}")
    for index, entry in enumerate(body.publish_to):
        where = f"publish_to.{index}"
        device = db.get(Device, entry.device_id)
        if device is None or not caller.sees(device.profile):
            raise invalid(f"{where}.device_id", f"no device with id {entry.device_id!r}")
        credential = db.get(Credential, entry.credential_id)
        if credential is None or credential.device_id != device.id:
            raise invalid(f"{where}.credential_id", "no credential of that device has this id")
        try:
            executor = get_executor(device.executor)
        except LookupError as exc:
            raise invalid(f"{where}.device_id", str(exc)) from None
        if not installs_files(executor):
            raise invalid(f"{where}.device_id", f"the {device.executor} executor cannot "
                                                "install files: publish over ssh")  # fmt: skip
    if db.exec(select(Certificate).where(Certificate.name == body.name)).first():
        raise Problem(409, f"a certificate named {body.name!r} exists; choose another name")
    approvers = db.exec(select(Principal).where(Principal.role == Role.APPROVER)).first()
    certificate = Certificate(
        **body.model_dump(exclude={"publish_to"}),
        publish_to=[entry.model_dump() for entry in body.publish_to],
        requested_by=caller.name,
        requires_approval=approvers is not None,
    )
    db.add(certificate)
    record_created(db, certificate, caller.name)
    db.commit()
    db.refresh(certificate)
    return certificate


@router.get("/certificates", response_model=Page[CertificateOut])
def list_certificates(
    db: DB, caller: Reader, limit: Limit = 100, cursor: Cursor = None
) -> Page[CertificateOut]:
    """Certificates of the caller's profiles, oldest first."""
    query = select(Certificate).where(caller.sees_rows(Certificate.profile))
    return keyset_page(db, query, by_age(Certificate), limit, cursor, shown_as(CertificateOut))


@router.get("/certificates/{certificate_id}", response_model=CertificateOut)
def get_certificate(certificate_id: str, db: DB, caller: Reader) -> Certificate:
    return _visible(db, caller, certificate_id)


def _visible(db: Session, caller: Caller, certificate_id: str) -> Certificate:
    certificate = db.get(Certificate, certificate_id)
    if certificate is None:
        raise not_found("certificate", certificate_id)
    hidden(caller, certificate.profile, "certificate", certificate_id)
    return certificate


@router.post(
    "/certificates/{certificate_id}/approve",
    response_model=CertificateOut,
    responses={
        403: problem_response("the requester may not approve their own request"),
        409: problem_response("the certificate is not waiting for approval"),
        503: _TEMPORAL,
    },
)
async def approve_certificate(
    certificate_id: str, body: ApproveIn, app: State, caller: Approver
) -> CertificateOut:
    """Approve a request that waits for approval (a Temporal update of its workflow); the
    requester cannot approve their own."""
    certificate = await in_thread(app.engine, lambda db: _visible(db, caller, certificate_id))
    if caller.name == certificate.requested_by:
        raise Problem(403, "the requester cannot approve their own certificate request")
    if certificate.status != CertStatus.AWAITING_APPROVAL:
        raise Problem(409, f"certificate {certificate_id} is {certificate.status}, not "
                           "awaiting approval")  # fmt: skip
    handle = app.client.get_workflow_handle(certificate_workflow_id(certificate_id))
    try:
        await handle.execute_update(CERT_APPROVE_UPDATE, CertApproval(caller.name))
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        raise Problem(409, str(getattr(cause, "message", None) or cause or exc)) from None
    except RPCError as exc:
        raise Problem(503, f"Temporal did not take the approval: {exc}") from None
    return await in_thread(
        app.engine,
        lambda db: CertificateOut.model_validate(
            _visible(db, caller, certificate_id), from_attributes=True
        ),
    )


@router.post(
    "/certificates/{certificate_id}/revoke",
    status_code=202,
    response_model=CertificateActionAccepted,
    responses={409: _BUSY, 422: problem_response("no reason given"), 503: _TEMPORAL},
)
async def revoke_certificate(
    certificate_id: str, body: RevokeIn, app: State, caller: Operator
) -> CertificateActionAccepted:
    """Revoke an issued certificate: marked revoked with the reason, and its CA's CRL
    (GET /v1/cas/{ca_name}/crl) lists its serial."""
    certificate = await in_thread(app.engine, lambda db: _visible(db, caller, certificate_id))
    if certificate.status != CertStatus.ISSUED:
        raise Problem(409, f"certificate {certificate_id} is {certificate.status}: only an "
                           "issued certificate is revoked")  # fmt: skip
    return await _accepted(app, certificate_id, CERT_REVOKE, caller, reason=body.reason)


@router.post(
    "/certificates/{certificate_id}/publish",
    status_code=202,
    response_model=CertificateActionAccepted,
    responses={
        409: problem_response("not issued (or revoked), or another action is running"),
        422: problem_response("the certificate has no publish_to device"),
        503: _TEMPORAL,
    },
)
async def publish_certificate(
    certificate_id: str, body: ActionIn, app: State, caller: Operator
) -> CertificateActionAccepted:
    """Install the certificate and its key on every publish_to device again, reload, verify."""
    certificate = await in_thread(app.engine, lambda db: _visible(db, caller, certificate_id))
    if not certificate.publish_to:
        raise invalid("publish_to", "the certificate has no publish_to device")
    if certificate.status != CertStatus.ISSUED:
        raise Problem(409, f"certificate {certificate_id} is {certificate.status}: only an "
                           "issued certificate is published")  # fmt: skip
    return await _accepted(app, certificate_id, CERT_PUBLISH, caller)


@router.post(
    "/certificates/{certificate_id}/renew",
    status_code=202,
    response_model=CertificateActionAccepted,
    responses={
        409: problem_response("revoked, or another action is running"),
        503: _TEMPORAL,
    },
)
async def renew_certificate(
    certificate_id: str, body: ActionIn, app: State, caller: Operator
) -> CertificateActionAccepted:
    """A new key pair and CSR, signed and published like the first request. What was approved
    (subject, names, CA) is not approved again; a request that failed before it was approved
    waits for approval again. A failed request is requested again the same way."""
    certificate = await in_thread(app.engine, lambda db: _visible(db, caller, certificate_id))
    if certificate.status == CertStatus.REVOKED:
        raise Problem(409, f"certificate {certificate_id} is revoked: request a new one")
    return await _accepted(app, certificate_id, CERT_REQUEST, caller)


async def _accepted(
    app: AppState, certificate_id: str, action: str, caller: Caller, reason: str = ""
) -> CertificateActionAccepted:
    requested = await _request(app, certificate_id, action, caller, reason)
    return CertificateActionAccepted(
        certificate_id=certificate_id, operation_id=requested.operation_id,
        kind=requested.kind, workflow_id=requested.workflow_id,
    )  # fmt: skip


async def _request(
    app: AppState, certificate_id: str, action: str, caller: Caller, reason: str = ""
) -> CertificateRequested:
    try:
        return await request_certificate_action(
            app.engine, app.client, app.settings.task_queue, certificate_id, action,
            requested_by=caller.name, reason=reason,
        )  # fmt: skip
    except CertificateBusy as exc:
        raise Problem(409, str(exc)) from None
    except TemporalUnavailable as exc:
        raise Problem(503, str(exc)) from None


@router.get("/cas/{ca_name}", response_model=CaOut)
def get_ca(ca_name: str, db: DB, caller: Reader) -> CertificateAuthority:
    """A CA: its plugin and certificate (what clients trust), never its key."""
    ca = db.get(CertificateAuthority, ca_name)
    if ca is None:
        raise Problem(404, f"no CA named {ca_name!r}; keyturn ca init makes one")
    return ca


@router.get(
    "/cas/{ca_name}/crl",
    response_class=Response,
    responses={
        200: {"description": "the CA's current CRL, DER-encoded", "content": {PKIX_CRL: {}}},
        404: problem_response("no such CA, or one that publishes its CRL itself"),
    },
)
def get_crl(ca_name: str, db: DB, caller: Reader) -> Response:
    """The CA's current CRL (DER, ``application/pkix-crl``; ``openssl crl -inform DER``),
    published again at every revocation."""
    ca = db.get(CertificateAuthority, ca_name)
    if ca is None or ca.crl_der is None:
        raise Problem(404, f"no CRL of a CA named {ca_name!r}")
    return Response(ca.crl_der, media_type=PKIX_CRL)
