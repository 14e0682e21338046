"""Activities that chain operations: which children a committed change starts, and a child that
joined an operation already running."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session

from store import audit
from store.chains import children_of
from store.engine import session_scope
from store.models import Operation, OperationStatus, utcnow
from store.queries import get_or_raise
from workflows import steps
from workflows.contracts import ChildNotStarted, ChildrenRequest, ChildStart
from workflows.steps import implements


class ChildPlanningActivities:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @implements(steps.plan_children)
    def plan_children(self, request: ChildrenRequest) -> list[ChildStart]:
        with Session(self._engine) as session:
            parent = get_or_raise(session, Operation, request.operation_id)
            return children_of(session, parent, request.reason)

    @implements(steps.child_not_started)
    def child_not_started(self, request: ChildNotStarted) -> None:
        """A chained operation joined one of its kind already running on that credential."""
        with session_scope(self._engine) as session:
            operation = session.get(Operation, request.operation_id)
            if operation is not None and operation.status == OperationStatus.SCHEDULED:
                # A row made before registration existed (an operation started by an older
                # Keyturn): it never ran.
                operation.status = OperationStatus.CANCELED
                operation.error_type = "AlreadyRunning"
                operation.error = request.reason
                operation.finished_at = utcnow()
                session.add(operation)
            audit.record(
                session,
                "operation.chain_joined",
                operation_id=request.operation_id,
                reason=request.reason,
            )
