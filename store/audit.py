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

from sqlalchemy import bindparam, insert, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from store.models import AuditEvent, AuditHead, Credential, Operation, utcnow

log = logging.getLogger("keyturn.audit")
# A read of a secret (GET /v1/credentials/{id}/secret): what a change after a view answers.
VIEWED = "secret.viewed"

GENESIS = "0" * 64
# Where a session keeps the head its transaction locked: (the transaction, the head).
_HEAD_HELD = "keyturn.audit.head"
KEYTURN = "keyturn"  # the principal of what Keyturn does on its own (triggers, steps)
_VERIFY_BATCH = 1000
# An append's statements, built once on the tables (Core, not the ORM): each append only binds
# its values, where building them (and their cache keys) cost about as much as running them.
_EVENTS, _HEAD = AuditEvent.__table__, AuditHead.__table__  # type: ignore[attr-defined]
_APPEND = insert(_EVENTS)
_MOVE_HEAD = (
    update(_HEAD)
    .where(_HEAD.c.id == 1)
    .values(last_id=bindparam("to_id"), hash=bindparam("to_hash"))
)
# Lock and read in one statement (PostgreSQL and SQLite both return the row).
_LOCK_HEAD = (
    update(_HEAD)
    .where(_HEAD.c.id == 1)
    .values(last_id=_HEAD.c.last_id)
    .returning(_HEAD.c.last_id, _HEAD.c.hash)
)


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
) -> int:
    """Append an event in ``session``'s transaction and answer its id. ``principal`` defaults
    to whoever requested the operation (or Keyturn itself), ``device_id`` to the credential's
    device."""
    # A caller that names credential, device and principal spares the lookups (hot paths do).
    known = credential_id and device_id and principal
    operation = session.get(Operation, operation_id) if operation_id and not known else None
    if operation is not None:
        credential_id = credential_id or operation.credential_id
        principal = principal or operation.requested_by
    if credential_id and not device_id:
        credential = session.get(Credential, credential_id)
        device_id = credential.device_id if credential else None
    # Pending writes go first: the head is locked after them (store/row_locks.py says in which
    # order a transaction takes its locks).
    session.flush()
    last_id, last_hash = _lock_head(session)
    fields: dict[str, Any] = {
        "id": last_id + 1,
        "at": utcnow(),
        "event": event,
        "principal": principal or KEYTURN,
        "outcome": outcome,
        "operation_id": operation_id,
        "credential_id": credential_id,
        "device_id": device_id,
        "detail": json.loads(json.dumps(detail, default=str)),  # as the JSON column returns it
        "prev_hash": last_hash or GENESIS,
    }
    fields["hash"] = _digest(fields)
    # Statements, not ORM objects: an append is on nearly every step's path, and the unit of
    # work's bookkeeping for two rows cost more than the two statements.
    session.execute(_APPEND, fields)
    session.execute(_MOVE_HEAD, {"to_id": fields["id"], "to_hash": fields["hash"]})
    _hold_head(session, (fields["id"], fields["hash"]))
    if log.isEnabledFor(logging.INFO):
        log.info(
            "%s principal=%s outcome=%s operation=%s credential=%s %s",
            event,
            fields["principal"],
            outcome,
            operation_id,
            credential_id,
            " ".join(f"{k}={v}" for k, v in detail.items()),
        )
    return int(fields["id"])


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
    return _digest({name: getattr(row, name) for name in _CHAINED})


_CHAINED = (
    "id",
    "at",
    "event",
    "principal",
    "outcome",
    "operation_id",
    "credential_id",
    "device_id",
    "detail",
    "prev_hash",
)


def _digest(fields: dict[str, Any]) -> str:
    chained = {name: fields[name] for name in _CHAINED}
    chained["at"] = _naive(chained["at"]).isoformat(timespec="microseconds")
    canonical = json.dumps(chained, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _naive(at: datetime) -> datetime:
    """UTC without a zone: what SQLite and PostgreSQL (timestamp without time zone) give back."""
    return at.replace(tzinfo=None)


def _lock_head(session: Session) -> tuple[int, str]:
    """The trail's head (last id, last hash), locked for the rest of the transaction. A
    transaction that records several events (an operation's begin step records three) locks
    and reads it once: the lock is held until the transaction ends, so the head it read, with
    the events it appended since, is still the head."""
    held = session.info.get(_HEAD_HELD)
    if (
        held is not None
        and not session.in_nested_transaction()
        and held[0] is session.get_transaction()
    ):
        head: tuple[int, str] = held[1]
        return head
    return _lock_head_now(session)


def _hold_head(session: Session, head: tuple[int, str]) -> None:
    # Not inside a savepoint: one rolled back would release the lock (PostgreSQL) and undo its
    # appends, one released would leave the head held outside it behind. Either way the next
    # event outside reads the head again.
    if session.in_nested_transaction():
        session.info.pop(_HEAD_HELD, None)
    else:
        session.info[_HEAD_HELD] = (session.get_transaction(), head)


def _lock_head_now(session: Session) -> tuple[int, str]:
    for _ in range(3):  # the first event of a store may race to create the head
        locked = session.execute(_LOCK_HEAD).first()
        if locked is not None:
            return int(locked[0]), str(locked[1])
        try:
            with session.begin_nested():
                # A statement too: an ORM object of the head would keep its first values in
                # this session while the appends move the row on.
                session.execute(insert(_HEAD).values(id=1, last_id=0, hash=GENESIS))
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
