"""Store-facing activities: prepare, commit and finish an operation.

Plain (sync) functions: SQLModel is synchronous, so the worker runs them in its thread pool.
Each is idempotent, because Temporal may run an activity again after a crash.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio.exceptions import ApplicationError

from keyturn import failpoints
from keyturn.zones import StepQueues
from store import audit
from store.chains import children_of
from store.engine import session_scope
from store.jobs import SSH_KEY
from store.models import (
    Credential,
    Operation,
    OperationStatus,
    Policy,
    SecretState,
    SecretVersion,
    SyncState,
    utcnow,
)
from store.passwords import generate_password
from store.queries import operation_on_device
from store.ssh_keys import generate_private_key
from store.vault import Vault
from store.versions import VersionNotUsable, chosen_version, fail_unsent_supplied
from workflows import steps
from workflows.contracts import (
    LIFECYCLE_KINDS,
    SWITCH_KINDS,
    CommitInput,
    CommitOutcome,
    FinishInput,
    OperationPlan,
    StepInput,
)
from workflows.steps import implements

# Kinds whose prepare generates the new secret (stored pending before the target is touched).
SECRET_MAKING_KINDS = ("change", "reconcile", "jit-create")


class StoreActivities:
    def __init__(
        self, engine: Engine, vault: Vault, queues: StepQueues, heartbeat_seconds: float
    ) -> None:
        self._engine = engine
        self._vault = vault
        self._queues = queues
        self._heartbeat_seconds = heartbeat_seconds  # settings.lost_worker_seconds

    @implements(steps.prepare)
    def prepare(self, step: StepInput) -> OperationPlan:
        """Mark the operation running and, for a change, store the new secret as pending.

        The pending secret exists (encrypted) before the target is touched, and a retry of this
        activity reuses it: the protocol's first guarantee that no credential is lost.
        """
        with session_scope(self._engine) as session:
            plan = self.prepared(session, step.operation_id)
        failpoints.reach(failpoints.AFTER_PREPARE)
        return plan

    def prepared(self, session: Session, operation_id: str) -> OperationPlan:
        """``prepare`` inside the caller's transaction (an operation's begin step uses it too)."""
        # One statement for the four rows (the begin step holds the first two already).
        try:
            operation, credential, device, policy = operation_on_device(session, operation_id)
        except LookupError:
            if session.get(Operation, operation_id) is None:
                raise _no_such_operation(operation_id) from None
            raise  # its credential or device is gone: the error names which
        if not credential.active and operation.kind not in LIFECYCLE_KINDS:
            # Locked on its target: a login with any secret is refused, so a change could
            # only end out of sync (and a Linux chpasswd would half-unlock the account).
            raise ApplicationError(
                f"credential {credential.id} ({credential.username!r}) is inactive (locked "
                f"on its target): activate it before a {operation.kind}",
                type="ConfigurationError",
                non_retryable=True,
            )
        if operation.base_version_id is None:
            # What commit compares against: the vault's current version as of now.
            current = Vault.current(session, credential.id)
            operation.base_version_id = current.id if current else None
        # Recorded once the operation's row has all its changes: each event flushes what is
        # pending, so recording as they happen wrote the row once per event.
        events: list[tuple[str, dict[str, Any]]] = []
        if operation.pending_version_id is None:
            try:
                chosen = chosen_version(session, operation)
            except VersionNotUsable as exc:
                raise ApplicationError(
                    str(exc), type="ConfigurationError", non_retryable=True
                ) from None
            if chosen is not None:
                operation.pending_version_id = chosen.id
                events.append(
                    (
                        "secret.version_chosen",
                        {"version_id": chosen.id, "version_state": chosen.state},
                    )
                )
        if operation.kind in SECRET_MAKING_KINDS and operation.pending_version_id is None:
            pending = self._vault.add(
                session,
                credential.id,
                new_secret(credential, policy),
                SecretState.PENDING,
                operation_id=operation.id,
            )
            operation.pending_version_id = pending.id
            events.append(("secret.pending_created", {"version_id": pending.id}))
        if operation.status in (OperationStatus.SCHEDULED, OperationStatus.QUEUED):
            operation.status = OperationStatus.RUNNING
            events.append(
                ("operation.started", {"kind": operation.kind, "trigger": operation.trigger})
            )
        session.add(operation)
        for name, detail in events:
            audit.record(
                session,
                name,
                operation_id=operation.id,
                credential_id=credential.id,
                device_id=device.id,
                principal=operation.requested_by or audit.KEYTURN,
                **detail,
            )
        plan = OperationPlan(
            zone_task_queue=self._queues.of(device.zone),
            max_attempts=policy.max_attempts,
            retry_interval_seconds=policy.retry_interval_seconds,
            backoff=policy.backoff,
            # An ssh-key change logs in on each of its devices in one step.
            step_timeout_seconds=(policy.connect_timeout_seconds + 4 * policy.read_timeout_seconds)
            * _devices_per_step(credential),
            can_reconcile=credential.reconcile_credential_id is not None,
            auto_reconcile=credential.auto_reconcile
            and credential.reconcile_credential_id is not None,
            device_id=device.id,
            device_capacity=device.max_concurrent_operations or policy.max_concurrent_operations,
            heartbeat_timeout_seconds=self._heartbeat_seconds,
        )
        return plan

    @implements(steps.commit)
    def commit(self, step: CommitInput) -> CommitOutcome:
        """One transaction: pending → current, current → previous, operation ended (see
        ``commit_in``)."""
        with session_scope(self._engine) as session:
            return commit_in(session, step)

    @implements(steps.note_late_cancel)
    def note_late_cancel(self, step: CommitInput) -> None:
        """A cancel arrived once the commit had begun: the operation stands, and says so."""
        with session_scope(self._engine) as session:
            operation = session.get(Operation, step.operation_id)
            if operation is None:
                return
            operation.resolution = step.resolution
            session.add(operation)
            audit.record(
                session,
                "operation.cancel_too_late",
                operation_id=operation.id,
                credential_id=operation.credential_id,
            )

    @implements(steps.finish)
    def finish(self, result: FinishInput) -> None:
        """Record a terminal state other than a committed change."""
        with session_scope(self._engine) as session:
            operation = session.get(Operation, result.operation_id)
            if operation is None:
                raise _no_such_operation(result.operation_id)
            if OperationStatus(operation.status).terminal:
                return
            credential = session.get(Credential, operation.credential_id)
            assert credential is not None
            operation.status = OperationStatus(result.status)
            operation.error_type = result.error_type
            operation.error = result.error
            operation.resolution = result.resolution
            operation.finished_at = utcnow()
            if result.pending_version_fate == SecretState.FAILED and operation.pending_version_id:
                pending = session.get(SecretVersion, operation.pending_version_id)
                # Only a version this operation made: one it was asked to adopt, or the secret
                # of an interrupted operation a verify tried, stays as it was.
                if (
                    pending is not None
                    and pending.state == SecretState.PENDING
                    and pending.operation_id == operation.id
                ):
                    pending.state = SecretState.FAILED
                    pending.changed_at = utcnow()
                    session.add(pending)
            if operation.pending_version_id is None:
                # Ended before prepare (canceled while queued, refused by prepare): a secret
                # supplied with the request never reached the target.
                fail_unsent_supplied(session, operation.id)
            if result.out_of_sync:
                credential.sync_state = SyncState.OUT_OF_SYNC
            elif result.status == OperationStatus.SUCCEEDED:
                credential.sync_state = SyncState.IN_SYNC
                if operation.kind == "verify":
                    credential.verified_at = utcnow()
            if operation.kind in SWITCH_KINDS and result.login_works is not None:
                # What the login showed at the end, whatever the operation's status: a lock
                # that landed before a cancel, or one the account already had, counts.
                credential.active = result.login_works
                if operation.kind == "jit-remove" and not result.login_works:
                    credential.jit_until = None
            session.add_all([operation, credential])
            audit.record(
                session,
                f"operation.{result.status}",
                operation_id=operation.id,
                credential_id=credential.id,
                outcome=result.status,
                kind=operation.kind,
                resolution=result.resolution,
                error_type=result.error_type,
            )


def _devices_per_step(credential: Credential) -> int:
    return 1 + len(credential.key_targets) if credential.secret_type == SSH_KEY else 1


def new_secret(credential: Credential, policy: Policy) -> str:
    """A new password per the policy's rules, or for an ssh-key credential a new key pair
    of the policy's type and size (the private key, OpenSSH format)."""
    if credential.secret_type == SSH_KEY:
        return generate_private_key(policy.key_type, policy.key_bits)
    return generate_password(policy.password_rules())


