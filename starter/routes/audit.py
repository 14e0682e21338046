"""The audit trail, read in order: ``GET /v1/audit`` with filters and a cursor."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy import or_
from sqlmodel import col, select

from starter.authz import AUDITOR, Caller, allow
from starter.deps import DB, StoreRoute
from starter.problems import invalid
from starter.schemas import AuditEventOut, AuditPage
from store.models import AuditEvent, Credential, Device, as_utc

router = APIRouter(route_class=StoreRoute)


@router.get(
    "/audit",
    response_model=AuditPage,
    responses={422: {"description": "a filter or the cursor is not valid"}},
)
def read_audit(
    db: DB,
    caller: Annotated[Caller, Depends(allow(AUDITOR))],
    credential_id: str | None = None,
    operation_id: str | None = None,
    event: str | None = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> AuditPage:
    """Events oldest first. ``cursor`` (from ``next_cursor``) continues after the last page.
    A principal scoped to profiles reads the events of their devices and credentials only."""
    after = 0
    if cursor is not None:
        if not cursor.isdigit():
            raise invalid("cursor", "pass the next_cursor of a previous page unchanged")
        after = int(cursor)
    query = select(AuditEvent).where(col(AuditEvent.id) > after)
    if caller.profiles is not None:
        devices = select(Device.id).where(caller.sees_rows(Device.profile))
        credentials = select(Credential.id).where(caller.sees_rows(Credential.profile))
        query = query.where(
            or_(
                col(AuditEvent.device_id).in_(devices),
                col(AuditEvent.credential_id).in_(credentials),
            )
        )
    if credential_id is not None:
        query = query.where(AuditEvent.credential_id == credential_id)
    if operation_id is not None:
        query = query.where(AuditEvent.operation_id == operation_id)
    if event is not None:
        query = query.where(AuditEvent.event == event)
    if since is not None:
        # A time without a zone is UTC, as the store's are.
        query = query.where(col(AuditEvent.at) >= as_utc(since))
    rows = db.exec(query.order_by(col(AuditEvent.id)).limit(limit)).all()
    events = [AuditEventOut.model_validate(row, from_attributes=True) for row in rows]
    last = events[-1].id if events else after
    return AuditPage(items=events, next_cursor=str(last))
