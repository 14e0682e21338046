"""A certificate's actions, each an operation of its own kind (workflows/contracts.py).

``request``: cert-request makes the key pair and the CSR (the key sealed in the vault by the
activity; only ids cross this workflow), and, when the certificate needs approval, waits for an
``approve`` update from a principal other than the requester; then cert-sign has the CA sign it,
and cert-publish installs it on every publish_to device. A renewal is a request again.
``publish`` and ``revoke`` are one operation each. The workflow id is fixed per certificate, so
one action at a time acts on a certificate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from workflows import steps
    from workflows.contracts import (
        CERT_APPROVE_UPDATE,
        CERT_PUBLISH,
        CERT_REQUEST,
        CERT_REVOKE,
        CERTIFICATE_RENEWAL_WORKFLOW,
        CERTIFICATE_WORKFLOW,
        SA_KIND,
        SA_OPERATION,
        SA_STATUS,
        CertApproval,
        CertFinish,
        CertificateInput,
        CertificateOutcome,
        CertStep,
        PublishStep,
        PublishTarget,
        RenewalSweep,
        SlotRequest,
        WorkflowRef,
    )
    from workflows.slot_holder import SlotHolder

_P = TypeVar("_P")
_R = TypeVar("_R")

STORE_TIMEOUT = timedelta(seconds=30)
# A CA call or a publish (an SSH session, a reload, a TLS check that waits for the reload).
REMOTE_TIMEOUT = timedelta(minutes=2)
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=3,
    non_retryable_error_types=["ConfigurationError", "AuthenticationFailed", "HostKeyMismatch",
                               "CertificateNotServed", "CaError", "CredentialBusy",
                               "LockoutBudgetSpent"],
)  # fmt: skip
STORE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5)
# A publish whose credential is busy with another operation asks again this often, this long.
CREDENTIAL_BUSY = "CredentialBusy"
CREDENTIAL_RETRY = timedelta(seconds=1)
CREDENTIAL_WAIT = timedelta(minutes=30)


class _Failed(Exception):
    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


@workflow.defn(name=CERTIFICATE_WORKFLOW)
class CertificateWorkflow:
    def __init__(self) -> None:
        self._requested_by: str | None = None
        self._awaiting_approval = False
        self._approved_by: str | None = None
        self._slots = SlotHolder(_store)

    @workflow.signal(name="slot_granted")
    def slot_granted(self, token: str) -> None:
        """A device's slot given back to this publish (workflows/slot_holder.py)."""
        self._slots.granted(token)

    @workflow.query
    def awaiting_approval(self) -> bool:
        return self._awaiting_approval

    @workflow.update(name=CERT_APPROVE_UPDATE)
    async def approve(self, approval: CertApproval) -> str:
        self._approved_by = approval.principal
        self._awaiting_approval = False
        return approval.principal

    @approve.validator
    def _check_approval(self, approval: CertApproval) -> None:
        # A rejected update leaves no trace in history: the requester's refusal costs nothing.
        if not self._awaiting_approval:
            raise ValueError("this certificate is not waiting for approval")
        if approval.principal == self._requested_by:
            raise ValueError("the requester cannot approve their own certificate request")

    @workflow.run
    async def run(self, request: CertificateInput) -> CertificateOutcome:
        self._requested_by = request.requested_by
        done: list[str] = []
        first = self._step(request, request.operation_id, _KIND[request.action])
        try:
            if request.action == CERT_REQUEST:
                await self._operation(first, self._request)
                done.append(first.operation_id)
                signing = self._step(request, workflow.uuid4().hex, "cert-sign")
                await self._operation(signing, self._sign)
                done.append(signing.operation_id)
                publishing = self._step(request, workflow.uuid4().hex, "cert-publish")
                if await self._publish_targets(publishing):
                    await self._operation(publishing, self._publish)
                    done.append(publishing.operation_id)
            elif request.action == CERT_PUBLISH:
                await self._operation(first, self._publish)
                done.append(first.operation_id)
            else:
                await self._operation(first, self._revoke)
                done.append(first.operation_id)
        except _Failed:
            workflow.upsert_search_attributes([SA_STATUS.value_set("failed")])
            return CertificateOutcome("failed", done)
        workflow.upsert_search_attributes([SA_STATUS.value_set("succeeded")])
        return CertificateOutcome("succeeded", done)

    def _step(self, request: CertificateInput, operation_id: str, kind: str) -> CertStep:
        return CertStep(
            operation_id=operation_id,
            certificate_id=request.certificate_id,
            kind=kind,
            trigger=request.trigger,
            requested_by=request.requested_by,
            workflow_id=workflow.info().workflow_id,
            reason=request.reason,
        )

    async def _operation(self, step: CertStep, body: _Body) -> None:
        """Open the operation's row, run it, and record how it ended."""
        await workflow.execute_local_activity(
            steps.cert_open, step, start_to_close_timeout=STORE_TIMEOUT, retry_policy=STORE_RETRY
        )
        # Findable in the Web UI by the operation running now, like every operation.
        workflow.upsert_search_attributes(
            [
                SA_OPERATION.value_set(step.operation_id),
                SA_KIND.value_set(step.kind),
                SA_STATUS.value_set("running"),
            ]
        )
        try:
            await body(step)
        except _Failed as failed:
            await self._finish(step, "failed", failed.error_type, str(failed))
            raise
        except asyncio.CancelledError:
            # POST /v1/operations/{id}/cancel: recorded, then the workflow ends canceled. A
            # request canceled before it was signed leaves the certificate failed (never signed).
            await self._finish(step, "canceled", "Canceled", "canceled by request")
            workflow.upsert_search_attributes([SA_STATUS.value_set("canceled")])
            raise
        await self._finish(step, "succeeded")

    async def _finish(
        self, step: CertStep, status: str, error_type: str | None = None, error: str | None = None
    ) -> None:
        await workflow.execute_local_activity(
            steps.cert_finish,
            CertFinish(
                step.operation_id, step.certificate_id, step.kind, status, error_type, error
            ),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )

    async def _request(self, step: CertStep) -> None:
        try:
            requested = await workflow.execute_activity(
                steps.cert_request, step, start_to_close_timeout=REMOTE_TIMEOUT, retry_policy=RETRY
            )
        except ActivityError as exc:
            raise _failure(exc) from None
        if requested.requires_approval:
            self._awaiting_approval = True
            await workflow.wait_condition(lambda: self._approved_by is not None)
            await workflow.execute_local_activity(
                steps.cert_approved,
                CertApproval(self._approved_by or "", step.operation_id, step.certificate_id),
                start_to_close_timeout=STORE_TIMEOUT,
                retry_policy=STORE_RETRY,
            )

    async def _sign(self, step: CertStep) -> None:
        try:
            await workflow.execute_activity(
                steps.cert_sign, step, start_to_close_timeout=REMOTE_TIMEOUT, retry_policy=RETRY
            )
        except ActivityError as exc:
            raise _failure(exc) from None

    async def _revoke(self, step: CertStep) -> None:
        try:
            await workflow.execute_activity(
                steps.cert_revoke, step, start_to_close_timeout=REMOTE_TIMEOUT, retry_policy=RETRY
            )
        except ActivityError as exc:
            raise _failure(exc) from None

    async def _publish_targets(self, step: CertStep) -> list[PublishTarget]:
        return await workflow.execute_local_activity(
            steps.cert_publish_plan, step, start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )  # fmt: skip

    async def _publish(self, step: CertStep) -> None:
        targets = await self._publish_targets(step)
        if not targets:
            raise _Failed("ConfigurationError", "the certificate has no publish_to device")
        failures = []
        for target in targets:  # one device after the other: a broken one stops none of the rest
            try:
                await self._publish_on(step, target)
            except _Failed as failed:
                failures.append((target.device_id, failed))
        if failures:
            shown = "; ".join(f"device {device}: {failed}" for device, failed in failures)
            raise _Failed(failures[0][1].error_type, shown)

    async def _publish_on(self, step: CertStep, target: PublishTarget) -> None:
        """One device: within one of its slots (its cap on operations at once holds for
        publishing too); while another operation acts on the credential it logs in with, the
        publish waits for it (a change in flight would make the secret it reads stale)."""
        token = f"{step.operation_id}/{target.index}"
        info = workflow.info()
        order_key = f"{workflow.now().replace(tzinfo=None).isoformat()}/{step.operation_id}"
        request = SlotRequest(target.device_id, token, WorkflowRef(info.workflow_id, info.run_id),
                              target.device_capacity, order_key)  # fmt: skip
        # Asked before the try, waited for inside it, as releases before slot claims did.
        claim = await self._slots.claim(request)
        try:
            await self._slots.wait(request, claim)
            waited = timedelta()
            while True:
                try:
                    await workflow.execute_activity(
                        steps.cert_publish,
                        PublishStep(step.operation_id, step.certificate_id, target.index),
                        task_queue=target.task_queue,
                        start_to_close_timeout=REMOTE_TIMEOUT,
                        retry_policy=RETRY,
                    )
                    return
                except ActivityError as exc:
                    failed = _failure(exc)
                    if failed.error_type != CREDENTIAL_BUSY or waited >= CREDENTIAL_WAIT:
                        raise failed from None
                # A durable timer: the credential's operation ends in its own time.
                await workflow.sleep(CREDENTIAL_RETRY)
                waited += CREDENTIAL_RETRY
        finally:
            await self._slots.give_back(target.device_id, token)


