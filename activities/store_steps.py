"""Store-facing activities: prepare, commit and finish an operation.

Plain (sync) functions: SQLModel is synchronous, so the worker runs them in its thread pool.
Each is idempotent, because Temporal may run an activity again after a crash.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine
from temporalio import activity

from activities import audit
from activities.jobs import policy_for
from keyturn import failpoints
from keyturn.settings import zone_task_queue
from store.engine import session_scope
from store.models import (
    Credential,
    Device,
    Operation,
    OperationStatus,
    SecretState,
    SecretVersion,
    SyncState,
    utcnow,
)
from store.passwords import generate_password
from store.vault import Vault
from workflows.contracts import CommitInput, FinishInput, OperationPlan, StepInput


class StoreActivities:
    def __init__(self, engine: Engine, vault: Vault, task_queue: str) -> None:
        self._engine = engine
        self._vault = vault
        self._task_queue = task_queue

    @activity.defn(name="keyturn.prepare")
    def prepare(self, step: StepInput) -> OperationPlan:
        """Mark the operation running and, for a change, store the new secret as pending.

        The pending secret exists (encrypted) before the target is touched, and a retry of this
        activity reuses it: the protocol's first guarantee that no credential is lost.
        """
        with session_scope(self._engine) as session:
            operation = session.get(Operation, step.operation_id)
            if operation is None:
                raise LookupError(f"operation {step.operation_id} not found")
            credential = session.get(Credential, operation.credential_id)
            assert credential is not None
            device = session.get(Device, credential.device_id)
            assert device is not None
            policy = policy_for(session, credential)
            if operation.kind in ("change", "reconcile") and operation.pending_version_id is None:
                pending = self._vault.add(
                    session,
                    credential.id,
                    generate_password(policy.password_rules()),
                    SecretState.PENDING,
                    operation_id=operation.id,
                )
                operation.pending_version_id = pending.id
                audit.record(
                    session,
                    "secret.pending_created",
                    operation_id=operation.id,
                    credential_id=credential.id,
                    version_id=pending.id,
                )
            if operation.status == OperationStatus.SCHEDULED:
                operation.status = OperationStatus.RUNNING
                audit.record(
                    session,
                    "operation.started",
                    operation_id=operation.id,
                    credential_id=credential.id,
                    kind=operation.kind,
                    trigger=operation.trigger,
                )
            session.add(operation)
            plan = OperationPlan(
                zone_task_queue=zone_task_queue(self._task_queue, device.zone),
                max_attempts=policy.max_attempts,
                retry_interval_seconds=policy.retry_interval_seconds,
                backoff=policy.backoff,
                step_timeout_seconds=policy.connect_timeout_seconds
                + 4 * policy.read_timeout_seconds,
                can_reconcile=credential.reconcile_credential_id is not None,
                auto_reconcile=credential.auto_reconcile
                and credential.reconcile_credential_id is not None,
            )
        failpoints.reach(failpoints.AFTER_PREPARE)
        return plan

    @activity.defn(name="keyturn.commit")
    def commit(self, step: CommitInput) -> None:
        """One transaction: pending → current, current → previous, operation succeeded."""
        with session_scope(self._engine) as session:
            operation = session.get(Operation, step.operation_id)
            if operation is None:
                raise LookupError(f"operation {step.operation_id} not found")
            if operation.status == OperationStatus.SUCCEEDED:
                return  # already committed by an earlier run of this activity
            credential = session.get(Credential, operation.credential_id)
            assert credential is not None
            if operation.pending_version_id:
                Vault.promote(session, credential.id, operation.pending_version_id)
            credential.sync_state = SyncState.IN_SYNC
            operation.status = OperationStatus.SUCCEEDED
            operation.resolution = step.resolution
            operation.finished_at = utcnow()
            session.add_all([credential, operation])
            audit.record(
                session,
                "operation.succeeded",
                operation_id=operation.id,
                credential_id=credential.id,
                kind=operation.kind,
                resolution=step.resolution,
            )
            session.flush()  # the statements are sent; the transaction is not yet committed
            failpoints.reach(failpoints.DURING_COMMIT)

    @activity.defn(name="keyturn.finish")
    def finish(self, result: FinishInput) -> None:
        """Record a terminal state other than a committed change."""
        with session_scope(self._engine) as session:
            operation = session.get(Operation, result.operation_id)
            if operation is None:
                raise LookupError(f"operation {result.operation_id} not found")
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
                if pending is not None and pending.state == SecretState.PENDING:
                    pending.state = SecretState.FAILED
                    pending.changed_at = utcnow()
                    session.add(pending)
            if result.out_of_sync:
                credential.sync_state = SyncState.OUT_OF_SYNC
            elif result.status == OperationStatus.SUCCEEDED:
                credential.sync_state = SyncState.IN_SYNC
            session.add_all([operation, credential])
            audit.record(
                session,
                f"operation.{result.status}",
                operation_id=operation.id,
                credential_id=credential.id,
                kind=operation.kind,
                resolution=result.resolution,
                error_type=result.error_type,
            )
