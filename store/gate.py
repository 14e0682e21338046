"""The credential gate: one operation at a time per credential, in the order they were requested.

Registering an operation appends it to its credential's queue in one transaction: it either
holds the gate at once or waits for the operation registered just before it (``waiting_for``).
Leaving hands the gate to the one waiting for it — whose workflow the leaver then signals — or,
for an operation that leaves while still queued (canceled), links its follower to the operation
it was itself waiting for. Both steps update the credential's ``CredentialGate`` row first, so
they are serialised per credential on SQLite and PostgreSQL alike.

Nothing here lives longer than the operations in flight: an idle credential has no state but
one counter row.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from store import audit, callbacks
from store.engine import hold, session_scope
from store.models import (
    Credential,
    CredentialGate,
    Operation,
    OperationStatus,
    utcnow,
)
from store.row_locks import lock_row
from workflows.contracts import Admission

QUEUED = "queued"
HOLDING = "holding"


class NotRegistrable(Exception):
    """The request can never become an operation (unknown credential, say): not retried."""


@dataclass(frozen=True)
class Registration:
    operation_id: str
    credential_id: str
    kind: str
    trigger: str
    workflow_id: str
    run_id: str | None
    parent_operation_id: str | None = None
    source_version_id: str | None = None
    requested_by: str | None = None  # the principal; None: Keyturn itself
    callback_url: str | None = None
    ttl_seconds: int | None = None  # jit-create: the account's time to live


def register(session: Session, request: Registration) -> Operation:
    """The operation's row, created and queued at the credential's gate if it is new.

    Idempotent: the API and the workflow both register (whichever comes first creates the row),
    so a request is never an operation without its workflow, nor a workflow without its row.
    """
    seq = _lock(session, request.credential_id)
    # Read under the lock, fresh even if this session held it: a lifecycle operation ahead may
    # have just deactivated it (the begin step's prepare then refuses). Held for prepare. A
    # gate row locked for a credential that does not exist goes with the rolled-back
    # transaction.
    credential = session.get(Credential, request.credential_id, populate_existing=True)
    if credential is None:
        raise NotRegistrable(f"credential {request.credential_id} does not exist")
    hold(session, credential)
    existing = session.get(Operation, request.operation_id)
    if existing is not None:
        # Read under the lock: the begin step's prepare looks it up again.
        hold(session, existing)
        if existing.run_id is None and request.run_id:
            existing.run_id = request.run_id
            session.add(existing)
        # The workflow may register first (it knows neither): the request path fills them in.
        if existing.requested_by is None and request.requested_by:
            existing.requested_by = request.requested_by
            session.add(existing)
        if request.callback_url:
            callbacks.add(session, existing.id, request.callback_url)
        if existing.ttl_seconds is None and request.ttl_seconds:
            existing.ttl_seconds = request.ttl_seconds
            session.add(existing)
        if existing.gate_seq or existing.status != OperationStatus.SCHEDULED:
            return existing
        # A row an older release made before starting its workflow: queue it now.
    ahead = _tail(session, credential.id)
    if request.callback_url:
        callbacks.add(session, request.operation_id, request.callback_url)
    elif existing is None and request.parent_operation_id:
        callbacks.inherit(session, request.parent_operation_id, request.operation_id)
    operation = existing or Operation(
        id=request.operation_id,
        credential_id=credential.id,
        kind=request.kind,
        trigger=request.trigger,
        workflow_id=request.workflow_id,
        run_id=request.run_id,
        parent_operation_id=request.parent_operation_id,
        source_version_id=request.source_version_id,
        requested_by=request.requested_by,
        ttl_seconds=request.ttl_seconds,
    )
    operation.gate_seq = seq
    operation.gate_state = QUEUED if ahead else HOLDING
    operation.waiting_for = ahead.id if ahead else None
    operation.status = OperationStatus.QUEUED if ahead else OperationStatus.SCHEDULED
    session.add(operation)
    hold(session, operation)
    audit.record(
        session,
        "operation.requested",
        operation_id=operation.id,
        # All three named: the new row is not in the session's identity map until flushed,
        # so looking it up for them would cost a statement.
        credential_id=credential.id,
        device_id=credential.device_id,
        principal=operation.requested_by or audit.KEYTURN,
        kind=operation.kind,
        trigger=operation.trigger,
        waiting_for=operation.waiting_for,
        parent_operation_id=operation.parent_operation_id,
    )
    return operation


def admit(engine: Engine, request: Registration) -> Admission:
    """Register in a transaction of its own (idempotent): what the request path and the
    workflow's register step both call, so whichever comes first creates the row."""
    with session_scope(engine) as session:
        return admitted(session, request)


def admitted(session: Session, request: Registration) -> Admission:
    """``admit`` inside the caller's transaction (an operation's begin step goes on in it)."""
    operation = register(session, request)
    credential = session.get(Credential, operation.credential_id)  # held by register
    assert credential is not None
    session.flush()
    return Admission(
        operation_id=operation.id,
        device_id=credential.device_id,
        queued=operation.gate_state == QUEUED,
        waiting_for=operation.waiting_for,
        order_key=f"{operation.created_at.isoformat()}/{operation.id}",
    )


