"""Activities of a certificate's workflow (workflows/certificate.py): open and finish its
operations, make the key pair and CSR, have the CA sign or revoke, publish on each device, and
find the certificates due for renewal.

Private keys (the certificate's, the CA's) are read from the vault inside these activities and
never leave them: inputs and outputs carry ids, and every error message is redacted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from executors.base import (
    Account,
    AuthenticationFailed,
    ConfigurationError,
    ExecutorError,
    InstalledFile,
    InstallRequest,
    LoginProgress,
    get_executor,
    installs_files,
    redact,
)
from executors.ca.base import CaError, CaKeys, CrlRequest, SignRequest, get_ca_plugin
from executors.ca.base import CertificateAuthority as CertificateAuthorityPlugin
from executors.ca.keys import certificate_der, generate_key, make_csr, private_pem
from executors.tls_check import wait_until_served
from keyturn.settings import Settings
from requesting.certificates import CertificateBusy, request_certificate_action
from requesting.errors import TemporalUnavailable
from store import audit
from store.certificates import (
    ca_keys,
    certificate_key,
    due_for_renewal,
    note_operation,
    revocations,
    store_crl,
)
from store.engine import in_thread, session_scope
from store.gate import credential_busy
from store.jobs import target_for
from store.lockout import Budget, BudgetSpent, LockoutLedger
from store.models import (
    Attempt,
    Certificate,
    CertificateAuthority,
    CertStatus,
    Credential,
    Device,
    Operation,
    OperationStatus,
    utcnow,
)
from store.queries import get_or_raise, policy_for
from store.vault import Vault, certificate_owner
from workflows import steps
from workflows.contracts import (
    CERT_REQUEST,
    CertApproval,
    CertFinish,
    CertRequested,
    CertStep,
    PublishOutcome,
    PublishStep,
    PublishTarget,
    RenewalSweep,
)
from workflows.steps import implements

RENEWAL_TRIGGER = "certificate-renewal"
CREDENTIAL_BUSY = "CredentialBusy"  # the workflow asks again once the credential is free
# A CRL rebuilt by two revocations at once: the later one builds again from the store.
CRL_TRIES = 5


class CertificateActivities:
    def __init__(
        self, engine: Engine, vault: Vault, settings: Settings, client: Client | None = None
    ) -> None:
        self._engine = engine
        self._vault = vault
        self._settings = settings
        self._client = client
        self._ledger = LockoutLedger(engine)

    # --- the operations' rows -------------------------------------------------------------

    @implements(steps.cert_open)
    def cert_open(self, step: CertStep) -> None:
        with session_scope(self._engine) as session:
            before = session.get(Operation, step.operation_id)
            if before is not None and before.status != OperationStatus.SCHEDULED:
                return  # a retry: it was opened
            note_operation(
                session, step.operation_id, step.certificate_id, step.kind,
                workflow_id=step.workflow_id, trigger=step.trigger,
                requested_by=step.requested_by, status=OperationStatus.RUNNING,
            )  # fmt: skip
            audit.record(
                session, "operation.started", operation_id=step.operation_id, kind=step.kind,
                certificate_id=step.certificate_id,
            )  # fmt: skip

    @implements(steps.cert_finish)
    def cert_finish(self, finish: CertFinish) -> None:
        with session_scope(self._engine) as session:
            operation = get_or_raise(session, Operation, finish.operation_id)
            if OperationStatus(operation.status).terminal:
                return  # a retry after the commit
            operation.status = OperationStatus(finish.status)
            operation.error_type, operation.error = finish.error_type, finish.error
            operation.finished_at = utcnow()
            session.add(operation)
            certificate = session.get(Certificate, finish.certificate_id)
            if (
                certificate is not None
                and finish.status in (OperationStatus.FAILED, OperationStatus.CANCELED)
                and finish.kind in ("cert-request", "cert-sign")
                and certificate.status != CertStatus.ISSUED  # a failed renewal keeps the old one
            ):
                certificate.status = CertStatus.FAILED
                session.add(certificate)
            audit.record(
                session, f"operation.{finish.status}", operation_id=finish.operation_id,
                outcome="ok" if finish.status == OperationStatus.SUCCEEDED else finish.status,
                kind=finish.kind, certificate_id=finish.certificate_id,
                error_type=finish.error_type,
            )  # fmt: skip

    # --- request, approval, signature, revocation ------------------------------------------

    @implements(steps.cert_request)
    def cert_request(self, step: CertStep) -> CertRequested:
        """A new key pair and CSR; the key sealed at once as the certificate's pending key."""
        with Session(self._engine) as session:
            certificate = get_or_raise(session, Certificate, step.certificate_id)
            key_type, subject, sans = certificate.key_type, certificate.subject, certificate.sans
        key = generate_key(key_type)
        csr = make_csr(key, subject, list(sans))
        sealed = self._vault.seal(certificate_owner(step.certificate_id), private_pem(key))
        del key
        with session_scope(self._engine) as session:
            certificate = get_or_raise(session, Certificate, step.certificate_id)
            # Approval is of what is asked for (subject, names, CA), which a renewal keeps: a
            # certificate approved once is renewed without asking again.
            needs = certificate.requires_approval and certificate.approved_by is None
            certificate.csr_pem = csr
            certificate.pending_key_id = sealed.key_id
            certificate.pending_key_ciphertext = sealed.ciphertext
            if certificate.status != CertStatus.ISSUED:
                certificate.status = CertStatus.AWAITING_APPROVAL if needs else CertStatus.REQUESTED
            session.add(certificate)
            audit.record(
                session, "certificate.csr_created", operation_id=step.operation_id,
                certificate_id=certificate.id, key_type=key_type, needs_approval=needs,
            )  # fmt: skip
        return CertRequested(requires_approval=needs)

    @implements(steps.cert_approved)
    def cert_approved(self, approval: CertApproval) -> None:
        with session_scope(self._engine) as session:
            certificate = get_or_raise(session, Certificate, approval.certificate_id)
            certificate.approved_by = approval.principal
            if certificate.status == CertStatus.AWAITING_APPROVAL:
                certificate.status = CertStatus.REQUESTED
            session.add(certificate)
            audit.record(
                session, "certificate.approved", operation_id=approval.operation_id,
                principal=approval.principal, certificate_id=certificate.id,
            )  # fmt: skip

    @implements(steps.cert_sign)
    async def cert_sign(self, step: CertStep) -> None:
        def load() -> tuple[Certificate, CertificateAuthority]:
            with Session(self._engine) as session:
                certificate = get_or_raise(session, Certificate, step.certificate_id)
                return certificate, get_or_raise(session, CertificateAuthority, certificate.ca)

        certificate, ca = await asyncio.to_thread(load)
        if certificate.pending_key_ciphertext is None and certificate.status == CertStatus.ISSUED:
            return  # a retry of a signature that landed: its key is the one in use now
        if not certificate.csr_pem or certificate.pending_key_ciphertext is None:
            raise ApplicationError("no pending request to sign", type="ConfigurationError",
                                   non_retryable=True)  # fmt: skip
        plugin = _plugin(ca.plugin)
        keys = ca_keys(ca, self._vault)
        try:
            signed = await plugin.sign(
                SignRequest(keys, certificate.csr_pem, certificate.validity_days)
            )
        except CaError as exc:
            raise ApplicationError(redact(str(exc), (keys.private_key_pem,)), type=exc.kind,
                                   non_retryable=True) from None  # fmt: skip
        del keys

        def store() -> None:
            with session_scope(self._engine) as session:
                row = get_or_raise(session, Certificate, step.certificate_id)
                row.certificate_pem = signed.certificate_pem
                row.serial = f"{signed.serial:X}"
                row.not_before, row.not_after = signed.not_before, signed.not_after
                row.key_id, row.key_ciphertext = row.pending_key_id, row.pending_key_ciphertext
                row.pending_key_id, row.pending_key_ciphertext = None, None
                row.status = CertStatus.ISSUED
                session.add(row)
                audit.record(
                    session, "certificate.issued", operation_id=step.operation_id,
                    certificate_id=row.id, ca=row.ca, serial=row.serial,
                    not_after=signed.not_after.isoformat(),
                )  # fmt: skip

        await asyncio.to_thread(store)

    @implements(steps.cert_revoke)
    async def cert_revoke(self, step: CertStep) -> None:
        """Mark it revoked with its reason, tell the CA, and publish the CA's new CRL."""

        def mark() -> CertificateAuthority:
            with session_scope(self._engine) as session:
                row = get_or_raise(session, Certificate, step.certificate_id)
                if row.status not in (CertStatus.ISSUED, CertStatus.REVOKED):
                    raise ApplicationError(
                        f"certificate {row.id} is {row.status}, not issued",
                        type="ConfigurationError",
                        non_retryable=True,
                    )
                if row.status == CertStatus.ISSUED:  # a retry finds it revoked already
                    row.status = CertStatus.REVOKED
                    row.revoked_at = utcnow()
                    row.revocation_reason = step.reason
                    session.add(row)
                    audit.record(
                        session, "certificate.revoked", operation_id=step.operation_id,
                        certificate_id=row.id, serial=row.serial, reason=step.reason,
                    )  # fmt: skip
                return get_or_raise(session, CertificateAuthority, row.ca)

        ca = await asyncio.to_thread(mark)
        plugin = _plugin(ca.plugin)
        keys = ca_keys(ca, self._vault)
        certificate = await asyncio.to_thread(_get, self._engine, Certificate, step.certificate_id)
        try:
            await plugin.revoke(keys, int(certificate.serial or "0", 16), step.reason)
            for _ in range(CRL_TRIES):
                if await self._publish_crl(plugin, keys):
                    return
        except CaError as exc:
            message = redact(str(exc), (keys.private_key_pem,))
            raise ApplicationError(message, type=exc.kind, non_retryable=True) from None
        raise ApplicationError("the CRL kept moving while it was rebuilt", type="CrlConflict")

    async def _publish_crl(self, plugin: CertificateAuthorityPlugin, keys: CaKeys) -> bool:
        """Build the CA's CRL from the store and keep it unless another one landed meanwhile
        (then False: build again). True too for a CA that publishes its own CRL."""
        ca = await asyncio.to_thread(_get, self._engine, CertificateAuthority, keys.name)
        revoked = await asyncio.to_thread(_read, self._engine, partial(revocations, ca=ca.name))
        number = ca.crl_number + 1
        der = await plugin.crl(CrlRequest(keys, revoked, number))
        if der is None:
            return True
        return await asyncio.to_thread(_write_crl, self._engine, ca.name, number, der)

    # --- publishing -------------------------------------------------------------------------

    @implements(steps.cert_publish_plan)
    def cert_publish_plan(self, step: CertStep) -> list[PublishTarget]:
        with Session(self._engine) as session:
            certificate = get_or_raise(session, Certificate, step.certificate_id)
            targets = []
            for index, entry in enumerate(certificate.publish_to):
                device = get_or_raise(session, Device, entry["device_id"])
                credential = get_or_raise(session, Credential, entry["credential_id"])
                queue = self._settings.zone_task_queue(device.zone)
                capacity = (
                    device.max_concurrent_operations
                    or policy_for(session, credential).max_concurrent_operations
                )
                targets.append(PublishTarget(index, device.id, queue, capacity))
            return targets

    @implements(steps.cert_publish)
    async def cert_publish(self, step: PublishStep) -> PublishOutcome:
        """Install certificate (with its chain) and key on one device over its executor, run
        the reload command, then check that its TLS port serves the new certificate."""
        job = await asyncio.to_thread(self._publish_job, step)
        secrets = job.request.secrets
        try:
            charge = await asyncio.to_thread(self._ledger.reserve, job.budget)
        except BudgetSpent as exc:
            raise ApplicationError(
                str(exc), type="LockoutBudgetSpent", non_retryable=True
            ) from None
        attempt_id = await asyncio.to_thread(_attempt, self._engine, step.operation_id)
        try:
            executor = get_executor(job.executor)
            if not installs_files(executor):
                cause = f"the {job.executor} executor cannot install files"
                raise ConfigurationError(job.device_name, "publish", cause)
            result = await executor.install_files(job.request)  # type: ignore[attr-defined]
        except ExecutorError as exc:
            refused = exc.login in (LoginProgress.REFUSED, LoginProgress.UNKNOWN)
            await asyncio.to_thread(self._ledger.settle, charge, failed=refused)
            message = redact(str(exc), secrets)
            shown = redact(exc.transcript, secrets)
            await asyncio.to_thread(
                _attempt_done, self._engine, attempt_id, exc.kind, message, shown
            )
            if isinstance(exc, AuthenticationFailed) and await asyncio.to_thread(
                self._secret_moved, job
            ):  # a change committed since the secret was read: publish again after it
                raise ApplicationError(message, type=CREDENTIAL_BUSY, non_retryable=True) from None
            retry = exc.may_retry
            raise ApplicationError(message, type=exc.kind, non_retryable=not retry) from None
        except BaseException:  # not classified (or canceled mid-call): it may have been refused
            await asyncio.to_thread(self._ledger.settle, charge, failed=True)
            raise
        await asyncio.to_thread(self._ledger.settle, charge, failed=False)
        transcript = redact(result.transcript, secrets)
        del job.request, secrets  # the key's and the account's plaintext go with them
        served, seen = await wait_until_served(
            job.address, job.verify_port, job.server_name, job.certificate_der
        )
        if not served:
            detail = (
                f"{job.address}:{job.verify_port} does not serve the new certificate after the "
                f"reload: {seen}"
            )
            await asyncio.to_thread(
                lambda: _attempt_done(self._engine, attempt_id, "CertificateNotServed", detail,
                                      transcript)
            )  # fmt: skip
            raise ApplicationError(detail, type="CertificateNotServed", non_retryable=True)
        await asyncio.to_thread(lambda: _published(self._engine, attempt_id, step, transcript))
        return PublishOutcome(device_id=job.device_id, served_matches=True)

    def _secret_moved(self, job: _PublishJob) -> bool:
        with Session(self._engine) as session:
            current = self._vault.current(session, job.credential_id)
        return current is not None and current.id != job.secret_version_id

    def _publish_job(self, step: PublishStep) -> _PublishJob:
        with Session(self._engine) as session:
            certificate = get_or_raise(session, Certificate, step.certificate_id)
            entry = certificate.publish_to[step.index]
            device = get_or_raise(session, Device, entry["device_id"])
            credential = get_or_raise(session, Credential, entry["credential_id"])
            if credential_busy(session, credential.id):
                raise ApplicationError(
                    f"credential {credential.id} is busy with another operation; the publish "
                    "waits for it to end",
                    type=CREDENTIAL_BUSY,
                    non_retryable=True,
                )
            policy = policy_for(session, credential)
            version = self._vault.current(session, credential.id)
            if version is None or not certificate.certificate_pem:
                raise ApplicationError("nothing to publish with", type="ConfigurationError",
                                       non_retryable=True)  # fmt: skip
            secret = self._vault.reveal(version)
            key = certificate_key(certificate, self._vault)
            chain = _ca_pem(session, certificate.ca)
            account = (
                Account(credential.username, "", private_key=secret)
                if credential.secret_type == "ssh-key"
                else Account(credential.username, secret)
            )
            files = (
                InstalledFile(entry["cert_path"], (certificate.certificate_pem + chain).encode(),
                              0o644),
                InstalledFile(entry["key_path"], key.encode(), 0o600),
            )  # fmt: skip
            request = InstallRequest(
                target_for(device, policy), account, files,
                entry.get("reload_command") or None, secrets=(key, secret),
            )  # fmt: skip
            budget = Budget(
                device.id, credential.username, policy.lockout_budget,
                timedelta(seconds=policy.lockout_window_seconds),
            )  # fmt: skip
            return _PublishJob(
                credential_id=credential.id,
                secret_version_id=version.id,
                budget=budget,
                executor=device.executor,
                device_id=device.id,
                device_name=device.name,
                address=device.address,
                verify_port=int(entry["verify_port"]),
                server_name=(certificate.sans or [device.address])[0],
                certificate_der=certificate_der(certificate.certificate_pem),
                request=request,
            )

    # --- renewal ----------------------------------------------------------------------------

    @implements(steps.cert_renew_due)
    async def cert_renew_due(self, sweep: RenewalSweep) -> int:
        """Request the renewal of every certificate due as of the sweep; a certificate busy
        with another action is left for the next sweep."""
        as_of = datetime.fromisoformat(sweep.as_of)
        due = await in_thread(self._engine, lambda db: due_for_renewal(db, as_of))
        assert self._client is not None, "the renewal activity needs a Temporal client"
        renewed = 0
        for certificate_id in due:
            activity.heartbeat(certificate_id)
            try:
                await request_certificate_action(
                    self._engine, self._client, self._settings.task_queue, certificate_id,
                    CERT_REQUEST, trigger=RENEWAL_TRIGGER,
                )  # fmt: skip
                renewed += 1
            except CertificateBusy:
                continue
            except TemporalUnavailable as exc:
                raise ApplicationError(str(exc), type="TemporalUnavailable") from None
        return renewed