async def _store(activity: Callable[[_P], Awaitable[_R]], arg: _P) -> _R:
    """A store step of a device slot (local activity)."""
    return await workflow.execute_local_activity(
        activity, arg, start_to_close_timeout=STORE_TIMEOUT, retry_policy=STORE_RETRY
    )


_Body = Callable[[CertStep], Awaitable[None]]
_KIND = {CERT_REQUEST: "cert-request", CERT_PUBLISH: "cert-publish", CERT_REVOKE: "cert-revoke"}


def _failure(exc: ActivityError) -> _Failed:
    """The activity's own error (type and message), never a secret: activities raise only
    redacted messages. An activity canceled because the workflow was is the cancel itself."""
    if is_cancelled_exception(exc):
        raise asyncio.CancelledError() from exc
    cause = exc.cause
    if isinstance(cause, ApplicationError):
        return _Failed(cause.type or "ApplicationError", cause.message)
    return _Failed(type(cause).__name__ if cause else "ActivityError", str(cause or exc))


@workflow.defn(name=CERTIFICATE_RENEWAL_WORKFLOW)
class CertificateRenewalWorkflow:
    """One run of the renewal schedule (triggers/certificate_renewal.py): an activity finds the
    certificates due and requests each one's renewal through the one request path."""

    @workflow.run
    async def run(self, sweep: RenewalSweep) -> int:
        as_of = sweep.as_of or workflow.now().isoformat()
        return await workflow.execute_activity(
            steps.cert_renew_due,
            RenewalSweep(as_of),
            start_to_close_timeout=REMOTE_TIMEOUT,
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
