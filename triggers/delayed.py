"""Ask for an operation later: a workflow started with a start delay, one per credential and
kind (its id), so more requests while one waits add nothing.

It holds no gate and no row while it waits (it registers nothing until it requests the
operation), so an operation requested meanwhile runs at once; when it fires, a change committed
after the event that asked for it satisfies it, and it requests nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import Session, col, select
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError

from requesting import TemporalUnavailable
from store.audit import VIEWED
from store.models import AuditEvent, Credential, Operation, Policy, as_utc
from triggers.due import open_sessions
from triggers.window import opens_in
from workflows.contracts import (
    DELAYED_OPERATION_WORKFLOW,
    DelayedOperation,
    DelayedOutcome,
    delayed_operation_workflow_id,
)


async def request_later(
    client: Client, task_queue: str, request: DelayedOperation, delay: timedelta
) -> str:
    """The delayed workflow's id; if one is already waiting for this credential and kind, that
    one stands (it fires no later than this one would, and it covers this event too)."""
    workflow_id = delayed_operation_workflow_id(request.kind, request.credential_id)
    try:
        await client.start_workflow(
            DELAYED_OPERATION_WORKFLOW,
            request,
            id=workflow_id,
            task_queue=task_queue,
            start_delay=delay if delay > timedelta(0) else None,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )
    except RPCError as exc:
        raise TemporalUnavailable(
            f"Temporal at {client.service_client.config.target_host} did not accept the "
            f"delayed {request.kind}: {exc}"
        ) from None
    return workflow_id


def _viewed_since(db: Session, credential_id: str, at: datetime) -> bool:
    """Has the secret been read (an audited view) since ``at``?"""
    return (
        db.exec(
            select(AuditEvent.id).where(
                AuditEvent.credential_id == credential_id,
                AuditEvent.event == VIEWED,
                col(AuditEvent.at) > at,
            )
        ).first()
        is not None
    )


def delayed_verdict(
    db: Session, delayed: DelayedOperation, since: datetime
) -> DelayedOutcome | None:
    """What the delayed operation's moment decides: None to request it now, else why not (or
    how long to wait for the change window)."""
    credential = db.get(Credential, delayed.credential_id)
    if credential is None:
        return DelayedOutcome("dropped: the credential no longer exists")
    if delayed.kind == "jit-remove":
        return _jit_removal_verdict(credential)
    if delayed.kind == "change" and not credential.active:
        return DelayedOutcome("dropped: the credential is inactive (locked on its target)")
    changed_at = as_utc(credential.secret_changed_at)
    # A change committed after the event satisfies it, unless (a view) the secret it set has
    # been read since: a later view deduplicated into this request must not go unanswered.
    if (
        delayed.kind == "change"
        and changed_at > since
        and not (delayed.trigger == "view" and _viewed_since(db, credential.id, changed_at))
    ):
        return DelayedOutcome(f"satisfied: a change committed at {changed_at}")
    if delayed.trigger == "session-end" and open_sessions(db, credential.id):
        return DelayedOutcome("dropped: a session is open again; its end asks for the change")
    policy = db.get(Policy, credential.policy_id) if credential.policy_id else None
    wait = opens_in(policy.change_window if policy else None, datetime.now(UTC))
    if wait:
        return DelayedOutcome("outside the change window", wait.total_seconds())
    return None


def _jit_removal_verdict(credential: Credential) -> DelayedOutcome | None:
    """A just-in-time account's removal is due at its ``jit_until``, whatever the change window:
    None (request it) once that has passed; wait on if a later account replaced the one this
    removal was asked for; nothing to do if it is gone already (a session's end removed it)."""
    if credential.jit_until is None:
        return DelayedOutcome("satisfied: the just-in-time account is removed already")
    left = (as_utc(credential.jit_until) - datetime.now(UTC)).total_seconds()
    if left > 0:
        return DelayedOutcome("the just-in-time account lives on", left)
    return None


def jit_until(db: Session, operation_id: str) -> tuple[str, datetime] | None:
    """The credential of a committed jit-create and the end of its account's time to live;
    None once the account is removed."""
    operation = db.get(Operation, operation_id)
    credential = db.get(Credential, operation.credential_id) if operation else None
    if credential is None or credential.jit_until is None:
        return None
    return credential.id, as_utc(credential.jit_until)
