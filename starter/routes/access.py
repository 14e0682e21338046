"""What a requesting module does with a credential: read its secret (a view) and report the
sessions that use it. Both may ask for a change later, as the credential's policy says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from sqlmodel import Session, select

from requesting import (
    CredentialNotFound,
    InvalidRequest,
    OperationRequest,
    TemporalUnavailable,
    request_operation,
)
from starter.authz import APP, OPERATOR, Caller, allow, credential_for, granted
from starter.deps import State, StoreRoute
from starter.problems import Problem, invalid, not_found
from starter.schemas import SecretOut, SessionEventIn, SessionOut
from store import audit
from store.engine import in_thread
from store.jobs import SSH_KEY
from store.models import Credential, CredentialSession, Policy
from store.ssh_keys import public_key_line
from store.vault import Vault
from triggers.delayed import request_later
from triggers.due import open_sessions
from workflows.contracts import DelayedOperation

router = APIRouter(route_class=StoreRoute)
# Secrets are read by admins and by apps, each app its granted credentials only.
SecretReader = Annotated[Caller, Depends(allow(APP))]
SessionReporter = Annotated[Caller, Depends(allow(OPERATOR, APP))]


@router.get(
    "/credentials/{credential_id}/secret",
    response_model=SecretOut,
    response_model_exclude_none=True,  # a password, or a key pair: only what the secret is
    responses={
        404: {"description": "no such credential"},
        409: {"description": "the credential has no current secret"},
        503: {"description": "Temporal did not take the change the policy asks after a view"},
    },
)
async def read_secret(
    credential_id: str, app: State, request: Request, response: Response, caller: SecretReader
) -> SecretOut:
    """The current secret: ``password``, or for an ssh-key credential ``private_key`` and
    ``public_key`` (its authorized_keys line). Every read is an audit event naming who read
    it; with the policy's ``change_after_view_seconds`` a change (trigger ``view``) follows
    that much later."""
    granted(caller, credential_id)
    credential, policy = await in_thread(
        app.engine, lambda db: _with_policy(db, caller, credential_id)
    )
    if credential.jit_until is not None and credential_id not in caller.credential_ids:
        # A just-in-time account exists for whoever it was made for: the principal it is
        # granted to reads its secret, no one else (an admin included).
        raise Problem(
            403,
            f"credential {credential_id} is a just-in-time account: only a principal granted "
            "it (credential_ids) reads its secret",
        )
    now = datetime.now(UTC)
    # An inactive credential is locked on its target: a view asks for no change of it.
    if policy is not None and policy.change_after_view_seconds is not None and credential.active:
        # Asked before the secret is shown: a read that cannot be followed by its change fails.
        await _request_change(app, credential, "view", now, policy.change_after_view_seconds)
    client = request.client.host if request.client else None
    response.headers["Cache-Control"] = "no-store"  # no proxy or browser keeps a copy
    return await in_thread(
        app.engine, lambda db: _reveal(db, app.vault, credential, client, caller)
    )


@router.post(
    "/credentials/{credential_id}/events",
    response_model=SessionOut,
    responses={
        404: {"description": "no such credential"},
        409: {"description": "the session is already open (start) or not open (end)"},
        422: {
            "description": "the activate, deactivate or jit-remove the event asks for cannot "
            "be requested (no such template, no auth_credential_id): nothing is recorded"
        },
        503: {"description": "Temporal did not take the operation the event asks for"},
    },
)
async def session_event(
    credential_id: str, body: SessionEventIn, app: State, caller: SessionReporter
) -> SessionOut:
    """A session using the credential started or ended. While one is open an expiry change
    waits (up to the policy's ``max_session_wait_seconds``); with the policy's
    ``change_after_session_seconds``, the end of the last open session asks for a change."""
    granted(caller, credential_id)
    credential, policy = await in_thread(
        app.engine, lambda db: _with_policy(db, caller, credential_id)
    )
    if body.event == "session-start":
        await in_thread(app.engine, lambda db: _check_new(db, credential, body.session_id))
        # A locked credential is activated first: the activate is requested (and queued at
        # the credential's gate) before the session is recorded, so a refusal records nothing.
        activate = None if credential.active else await _request(app, credential, "activate")
        row = await in_thread(
            app.engine, lambda db: _start(db, credential, body.session_id, caller)
        )
        return await in_thread(app.engine, lambda db: _session_out(db, row, False, activate))
    row, last = await in_thread(
        app.engine, lambda db: _end(db, credential, body.session_id, caller)
    )
    delay = policy.change_after_session_seconds if policy else None
    change = last and delay is not None
    after: str | None = None
    try:
        if change:
            assert row.ended_at is not None and delay is not None
            await _request_change(app, credential, "session-end", row.ended_at, delay)
        if last:
            after = await _after_last_session(app, credential, policy)
    except Problem:
        await in_thread(
            app.engine, lambda db: _reopen(db, row, caller)
        )  # a refusal changes nothing
        raise
    return await in_thread(app.engine, lambda db: _session_out(db, row, change, after))


async def _after_last_session(
    app: State, credential: Credential, policy: Policy | None
) -> str | None:
    """The end of the last open session removes a just-in-time account at once (before its
    time to live ends), or locks the credential when the policy says lock_after_session."""
    if credential.jit_until is not None:
        return await _request(app, credential, "jit-remove")
    if policy is not None and policy.lock_after_session and credential.active:
        return await _request(app, credential, "deactivate")
    return None


async def _request(app: State, credential: Credential, kind: str) -> str:
    """Request ``kind`` for a session event: the operation's id."""
    trigger = "session-start" if kind == "activate" else "session-end"
    try:
        requested = await request_operation(
            app.engine,
            app.client,
            app.settings.task_queue,
            OperationRequest(credential.id, kind, trigger),
        )
    except InvalidRequest as exc:
        raise invalid("kind", f"the session asks for {kind}, which fails: {exc.message}") from None
    except TemporalUnavailable as exc:
        raise Problem(503, str(exc)) from None
    except CredentialNotFound:
        raise not_found("credential", credential.id) from None
    return requested.operation_id


async def _request_change(
    app: State, credential: Credential, trigger: str, since: datetime, delay: int
) -> None:
    try:
        await request_later(
            app.client,
            app.settings.task_queue,
            DelayedOperation(credential.id, "change", trigger, since.isoformat()),
            timedelta(seconds=delay),
        )
    except TemporalUnavailable as exc:
        raise Problem(503, str(exc)) from None


def _with_policy(
    db: Session, caller: Caller, credential_id: str
) -> tuple[Credential, Policy | None]:
    credential = credential_for(db, caller, credential_id)
    policy = db.get(Policy, credential.policy_id) if credential.policy_id else None
    return credential, policy


def _reveal(
    db: Session, vault: Vault, credential: Credential, client: str | None, caller: Caller
) -> SecretOut:
    version = Vault.current(db, credential.id)
    if version is None:
        raise Problem(409, f"credential {credential.id} has no current secret")
    secret = vault.reveal(version)
    audit.record(
        db,
        audit.VIEWED,
        principal=caller.name,
        credential_id=credential.id,
        version_id=version.id,
        by=caller.name,
        client=client,
    )
    db.commit()
    if credential.secret_type == SSH_KEY:
        return SecretOut(
            private_key=secret,
            public_key=public_key_line(secret, f"keyturn:{credential.id}"),
            version_id=version.id,
            changed_at=version.changed_at,
        )
    return SecretOut(password=secret, version_id=version.id, changed_at=version.changed_at)


def _check_new(db: Session, credential: Credential, session_id: str) -> None:
    existing = db.get(CredentialSession, (credential.id, session_id))
    if existing is not None:
        state = "is open" if existing.ended_at is None else "has ended"
        raise Problem(409, f"session {session_id!r} {state}; a new session needs a new id")


def _start(
    db: Session, credential: Credential, session_id: str, caller: Caller
) -> CredentialSession:
    _check_new(db, credential, session_id)
    row = CredentialSession(credential_id=credential.id, session_id=session_id)
    db.add(row)
    audit.record(
        db,
        "session.started",
        principal=caller.name,
        credential_id=credential.id,
        session_id=session_id,
    )
    db.commit()
    return row


def _end(
    db: Session, credential: Credential, session_id: str, caller: Caller
) -> tuple[CredentialSession, bool]:
    """Close the session; whether it was the credential's last open one. The credential's row
    is locked first (PostgreSQL), so of two sessions ending together exactly one is last."""
    db.exec(select(Credential).where(Credential.id == credential.id).with_for_update()).one()
    row = db.get(CredentialSession, (credential.id, session_id))
    if row is None or row.ended_at is not None:
        state = "was never started" if row is None else "has ended already"
        raise Problem(409, f"session {session_id!r} {state}")
    row.ended_at = datetime.now(UTC)
    db.add(row)
    db.flush()
    last = open_sessions(db, credential.id) == 0
    audit.record(
        db,
        "session.ended",
        principal=caller.name,
        credential_id=credential.id,
        session_id=session_id,
        last=last,
    )
    db.commit()
    return row, last


def _reopen(db: Session, row: CredentialSession, caller: Caller) -> None:
    stored = db.get(CredentialSession, (row.credential_id, row.session_id))
    if stored is not None:
        stored.ended_at = None
        db.add(stored)
    audit.record(
        db,
        "session.end_undone",
        principal=caller.name,
        credential_id=row.credential_id,
        session_id=row.session_id,
        reason="the change after it could not be requested",
    )
    db.commit()


def _session_out(
    db: Session, row: CredentialSession, change: bool, operation_id: str | None = None
) -> SessionOut:
    return SessionOut(
        credential_id=row.credential_id,
        session_id=row.session_id,
        started_at=row.started_at,
        ended_at=row.ended_at,
        open_sessions=open_sessions(db, row.credential_id),
        change_requested=change,
        operation_id=operation_id,
    )
