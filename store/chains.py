"""Chained credentials: the operations a parent's committed change (or a verify that found drift)
starts. Read by the commit in its own transaction, and by the plan_children step that histories
of earlier releases still ask."""

from __future__ import annotations

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from store import callbacks
from store.models import Credential, Operation, new_id
from store.queries import get_or_raise
from workflows.contracts import (
    OPERATION_REVISION,
    ChildStart,
    OperationInput,
    operation_workflow_id,
)


def children_of(session: Session, parent: Operation, reason: str) -> list[ChildStart]:
    """The chained operations to start (ABANDON). Each registers its own row when it starts, so
    a child that could not start leaves no row behind."""
    if reason == "reconcile":
        targets = [(get_or_raise(session, Credential, parent.on_credential), "reconcile")]
    else:
        children = session.exec(_CHILDREN, params={"of_parent": parent.credential_id}).all()
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
                revision=OPERATION_REVISION,
            ),
            operation_workflow_id(kind, credential.id),
        )
        for credential, kind in targets
    ]


# Made once: every commit asks for the credential's children (most have none).
_CHILDREN = (
    select(Credential)
    .where(Credential.parent_id == bindparam("of_parent"))
    .order_by(col(Credential.created_at))
)