def _no_such_operation(operation_id: str) -> ApplicationError:
    """Retrying cannot make a missing row appear: fail the workflow with a clear error."""
    return ApplicationError(
        f"operation {operation_id} is not in the store (was it deleted?)",
        type="NotRegistrable",
        non_retryable=True,
    )


def commit_in(session: Session, step: CommitInput) -> CommitOutcome:
    """The commit, inside the caller's transaction (a change that verifies commits in the
    transaction that records its verify).

    A compare-and-set: unless ``adopt`` (a probe has just shown the target has the pending
    secret), it commits only if the vault's current version is still the one prepare read, so a
    newer secret is never overwritten without asking the target first.
    """
    operation = session.get(Operation, step.operation_id)
    if operation is None:
        raise _no_such_operation(step.operation_id)
    status = OperationStatus(step.status)
    credential = session.get(Credential, operation.credential_id)
    assert credential is not None
    current = Vault.current(session, credential.id)
    current_id = current.id if current else None
    if operation.finished_at is not None and (
        operation.status == status
        or (current_id is not None and current_id == operation.pending_version_id)
    ):
        # Already committed, by an earlier run of this step or by the change step.
        return CommitOutcome(
            True, found_status=str(operation.status), found_resolution=operation.resolution or ""
        )
    if (
        not step.adopt
        and operation.base_version_id is not None
        and current_id != operation.base_version_id
    ):
        detail = (
            f"the vault's current secret moved from version {operation.base_version_id} "
            f"to {current_id} while this operation ran"
        )
        audit.record(
            session,
            "operation.commit_refused",
            operation_id=operation.id,
            credential_id=credential.id,
            outcome="refused",
            expected_version_id=operation.base_version_id,
            current_version_id=current_id,
        )
        return CommitOutcome(False, detail)
    if operation.pending_version_id:
        Vault.promote(session, credential.id, operation.pending_version_id)
        # The new secret was verified before the commit: both clocks restart.
        credential.secret_changed_at = credential.verified_at = utcnow()
    if operation.kind == "jit-create":
        # The account exists, with the committed secret, until its time is up.
        credential.active = True
        credential.jit_until = utcnow() + timedelta(seconds=operation.ttl_seconds or 0)
    credential.sync_state = SyncState.IN_SYNC
    operation.status = status
    operation.resolution = step.resolution
    operation.finished_at = utcnow()
    session.add_all([credential, operation])
    audit.record(
        session,
        f"operation.{status}",
        operation_id=operation.id,
        credential_id=credential.id,
        outcome=str(status),
        kind=operation.kind,
        resolution=step.resolution,
        committed_version_id=operation.pending_version_id,
    )
    children = tuple(children_of(session, operation, "parent-changed"))
    session.flush()  # the statements are sent; the transaction is not yet committed
    failpoints.reach(failpoints.DURING_COMMIT)
    return CommitOutcome(True, children=children)
