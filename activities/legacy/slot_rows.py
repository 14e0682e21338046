"""Device slots as rows (before the per-device semaphore workflow): only workflows started by an
older release, replaying ``workflows.legacy.operation_v1``, still call these."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select
from temporalio.exceptions import ApplicationError

from store.engine import session_scope
from store.models import Credential, Device, DeviceSlot, Operation, OperationStatus, utcnow
from store.queries import get_or_raise, policy_for
from workflows import steps
from workflows.contracts import StepInput
from workflows.steps import implements

# A slot whose holder never released it (its workflow was terminated) is reclaimed after this.
STALE_SLOT = timedelta(hours=1)


class LegacySlotActivities:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @implements(steps.acquire_slot)
    def acquire_slot(self, step: StepInput) -> None:
        """Take one of the device's N slots, or fail retryably so the workflow waits its turn.

        The slot number is part of the primary key: two operations racing for the last free
        slot cannot both insert it, on SQLite or PostgreSQL, whatever their isolation level.
        """
        with Session(self._engine) as session:
            operation = get_or_raise(session, Operation, step.operation_id)
            credential = get_or_raise(session, Credential, operation.on_credential)
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

    @implements(steps.release_slot)
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
