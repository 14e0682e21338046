"""Where an operation's outcome goes: every requester's callback URL, registered on the operation.

The request that starts an operation and every request that joins it add their URL; the
operation closes its list once its outcome is recorded, and its callback workflow then POSTs to
each URL. Adding and closing both run under the credential's gate lock (``store.gate``, which
calls these), so a URL is either on the list before it closes, and delivered, or refused: the
request then knows the operation has ended and starts a new one. Nothing is lost in between.
"""

from __future__ import annotations

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from store.models import Operation, OperationCallback


def add(session: Session, operation_id: str, url: str) -> bool:
    """Register ``url`` (once: a URL given twice is told once); False if the operation has
    closed its list. The caller holds the credential's gate lock. The operation's row may not
    exist yet: a request can join a workflow before that workflow's first step."""
    operation = session.get(Operation, operation_id)
    if operation is not None and operation.callbacks_closed:
        return False
    registered = urls(session, operation_id)
    if url not in registered:
        session.add(
            OperationCallback(operation_id=operation_id, position=len(registered) + 1, url=url)
        )
    return True


def inherit(session: Session, parent_operation_id: str, operation_id: str) -> None:
    """A chained operation tells its parent's requesters when it ends, too."""
    for url in urls(session, parent_operation_id):
        add(session, operation_id, url)


def close(session: Session, operation: Operation) -> int:
    """Close the operation's list (idempotent); how many URLs are on it. The caller holds the
    credential's gate lock."""
    if not operation.callbacks_closed:
        operation.callbacks_closed = True
        session.add(operation)
    return len(urls(session, operation.id))


def urls(session: Session, operation_id: str) -> list[str]:
    return list(session.exec(_URLS, params={"of_operation": operation_id}).all())


# Made once: every operation reads its list as it ends.
_URLS = (
    select(OperationCallback.url)
    .where(OperationCallback.operation_id == bindparam("of_operation"))
    .order_by(col(OperationCallback.position))
)


def url_at(session: Session, operation_id: str, position: int) -> str | None:
    callback = session.get(OperationCallback, (operation_id, position))
    return callback.url if callback else None
