"""Activities that coordinate operations: device concurrency slots and chained children."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import audit
from activities.jobs import get_or_raise, policy_for
from store.engine import session_scope
from store.models import (
    Credential,
    Device,
    DeviceSlot,
    Operation,
    OperationStatus,
    utcnow,
)
from workflows.contracts import (
    ChildNotStarted,
    ChildrenRequest,
    ChildStart,
    OperationInput,
    StepInput,
    operation_workflow_id,
)

# A slot whose holder never released it (its workflow was terminated) is reclaimed after this.
STALE_SLOT = timedelta(hours=1)


class CoordinationActivities:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @activity.defn(name="keyturn.acquire_slot")
    def acquire_slot(self, step: StepInput) -> None:
        """Take one of the device's N slots, or fail retryably so the workflow waits its turn.

        The slot number is part of the primary key: two operations racing for the last free
        slot cannot both insert it, on SQLite or PostgreSQL, whatever their isolation level.
        """
        with Session(self._engine) as session:
            operation = get_or_raise(session, Operation, step.operation_id)
            credential = get_or_raise(session, Credential, operation.credential_id)
            device = get_or_raise(session, Device, credential.device_id)
            limit = (
                device.max_concurrent_operations
                or policy_for(session, credential).max_concurrent_operations
            )
            held = session.exec(select(DeviceSlot).where(DeviceSlot.device_id == device.id)).all()
        if any(slot.operation_id == operation.id for slot in held):
            return  # a retry of an acquire that had succeeded
        self._reclaim_stale(device.id, held)
        for slot in range(limit):
            try:
                with session_scope(self._engine) as session:
                    session.add(
                        DeviceSlot(device_id=device.id, slot=slot, operation_id=operation.id)
                    )
                return
            except IntegrityError:
                continue
        raise ApplicationError(
            f"device {device.name} runs {limit} operations already; waiting for a slot",
            type="DeviceBusy",
        )

    @activity.defn(name="keyturn.release_slot")
    def release_slot(self, step: StepInput) -> None:
        with session_scope(self._engine) as session:
            for slot in session.exec(
                select(DeviceSlot).where(DeviceSlot.operation_id == step.operation_id)
            ):
                session.delete(slot)

    def _reclaim_stale(self, device_id: str, held: Sequence[DeviceSlot]) -> None:
        """Free slots whose operation has ended or that are older than STALE_SLOT."""
        now = utcnow()
        with session_scope(self._engine) as session:
            for slot in held:
                holder = session.get(Operation, slot.operation_id)
                acquired = slot.acquired_at.replace(tzinfo=now.tzinfo)
                ended = holder is None or OperationStatus(holder.status).terminal
                if ended or now - acquired > STALE_SLOT:
                    row = session.get(DeviceSlot, (device_id, slot.slot))
                    if row is not None and row.operation_id == slot.operation_id:
                        session.delete(row)

    @activity.defn(name="keyturn.plan_children")
    def plan_children(self, request: ChildrenRequest) -> list[ChildStart]:
        """Create the chained operations' rows; the workflow then starts them (ABANDON)."""
        with session_scope(self._engine) as session:
            parent = get_or_raise(session, Operation, request.operation_id)
            existing = session.exec(
                select(Operation).where(Operation.parent_operation_id == parent.id)
            ).all()
            if existing:  # a retry: the rows were made by an earlier run of this activity
                return [_start(session, op) for op in existing]
            if request.reason == "reconcile":
                targets = [(get_or_raise(session, Credential, parent.credential_id), "reconcile")]
            else:
                children = session.exec(
                    select(Credential)
                    .where(Credential.parent_id == parent.credential_id)
                    .order_by(col(Credential.created_at))
                ).all()
                targets = [(child, "change") for child in children]
            made = []
            for credential, kind in targets:
                trigger = "out-of-sync" if kind == "reconcile" else "parent-changed"
                child = Operation(
                    credential_id=credential.id,
                    kind=kind,
                    trigger=trigger,
                    workflow_id=operation_workflow_id(kind, credential.id),
                    parent_operation_id=parent.id,
                )
                session.add(child)
                session.flush()
                audit.record(
                    session,
                    "operation.chained",
                    operation_id=child.id,
                    credential_id=credential.id,
                    parent_operation_id=parent.id,
                    kind=kind,
                )
                made.append(_start(session, child))
            return made

    @activity.defn(name="keyturn.child_not_started")
    def child_not_started(self, request: ChildNotStarted) -> None:
        with session_scope(self._engine) as session:
            operation = get_or_raise(session, Operation, request.operation_id)
            if operation.status == OperationStatus.SCHEDULED:
                operation.status = OperationStatus.CANCELED
                operation.error_type = "AlreadyRunning"
                operation.error = request.reason
                operation.finished_at = utcnow()
                session.add(operation)


def _start(session: Session, operation: Operation) -> ChildStart:
    credential = get_or_raise(session, Credential, operation.credential_id)
    return ChildStart(
        OperationInput(
            operation.id, credential.id, credential.device_id, operation.kind, operation.trigger
        ),
        operation.workflow_id,
    )
