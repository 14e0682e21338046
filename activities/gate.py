"""Activities of the credential gate (store/gate.py): register, leave (with the callback URLs
closed, as an operation ends: depart), and the rare check that the operation ahead still
lives."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from keyturn.temporal import workflow_running
from store import gate
from store.engine import session_scope
from workflows import steps
from workflows.contracts import Admission, Departure, GateCheck, RegisterInput, WorkflowRef
from workflows.steps import implements


class GateActivities:
    def __init__(self, engine: Engine, client: Client) -> None:
        self._engine = engine
        self._client = client

    @implements(steps.register)
    def register(self, request: RegisterInput) -> Admission:
        with never_registrable():
            return gate.admit(self._engine, registration(request))

    @implements(steps.leave_gate)
    def leave_gate(self, check: GateCheck) -> WorkflowRef | None:
        with session_scope(self._engine) as session:
            follower = gate.leave(session, check.operation_id)
            return WorkflowRef(follower.workflow_id, follower.run_id) if follower else None

    @implements(steps.depart)
    def depart(self, check: GateCheck) -> Departure:
        with session_scope(self._engine) as session:
            follower, receivers = gate.depart(session, check.operation_id)
            return Departure(
                WorkflowRef(follower.workflow_id, follower.run_id) if follower else None, receivers
            )

    @implements(steps.check_gate)
    async def check_gate(self, check: GateCheck) -> bool:
        """Has this queued operation's turn come? Only if the one ahead left, or its workflow
        ended without leaving (terminated): then it is recorded as failed and passes the gate on."""
        ahead = await asyncio.to_thread(self._ahead, check.operation_id)
        if ahead is None:
            return True
        if await workflow_running(self._client, ahead.workflow_id, ahead.run_id):
            return False
        return await asyncio.to_thread(self._abandon, check.operation_id, ahead)

    def _ahead(self, operation_id: str) -> WorkflowRef | None:
        with session_scope(self._engine) as session:
            if gate.holds(session, operation_id):
                return None
            ahead = gate.ahead_of(session, operation_id)
            return WorkflowRef(ahead.workflow_id, ahead.run_id) if ahead else None

    def _abandon(self, operation_id: str, ahead: WorkflowRef) -> bool:
        with session_scope(self._engine) as session:
            before = gate.ahead_of(session, operation_id)
            if before is not None and before.run_id == ahead.run_id:
                gate.abandon(session, before.id, "its workflow ended without recording an outcome")
            return gate.holds(session, operation_id)


def registration(request: RegisterInput) -> gate.Registration:
    """The workflow's register input as the gate takes it."""
    return gate.Registration(
        request.operation_id,
        request.credential_id,
        request.kind,
        request.trigger,
        request.workflow_id,
        request.run_id or None,
        request.parent_operation_id,
        request.source_version_id or None,
        request.requested_by,
        ttl_seconds=request.ttl_seconds or None,
    )


@contextlib.contextmanager
def never_registrable() -> Iterator[None]:
    """A request that can never be registered fails its step for good: retrying cannot help."""
    try:
        yield
    except gate.NotRegistrable as exc:
        raise ApplicationError(str(exc), type="NotRegistrable", non_retryable=True) from None
