"""The SIEM outbox: the audit trail itself, and one cursor per destination.

An event waits in the outbox from the moment it is committed until its destination's cursor
passes it; appends are serialised in commit order (store/audit.py), so reading events after the
cursor in id order never skips one. A cursor is moved by one worker at a time: the holder of its
lease.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from store.engine import session_scope
from store.models import (
    AuditEvent,
    AuditHead,
    Credential,
    Device,
    Operation,
    SiemCursor,
    as_utc,
    utcnow,
)


@dataclass(frozen=True)
class Pending:
    """An event to send, with the names a SIEM shows."""

    event: AuditEvent
    operation: Operation | None
    credential: Credential | None
    device: Device | None


def claim(engine: Engine, destination: str, owner: str, lease: timedelta) -> int | None:
    """Take (or renew) the destination's lease: its cursor, or None when another worker holds
    it. A destination seen for the first time starts at the trail's current end."""
    for _ in range(2):  # two workers may race to create the cursor
        try:
            with session_scope(engine) as session:
                cursor = session.get(SiemCursor, destination, with_for_update=True)
                now = utcnow()
                if cursor is None:
                    head = session.get(AuditHead, 1)
                    cursor = SiemCursor(
                        destination=destination, last_id=head.last_id if head else 0
                    )
                elif (
                    cursor.lease_owner not in (None, owner)
                    and cursor.lease_until is not None
                    and as_utc(cursor.lease_until) > now
                ):
                    return None
                cursor.lease_owner, cursor.lease_until = owner, now + lease
                session.add(cursor)
                return cursor.last_id
        except IntegrityError:
            continue
    return None


def pending(engine: Engine, after: int, limit: int) -> list[Pending]:
    """The events after ``after``, oldest first, with their operation, credential and device."""
    with Session(engine) as session:
        events = session.exec(
            select(AuditEvent)
            .where(col(AuditEvent.id) > after)
            .order_by(col(AuditEvent.id))
            .limit(limit)
        ).all()
        return [
            Pending(
                event,
                session.get(Operation, event.operation_id) if event.operation_id else None,
                session.get(Credential, event.credential_id) if event.credential_id else None,
                session.get(Device, event.device_id) if event.device_id else None,
            )
            for event in events
        ]


def advance(engine: Engine, destination: str, owner: str, last_id: int) -> bool:
    """Move the cursor past ``last_id`` (delivered); False if the lease was lost meanwhile."""
    with session_scope(engine) as session:
        cursor = session.get(SiemCursor, destination, with_for_update=True)
        if cursor is None or cursor.lease_owner != owner:
            return False
        cursor.last_id = max(cursor.last_id, last_id)
        session.add(cursor)
        return True


def depths(session: Session) -> dict[str, int]:
    """Events waiting per destination: the outbox depth."""
    head = session.get(AuditHead, 1)
    last = head.last_id if head else 0
    return {c.destination: last - c.last_id for c in session.exec(select(SiemCursor))}