def leave(session: Session, operation_id: str, *, locked: bool = False) -> Operation | None:
    """Leave the gate; the operation that now holds it and must be told, if any. ``locked``:
    this transaction holds the gate's lock already and read the operation under it
    (``lock_of``).

    Idempotent: leaving again answers the same follower, so a retried step signals it again
    (harmless) rather than never.
    """
    operation = session.get(Operation, operation_id)
    if operation is None:
        return None
    if not locked:
        _lock(session, operation.on_credential)
        # Read again under the lock: the operation ahead may have just handed this one the
        # gate.
        session.refresh(operation)
    follower = session.exec(_FOLLOWER, params={"of_operation": operation.id}).first()
    was = operation.gate_state
    if was is not None:
        operation.gate_state = None
        session.add(operation)
    if follower is None:
        return None
    if was is None:
        # Left already: hand over only what that leaving handed over (a repeated signal).
        return follower if follower.gate_state == HOLDING else None
    if was == QUEUED:
        # Left before its turn: its follower now waits for whatever it was waiting for.
        follower.waiting_for = operation.waiting_for
        session.add(follower)
        return None
    if follower.gate_state == QUEUED:
        follower.gate_state = HOLDING
        session.add(follower)
    return follower


def join_callback(session: Session, operation_id: str, credential_id: str, url: str) -> bool:
    """Register the callback URL of a request that joins the operation in flight; False if the
    operation has closed its callbacks (it is ending: the request must start a new one)."""
    _lock(session, credential_id)
    return callbacks.add(session, operation_id, url)


def close_callbacks(session: Session, operation_id: str) -> int:
    """The operation has ended: close its callback URLs; how many will be told."""
    operation = session.get(Operation, operation_id)
    if operation is None:
        return 0
    _lock(session, operation.on_credential)
    session.refresh(operation)
    return callbacks.close(session, operation)


def depart(
    session: Session, operation_id: str, *, locked: bool = False
) -> tuple[Operation | None, int]:
    """An ended operation leaves the gate and closes its callback URLs under one lock: the
    operation to tell its turn has come (as ``leave``), and how many requesters to tell."""
    follower = leave(session, operation_id, locked=locked)  # read under the lock
    operation = session.get(Operation, operation_id)
    return follower, callbacks.close(session, operation) if operation is not None else 0


def holds(session: Session, operation_id: str) -> bool:
    operation = session.get(Operation, operation_id)
    return operation is not None and operation.gate_state == HOLDING


def credential_busy(session: Session, credential_id: str) -> bool:
    """Whether an operation is in the credential's gate (running or queued): what reads its
    secret from outside the gate (a certificate's publish) waits until none is."""
    return _tail(session, credential_id) is not None


def ahead_of(session: Session, operation_id: str) -> Operation | None:
    operation = session.get(Operation, operation_id)
    if operation is None or operation.waiting_for is None:
        return None
    return session.get(Operation, operation.waiting_for)


def abandon(session: Session, operation_id: str, reason: str) -> Operation | None:
    """An operation whose workflow ended without leaving (terminated from the Web UI, say):
    record it as failed and hand the gate on. The operation that now holds it, if any."""
    operation = session.get(Operation, operation_id)
    if operation is None:
        return None
    _lock(session, operation.on_credential)  # before its event: the order of store/row_locks.py
    if not OperationStatus(operation.status).terminal:
        operation.status = OperationStatus.FAILED
        operation.error_type = "WorkflowEnded"
        operation.error = reason
        operation.finished_at = utcnow()
        session.add(operation)
        audit.record(
            session,
            "operation.abandoned",
            operation_id=operation.id,
            credential_id=operation.credential_id,
            outcome="failed",
            reason=reason,
        )
    return leave(session, operation_id)


def _tail(session: Session, credential_id: str) -> Operation | None:
    """The last operation in the credential's queue: the one a new request waits for."""
    return session.exec(_TAIL, params={"of_credential": credential_id}).first()


# Made once: every request reads its credential's tail and every operation its follower (an ORM
# statement built per call cost twice as much to run).
_TAIL = (
    select(Operation)
    .where(
        Operation.credential_id == bindparam("of_credential"),
        col(Operation.gate_state).is_not(None),
    )
    .order_by(col(Operation.gate_seq).desc())
)
_FOLLOWER = select(Operation).where(
    Operation.waiting_for == bindparam("of_operation"), col(Operation.gate_state).is_not(None)
)


def lock_of(
    session: Session, operation_id: str, credential_id: str | None = None
) -> Operation | None:
    """Lock the gate of the operation's credential now: a transaction that leaves the gate
    after appending to the audit trail takes the gate's lock first (store/row_locks.py). The
    operation, read under the lock and held for the rest of the transaction: its commit and
    its departure (``depart(..., locked=True)``) find it there. ``credential_id``: the
    operation's credential, when the caller knows it (it loaded the job): the operation is then
    read once, after the lock, instead of before it to learn whose gate and again under it."""
    if credential_id is None:
        known = session.get(Operation, operation_id)
        if known is None:
            return None
        credential_id = known.on_credential
    _lock(session, credential_id)
    operation = session.get(Operation, operation_id, populate_existing=True)
    if operation is None:
        return None
    if operation.credential_id != credential_id:
        raise ValueError(f"operation {operation_id} does not act on credential {credential_id}")
    hold(session, operation)
    return operation


def _lock(session: Session, credential_id: str) -> int:
    """Write first: the lock this takes makes the gate step atomic per credential. Returns the
    credential's next registration number."""
    return int(lock_row(session, CredentialGate, credential_id).seq)
