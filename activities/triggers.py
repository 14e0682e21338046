"""Activities of the automatic triggers: find what a sweep must act on, request it, and fire a
delayed operation. Every request goes through ``requesting.request_operation``, so it queues at
the credential's gate like any other."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.client import Client

from keyturn import failpoints
from requesting import CredentialNotFound, OperationRequest, request_operation
from store.engine import in_thread
from triggers import due
from triggers.delayed import delayed_verdict, jit_until, request_later
from workflows import steps
from workflows.contracts import (
    SWEEPS,
    DelayedOperation,
    DelayedOutcome,
    DuePage,
    DueQuery,
    DueRequests,
    JitRemoval,
)
from workflows.steps import implements

# Requests of one page in flight at once: enough to hide Temporal's round trips, few enough
# not to crowd the store's pool.
REQUESTS_IN_FLIGHT = 16


class TriggerActivities:
    def __init__(self, engine: Engine, client: Client, task_queue: str) -> None:
        self._engine = engine
        self._client = client
        self._task_queue = task_queue

    @implements(steps.due_page)
    def due_page(self, query: DueQuery) -> DuePage:
        with Session(self._engine) as session:
            return due.due_page(session, query)

    @implements(steps.request_due)
    async def request_due(self, batch: DueRequests) -> int:
        """Request the operation of each credential still due; how many were requested. Safe to
        run again (a retry after a crash): a credential done meanwhile, or whose operation is
        in flight, is skipped (triggers/due.py ``skip_reason``)."""
        kind, trigger = SWEEPS[batch.purpose]
        as_of = datetime.fromisoformat(batch.as_of)
        jitter = await in_thread(self._engine, lambda db: due.jitter_seconds(db, batch.policy_id))
        limit = asyncio.Semaphore(REQUESTS_IN_FLIGHT)

        async def one(credential_id: str) -> bool:
            async with limit:
                skip = await in_thread(
                    self._engine,
                    lambda db: due.skip_reason(
                        db, credential_id, batch.policy_id, batch.purpose, as_of
                    ),
                )
                if skip:
                    return False
                activity.heartbeat()
                if jitter:
                    # Spread over the jitter, the same offset on every retry.
                    await request_later(
                        self._client,
                        self._task_queue,
                        DelayedOperation(credential_id, kind, trigger, batch.as_of),
                        _offset(credential_id, batch.as_of, jitter),
                    )
                    return True
                try:
                    await request_operation(
                        self._engine,
                        self._client,
                        self._task_queue,
                        OperationRequest(credential_id, kind, trigger),
                    )
                except CredentialNotFound:
                    return False  # deleted since the page was read
                return True

        done = await asyncio.gather(*(one(c) for c in batch.credential_ids))
        failpoints.reach(failpoints.SWEEP_PAGE_REQUESTED)
        return sum(done)

    @implements(steps.request_delayed)
    async def request_delayed(self, delayed: DelayedOperation) -> DelayedOutcome:
        """The delayed operation's moment: request it, unless a change committed since the
        event satisfies it, or wait for the policy's change window."""
        since = datetime.fromisoformat(delayed.since)
        verdict = await in_thread(self._engine, lambda db: delayed_verdict(db, delayed, since))
        if isinstance(verdict, DelayedOutcome):
            return verdict
        try:
            requested = await request_operation(
                self._engine,
                self._client,
                self._task_queue,
                OperationRequest(delayed.credential_id, delayed.kind, delayed.trigger),
            )
        except CredentialNotFound:
            return DelayedOutcome("dropped: the credential no longer exists")
        joined = " (joined the one in flight)" if requested.joined else ""
        return DelayedOutcome(f"requested operation {requested.operation_id}{joined}")

    @implements(steps.schedule_jit_removal)
    async def schedule_jit_removal(self, removal: JitRemoval) -> str:
        """A delayed jit-remove at the account's ``jit_until`` (set by the commit): Temporal
        holds the start delay, so a worker down at that moment removes it when it is back. If
        one is already waiting for the credential (an earlier account removed early), it stands
        and, when it fires, waits on for the later end (triggers/delayed.py)."""
        until = await in_thread(self._engine, lambda db: jit_until(db, removal.operation_id))
        if until is None:
            return ""  # removed already (a jit-remove ran in between): nothing to schedule
        credential_id, end = until
        return await request_later(
            self._client,
            self._task_queue,
            DelayedOperation(credential_id, "jit-remove", "expiry", end.isoformat()),
            end - datetime.now(UTC),
        )


def _offset(credential_id: str, as_of: str, jitter: int) -> timedelta:
    digest = hashlib.sha256(f"{credential_id}/{as_of}".encode()).digest()
    return timedelta(seconds=int.from_bytes(digest[:8]) % (jitter * 1000) / 1000)