class _PublishJob:
    """What one publish needs, loaded in one read; lives only inside the activity."""

    __slots__ = ("address", "budget", "certificate_der", "credential_id", "device_id",
                 "device_name", "executor", "request", "secret_version_id", "server_name",
                 "verify_port")  # fmt: skip

    def __init__(
        self, *, credential_id: str, secret_version_id: str, budget: Budget, executor: str,
        device_id: str, device_name: str, address: str, verify_port: int, server_name: str,
        certificate_der: bytes, request: InstallRequest,
    ) -> None:  # fmt: skip
        self.credential_id = credential_id
        self.secret_version_id = secret_version_id
        self.budget = budget
        self.executor = executor
        self.device_id = device_id
        self.device_name = device_name
        self.address = address
        self.verify_port = verify_port
        self.server_name = server_name
        self.certificate_der = certificate_der
        self.request = request

    def __repr__(self) -> str:
        return f"_PublishJob({self.device_name!r})"  # never the request: it holds the key


def _plugin(name: str) -> CertificateAuthorityPlugin:
    try:
        return get_ca_plugin(name)
    except LookupError as exc:
        raise ApplicationError(str(exc), type="ConfigurationError", non_retryable=True) from None


_Row = TypeVar("_Row", bound=SQLModel)
_T = TypeVar("_T")


