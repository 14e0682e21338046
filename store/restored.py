"""After ``keyturn restore``: what was in flight when the backup was taken is settled.

Temporal's state is not in a backup, so no workflow will ever finish an operation that was in
flight: each is recorded as failed (``RestoredInFlight``) and leaves its credential's gate, and
its credential is flagged ``needs_verify`` (sync state ``unknown``): the next start requests a
verify for it (requesting/restored.py), which also tries the pending secret the operation left,
since the target may have taken it. Logins that were in flight stay charged to the lockout
budget, as failed: whether the target counted them is unknown. A task's run in flight is failed
too, with each of its targets that had not ended (its operation is settled like any other).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from store import audit
from store.engine import session_scope
from store.models import (
    Credential,
    DeviceSlot,
    LoginCharge,
    Operation,
    OperationStatus,
    SyncState,
    TaskResult,
    TaskRun,
    utcnow,
)

IN_FLIGHT = (
    OperationStatus.QUEUED,
    OperationStatus.SCHEDULED,
    OperationStatus.RUNNING,
)
RESTORED_IN_FLIGHT = "RestoredInFlight"


def settle_in_flight(engine: Engine) -> list[str]:
    """Mark every operation in flight at backup time; the ids of the credentials flagged."""
    flagged: set[str] = set()
    with session_scope(engine) as session:
        now = utcnow()
        for operation in session.exec(
            select(Operation).where(col(Operation.status).in_(IN_FLIGHT))
        ):
            operation.status = OperationStatus.FAILED
            operation.error_type = RESTORED_IN_FLIGHT
            operation.error = (
                "Keyturn was restored from a backup taken while this operation was in flight; "
                "what it did on the target is unknown"
            )
            operation.resolution = "restored: a verify of the credential is requested on start"
            operation.finished_at = now
            operation.gate_state = None
            operation.waiting_for = None
            session.add(operation)
            audit.record(
                session,
                "operation.restored_in_flight",
                operation_id=operation.id,
                credential_id=operation.credential_id,
                kind=operation.kind,
                pending_version_id=operation.pending_version_id,
            )
            if operation.credential_id is not None:  # a certificate's action flags no credential
                flagged.add(operation.credential_id)
        for credential_id in flagged:
            credential = session.get(Credential, credential_id)
            if credential is not None:
                credential.needs_verify = True
                credential.sync_state = SyncState.UNKNOWN
                session.add(credential)
        for charge in session.exec(select(LoginCharge).where(LoginCharge.state == "reserved")):
            charge.state = "failed"
            session.add(charge)
        session.execute(delete(DeviceSlot))  # held by operations that are gone
        _settle_task_runs(session, now)
    return sorted(flagged)


def _settle_task_runs(session: Session, now: datetime) -> None:
    why = "Keyturn was restored from a backup taken while this run was in flight"
    for result in session.exec(select(TaskResult).where(col(TaskResult.status).in_(IN_FLIGHT))):
        result.status = OperationStatus.FAILED
        result.error_type, result.error = RESTORED_IN_FLIGHT, why
        result.finished_at = now
        session.add(result)
    for run in session.exec(select(TaskRun).where(col(TaskRun.status).in_(IN_FLIGHT))):
        run.status = OperationStatus.FAILED
        run.error = why
        run.finished_at = now
        session.add(run)
        audit.record(
            session, "task.run_restored_in_flight", outcome="failed", task_id=run.task_id,
            run_id=run.id, trigger=run.trigger,
        )  # fmt: skip
