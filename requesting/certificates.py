"""One way to ask for an action on a certificate, for the API and the renewal schedule alike.

The certificate's workflow id is fixed (``keyturn-cert-<id>``): while an action runs, another
is refused (``CertificateBusy``, a 409 at the API) rather than queued, and nothing is stored for
it. The operation's row is written once Temporal has taken the workflow (the workflow writes
it too, whichever comes first), with the ``operation.requested`` audit event.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from requesting.errors import RequestFailed, TemporalUnavailable
from store import audit
from store.certificates import note_operation
from store.engine import in_thread, session_scope
from store.models import OperationStatus, new_id
from workflows.contracts import (
    CERT_PUBLISH,
    CERT_REQUEST,
    CERT_REVOKE,
    CERTIFICATE_WORKFLOW,
    SA_KIND,
    SA_OPERATION,
    SA_STATUS,
    SA_TRIGGER,
    CertificateInput,
    certificate_workflow_id,
)

FIRST_KIND = {
    CERT_REQUEST: "cert-request",
    CERT_PUBLISH: "cert-publish",
    CERT_REVOKE: "cert-revoke",
}


class CertificateBusy(RequestFailed):
    """Another action on the certificate is running (or waiting for approval)."""


@dataclass(frozen=True)
class CertificateRequested:
    operation_id: str
    workflow_id: str
    kind: str


async def request_certificate_action(
    engine: Engine,
    client: Client,
    task_queue: str,
    certificate_id: str,
    action: str,
    *,
    trigger: str = "manual",
    requested_by: str | None = None,
    reason: str = "",
) -> CertificateRequested:
    kind = FIRST_KIND[action]
    operation_id = new_id()
    workflow_id = certificate_workflow_id(certificate_id)
    request = CertificateInput(certificate_id, action, operation_id, trigger, requested_by, reason)
    try:
        await client.start_workflow(
            CERTIFICATE_WORKFLOW,
            request,
            id=workflow_id,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(SA_OPERATION, operation_id),
                    SearchAttributePair(SA_KIND, kind),
                    SearchAttributePair(SA_TRIGGER, trigger),
                    SearchAttributePair(SA_STATUS, "scheduled"),
                ]
            ),
            memo={"operation_id": operation_id, "certificate_id": certificate_id},
        )
    except WorkflowAlreadyStartedError:
        raise CertificateBusy(
            f"certificate {certificate_id} is busy with another action ({workflow_id}): one "
            "action at a time; send this one again when it has ended"
        ) from None
    except RPCError as exc:
        raise TemporalUnavailable(
            f"Temporal at {client.service_client.config.target_host} did not accept the "
            f"certificate action: {exc}"
        ) from None

    def note() -> None:
        with session_scope(engine) as session:
            note_operation(
                session, operation_id, certificate_id, kind, workflow_id=workflow_id,
                trigger=trigger, requested_by=requested_by, status=OperationStatus.SCHEDULED,
            )  # fmt: skip
            audit.record(
                session, "operation.requested", operation_id=operation_id,
                principal=requested_by, kind=kind, trigger=trigger, certificate_id=certificate_id,
            )  # fmt: skip

    await in_thread(engine, lambda _: note())
    return CertificateRequested(operation_id, workflow_id, kind)
