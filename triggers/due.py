"""Which credentials a policy's sweep must act on: store queries through an index, never a scan.

A sweep decides what is due once, as of its start (``as_of``), and pages through it in the
order of the index (age, then id), carrying a cursor; a credential changed or verified after
the sweep began is no longer due and is skipped. Each credential is looked at again just
before its operation is requested (``skip_reason``), so a sweep that repeats a page (after a
restart) requests nothing that has happened meanwhile.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, or_
from sqlalchemy.orm import InstrumentedAttribute
from sqlmodel import Session, col, select

from store.models import (
    Credential,
    CredentialSession,
    Operation,
    OperationStatus,
    Policy,
    SyncState,
    as_utc,
)
from triggers.window import opens_in
from workflows.contracts import SWEEP_EXPIRY, SWEEPS, DuePage, DueQuery

IN_FLIGHT = (OperationStatus.QUEUED, OperationStatus.SCHEDULED, OperationStatus.RUNNING)
STALE_IN_FLIGHT = timedelta(hours=1)


def age_column(purpose: str) -> InstrumentedAttribute[datetime]:
    column: InstrumentedAttribute[datetime] = (
        Credential.secret_changed_at if purpose == SWEEP_EXPIRY else Credential.verified_at  # type: ignore[assignment]
    )
    return column


def every(policy: Policy, purpose: str) -> int | None:
    return policy.change_every_seconds if purpose == SWEEP_EXPIRY else policy.verify_every_seconds


def stop_reason(policy: Policy | None, purpose: str, now: datetime) -> str:
    """Why the policy's sweep must not act now; empty when it may."""
    if policy is None:
        return "the policy no longer exists"
    if policy.paused:
        return "the policy is paused"
    if every(policy, purpose) is None:
        return f"the policy no longer asks for {purpose} sweeps"
    wait = opens_in(policy.change_window, now)
    if wait:
        return f"outside the policy's change window (opens in {int(wait.total_seconds())}s)"
    return ""


def due_page(session: Session, query: DueQuery, now: datetime | None = None) -> DuePage:
    policy = session.get(Policy, query.policy_id)
    stop = stop_reason(policy, query.purpose, now or datetime.now(UTC))
    if stop:
        return DuePage((), "", stop)
    assert policy is not None
    period = every(policy, query.purpose)
    assert period is not None
    age = age_column(query.purpose)
    statement = select(Credential.id, age).where(
        Credential.policy_id == policy.id,
        age <= datetime.fromisoformat(query.as_of) - timedelta(seconds=period),
        Credential.sync_state != SyncState.OUT_OF_SYNC,  # drift is reconcile's to fix
        # Locked on its target: neither changed (its login is refused) nor verified (which
        # would find the refusal and call it drift).
        col(Credential.active).is_(True),
    )
    if query.cursor:
        after, _, after_id = query.cursor.partition("|")
        at = datetime.fromisoformat(after)
        statement = statement.where(or_(age > at, and_(age == at, col(Credential.id) > after_id)))
    rows = session.exec(statement.order_by(age, col(Credential.id)).limit(query.limit)).all()
    ids = tuple(row[0] for row in rows)
    cursor = ""
    if len(rows) == query.limit:
        cursor = f"{as_utc(rows[-1][1]).isoformat()}|{rows[-1][0]}"
    return DuePage(ids, cursor)


def skip_reason(
    session: Session, credential_id: str, policy_id: str, purpose: str, as_of: datetime
) -> str:
    """Why this credential must not be requested now after all; empty when it must."""
    credential = session.get(Credential, credential_id)
    if credential is None or credential.policy_id != policy_id:
        return "no longer under this policy"
    policy = session.get(Policy, policy_id)
    stop = stop_reason(policy, purpose, datetime.now(UTC))
    if stop:
        return stop
    assert policy is not None
    period = timedelta(seconds=every(policy, purpose) or 0)
    age = as_utc(getattr(credential, age_column(purpose).key))
    if age > as_of - period:
        return "done since the sweep began"
    if credential.sync_state == SyncState.OUT_OF_SYNC:
        return "out of sync"
    if not credential.active:
        return "inactive: locked on its target"
    if in_flight(session, credential_id, SWEEPS[purpose][0]):
        # Asking again would only join it, at the cost of Temporal calls, on every sweep.
        return "its operation is in flight"
    if purpose == SWEEP_EXPIRY and open_sessions(session, credential_id):
        wait = policy.max_session_wait_seconds
        if wait is None or datetime.now(UTC) < age + period + timedelta(seconds=wait):
            return "a session is open: the change waits for it to end"
    return ""


def in_flight(session: Session, credential_id: str, kind: str) -> bool:
    """An operation of this kind on the credential has been requested and has not ended. One
    older than STALE_IN_FLIGHT is not trusted to be alive: requesting again joins it if it runs,
    and otherwise queues behind it at the gate, which finds a dead one and passes it by."""
    since = datetime.now(UTC) - STALE_IN_FLIGHT
    return (
        session.exec(
            select(Operation.id).where(
                Operation.credential_id == credential_id,
                Operation.kind == kind,
                col(Operation.status).in_(IN_FLIGHT),
                col(Operation.created_at) > since,
            )
        ).first()
        is not None
    )


def open_sessions(session: Session, credential_id: str) -> int:
    return len(
        session.exec(
            select(CredentialSession.session_id).where(
                CredentialSession.credential_id == credential_id,
                col(CredentialSession.ended_at).is_(None),
            )
        ).all()
    )


def jitter_seconds(session: Session, policy_id: str) -> int:
    policy = session.get(Policy, policy_id)
    return policy.jitter_seconds if policy else 0