def _get(engine: Engine, model: type[_Row], key: str) -> _Row:
    with Session(engine) as session:
        return get_or_raise(session, model, key)


def _read(engine: Engine, work: Callable[[Session], _T]) -> _T:
    with Session(engine) as session:
        return work(session)


def _write_crl(engine: Engine, ca: str, number: int, der: bytes) -> bool:
    with session_scope(engine) as session:
        stored = store_crl(session, ca, number, der)
        if stored:
            audit.record(session, "ca.crl_published", ca=ca, crl_number=number)
        return stored


def _ca_pem(session: Session, ca: str) -> str:
    row = session.get(CertificateAuthority, ca)
    return row.certificate_pem if row else ""


def _attempt(engine: Engine, operation_id: str) -> str:
    with session_scope(engine) as session:
        number = activity.info().attempt
        row = Attempt(operation_id=operation_id, step="publish", number=number)
        session.add(row)
        return row.id


def _attempt_done(
    engine: Engine, attempt_id: str, outcome: str, detail: str, transcript: str
) -> None:
    with session_scope(engine) as session:
        row = get_or_raise(session, Attempt, attempt_id)
        row.outcome, row.detail, row.transcript = outcome, detail, transcript
        row.finished_at = utcnow()
        session.add(row)


def _published(engine: Engine, attempt_id: str, step: PublishStep, transcript: str) -> None:
    _attempt_done(engine, attempt_id, "succeeded", "installed, reloaded, served", transcript)
    with session_scope(engine) as session:
        certificate = get_or_raise(session, Certificate, step.certificate_id)
        certificate.published_at = utcnow()
        session.add(certificate)
        device_id = certificate.publish_to[step.index]["device_id"]
        audit.record(
            session, "certificate.published", operation_id=step.operation_id,
            device_id=device_id, certificate_id=certificate.id, serial=certificate.serial,
        )  # fmt: skip
