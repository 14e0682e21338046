"""Audit trail: every step writes an event to the store and to the ``keyturn.audit`` logger.

Details carry ids and outcomes only; a SIEM handler attached to the logger receives the same.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlmodel import Session, select

from store.models import AuditEvent

log = logging.getLogger("keyturn.audit")
# A read of a secret (GET /v1/credentials/{id}/secret): what a change after a view answers.
VIEWED = "secret.viewed"


def record(
    session: Session,
    event: str,
    *,
    operation_id: str | None = None,
    credential_id: str | None = None,
    **detail: Any,
) -> None:
    session.add(
        AuditEvent(
            event=event, operation_id=operation_id, credential_id=credential_id, detail=detail
        )
    )
    log.info(
        "%s operation=%s credential=%s %s",
        event,
        operation_id,
        credential_id,
        " ".join(f"{k}={v}" for k, v in detail.items()),
    )


def record_once(session: Session, event: str, *, operation_id: str, **detail: Any) -> None:
    """Record ``event`` for an operation unless it already has one (a retried step)."""
    found = session.exec(
        select(AuditEvent.id).where(
            AuditEvent.event == event, AuditEvent.operation_id == operation_id
        )
    ).first()
    if found is None:
        credential_id = detail.pop("credential_id", None)
        record(session, event, operation_id=operation_id, credential_id=credential_id, **detail)
