"""Activities that coordinate operations: device concurrency slots and chained children."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.jobs import get_or_raise, policy_for
from store import audit
from store.engine import session_scope
from store.models import (
    Credential,
    Device,
    DeviceSlot,
    Operation,
    OperationStatus,
    new_id,
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
        """The chained operations to start (ABANDON). Each registers its own row when it
        starts, so a child that could not start leaves no row behind."""
        with Session(self._engine) as session:
            parent = get_or_raise(session, Operation, request.operation_id)
            if request.reason == "reconcile":
                targets = [(get_or_raise(session, Credential, parent.credential_id), "reconcile")]
            else:
                children = session.exec(
                    select(Credential)
                    .where(Credential.parent_id == parent.credential_id)
                    .order_by(col(Credential.created_at))
                ).all()
                targets = [(child, "change") for child in children]
            return [
                ChildStart(
                    OperationInput(
                        credential_id=credential.id,
                        kind=kind,
                        trigger="out-of-sync" if kind == "reconcile" else "parent-changed",
                        operation_id=new_id(),
                        device_id=credential.device_id,
                        parent_operation_id=parent.id,
                    ),
                    operation_workflow_id(kind, credential.id),
                )
                for credential, kind in targets
            ]

    @activity.defn(name="keyturn.child_not_started")
    def child_not_started(self, request: ChildNotStarted) -> None:
        """A chained operation joined one of its kind already running on that credential."""
        with session_scope(self._engine) as session:
            operation = session.get(Operation, request.operation_id)
            if operation is not None and operation.status == OperationStatus.SCHEDULED:
                # A row made before registration existed (an operation started by an older
                # Keyturn): it never ran.
                operation.status = OperationStatus.CANCELED
                operation.error_type = "AlreadyRunning"
                operation.error = request.reason
                operation.finished_at = utcnow()
                session.add(operation)
            audit.record(
                session,
                "operation.chain_joined",
                operation_id=request.operation_id,
                reason=request.reason,
            )
