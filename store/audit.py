"""The audit trail: every step, secret read, configuration change and refused API call.

Events are appended to one hash chain: each holds the SHA-256 of its own fields and of the event
before it, so altering or removing a row is found by ``verify`` (``keyturn audit verify``).
Appending updates the ``AuditHead`` row first: that lock serialises appends, so ids follow commit
order with no gaps, and the SIEM echo, which reads events by id, never skips one committed late.
Details carry ids and outcomes only, never a secret. Each event also goes to the
``keyturn.audit`` logger.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from store.models import AuditEvent, AuditHead, Credential, Operation

log = logging.getLogger("keyturn.audit")
# A read of a secret (GET /v1/credentials/{id}/secret): what a change after a view answers.
VIEWED = "secret.viewed"

GENESIS = "0" * 64
# Where a session keeps the head its transaction locked: (the transaction, the head).
_HEAD_HELD = "keyturn.audit.head"
KEYTURN = "keyturn"  # the principal of what Keyturn does on its own (triggers, steps)
_VERIFY_BATCH = 1000


def record(
    session: Session,
    event: str,
    *,
    operation_id: str | None = None,
    credential_id: str | None = None,
    device_id: str | None = None,
    principal: str | None = None,
    outcome: str = "ok",
    **detail: Any,
) -> AuditEvent:
    """Append an event in ``session``'s transaction. ``principal`` defaults to whoever requested
    the operation (or Keyturn itself), ``device_id`` to the credential's device."""
    # A caller that names credential, device and principal spares the lookups (hot paths do).
    known = credential_id and device_id and principal
    operation = session.get(Operation, operation_id) if operation_id and not known else None
    if operation is not None:
        credential_id = credential_id or operation.credential_id
        principal = principal or operation.requested_by
    if credential_id and not device_id:
        credential = session.get(Credential, credential_id)
        device_id = credential.device_id if credential else None
    # Pending writes go first, so the head's lock is the last this transaction takes.
    session.flush()
    head = _lock_head(session)
    row = AuditEvent(
        id=head.last_id + 1,
        event=event,
        principal=principal or KEYTURN,
        outcome=outcome,
        operation_id=operation_id,
        credential_id=credential_id,
        device_id=device_id,
        detail=json.loads(json.dumps(detail, default=str)),  # as the JSON column returns it
        prev_hash=head.hash or GENESIS,
    )
    row.hash = chain_hash(row)
    head.last_id, head.hash = row.id or 0, row.hash
    session.add_all([row, head])
    session.flush()
    log.info(
        "%s principal=%s outcome=%s operation=%s credential=%s %s",
        event,
        row.principal,
        outcome,
        operation_id,
        credential_id,
        " ".join(f"{k}={v}" for k, v in detail.items()),
    )
    return row


def record_once(session: Session, event: str, *, operation_id: str, **fields: Any) -> None:
    """Record ``event`` (``fields`` as for record) for an operation unless it already has one:
    a retried step records it once."""
    found = session.exec(
        select(AuditEvent.id).where(
            AuditEvent.event == event, AuditEvent.operation_id == operation_id
        )
    ).first()
    if found is None:
        record(session, event, operation_id=operation_id, **fields)


def chain_hash(row: AuditEvent) -> str:
    """SHA-256 over the event's fields and the previous event's hash."""
    fields = {
        "id": row.id,
        "at": _naive(row.at).isoformat(timespec="microseconds"),
        "event": row.event,
        "principal": row.principal,
        "outcome": row.outcome,
        "operation_id": row.operation_id,
        "credential_id": row.credential_id,
        "device_id": row.device_id,
        "detail": row.detail,
        "prev_hash": row.prev_hash,
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _naive(at: datetime) -> datetime:
    """UTC without a zone: what SQLite and PostgreSQL (timestamp without time zone) give back."""
    return at.replace(tzinfo=None)


def _lock_head(session: Session) -> AuditHead:
    """The trail's head, locked for the rest of the transaction. A transaction that records
    several events (an operation's begin step records three) locks and reads it once: the lock
    is held until the transaction ends, so the head it read is still the head."""
    nested = session.in_nested_transaction()
    held = session.info.get(_HEAD_HELD)
    if held is not None and not nested and held[0] is session.get_transaction():
        head: AuditHead = held[1]
        return head
    head = _lock_head_now(session)
    # Not inside a savepoint: one rolled back would release the lock (PostgreSQL) and expire
    # the row, so such a lock is taken again by the next event.
    if not nested:
        session.info[_HEAD_HELD] = (session.get_transaction(), head)
    return head


def _lock_head_now(session: Session) -> AuditHead:
    for _ in range(3):  # the first event of a store may race to create the head
        bumped = session.execute(
            update(AuditHead).where(col(AuditHead.id) == 1).values(last_id=AuditHead.last_id)
        )
        if bumped.rowcount:  # type: ignore[attr-defined]
            # Read after the lock, and fresh even if this session holds the row already: one
            # statement (get-then-refresh was two).
            return session.exec(
                select(AuditHead)
                .where(col(AuditHead.id) == 1)
                .execution_options(populate_existing=True)
            ).one()
        try:
            with session.begin_nested():
                session.add(AuditHead(id=1, last_id=0, hash=GENESIS))
        except IntegrityError:
            continue
    raise RuntimeError("could not lock the audit trail's head")


@dataclass(frozen=True)
class Broken:
    """Where the chain breaks: the first event that does not check out, and why."""

    event_id: int
    reason: str


def verify(engine: Engine) -> tuple[int, Broken | None]:
    """Walk the chain from the first event: how many events checked out, and the first break."""
    checked = 0
    previous_id, previous_hash = 0, GENESIS
    for row in _all_events(engine):
        assert row.id is not None
        if row.prev_hash != previous_hash:
            if row.id > previous_id + 1:
                missing = (
                    f"event {previous_id + 1} is missing"
                    if row.id == previous_id + 2
                    else f"events {previous_id + 1} to {row.id - 1} are missing"
                )
                return checked, Broken(previous_id + 1, f"{missing} (removed from the trail)")
            return checked, Broken(
                previous_id or row.id,
                f"event {previous_id} was altered: event {row.id} holds another hash for it",
            )
        if chain_hash(row) != row.hash:
            return checked, Broken(row.id, f"event {row.id} was altered: its hash does not match")
        checked += 1
        previous_id, previous_hash = row.id, row.hash
    with Session(engine) as session:
        head = session.get(AuditHead, 1)
    if head is not None and (head.last_id, head.hash) != (previous_id, previous_hash):
        if head.last_id > previous_id:
            return checked, Broken(
                previous_id + 1,
                f"events {previous_id + 1} to {head.last_id} are missing (the last ones removed)",
            )
        return checked, Broken(previous_id, f"event {previous_id} does not end the chain")
    return checked, None


def _all_events(engine: Engine) -> Iterator[AuditEvent]:
    after = 0
    while True:
        with Session(engine) as session:
            rows = session.exec(
                select(AuditEvent)
                .where(col(AuditEvent.id) > after)
                .order_by(col(AuditEvent.id))
                .limit(_VERIFY_BATCH)
            ).all()
        if not rows:
            return
        yield from rows
        after = rows[-1].id or after
