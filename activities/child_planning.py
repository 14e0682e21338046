"""Activities that chain operations: which children a committed change starts, and a child that
joined an operation already running."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from store import audit, callbacks
from store.engine import session_scope
from store.models import (
    Credential,
    Operation,
    OperationStatus,
    new_id,
    utcnow,
)
from store.queries import get_or_raise
from workflows import steps
from workflows.contracts import (
    ChildNotStarted,
    ChildrenRequest,
    ChildStart,
    OperationInput,
    operation_workflow_id,
)
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


def children_of(session: Session, parent: Operation, reason: str) -> list[ChildStart]:
    """The chained operations to start (ABANDON). Each registers its own row when it starts, so
    a child that could not start leaves no row behind."""
    if reason == "reconcile":
        targets = [(get_or_raise(session, Credential, parent.on_credential), "reconcile")]
    else:
        children = session.exec(
            select(Credential)
            .where(Credential.parent_id == parent.credential_id)
            .order_by(col(Credential.created_at))
        ).all()
        targets = [(child, "change") for child in children]
    return [
        ChildStart(
            OperationInput(
                credential_id=credential.id,
                kind=kind,
                trigger="out-of-sync" if kind == "reconcile" else "parent-changed",
                operation_id=new_id(),
                device_id=credential.device_id,
                parent_operation_id=parent.id,
                callback=bool(callbacks.urls(session, parent.id)),
            ),
            operation_workflow_id(kind, credential.id),
        )
        for credential, kind in targets
    ]
