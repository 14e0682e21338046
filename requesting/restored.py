"""On start, a verify for every credential ``keyturn restore`` flagged (store/restored.py).

The verify also tries the pending secret of the operation that was in flight at backup time:
if that operation had reached the target, the target has that secret, not the current one, and
the verify adopts it. Each flag is cleared before its verify is requested (a second process
starting at the same time skips it) and set again if the request fails, so the next start tries
again.
"""

from __future__ import annotations

import logging
from functools import partial

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio.client import Client

from requesting.chosen import SecretChoice
from requesting.errors import RequestFailed
from requesting.operations import (
    OperationRequest,
    Requested,
    request_operation,
    request_with_chosen_secret,
)
from store.engine import in_thread
from store.models import Credential, Operation, SecretState, SecretVersion
from store.restored import RESTORED_IN_FLIGHT

TRIGGER = "restore"
log = logging.getLogger("keyturn.restore")


async def request_verifies_after_restore(
    engine: Engine, client: Client, task_queue: str
) -> list[Requested]:
    requested = []
    for credential_id in await in_thread(engine, _flagged):
        one = await _request_verify(engine, client, task_queue, credential_id)
        if one is not None:
            requested.append(one)
    return requested


async def _request_verify(
    engine: Engine, client: Client, task_queue: str, credential_id: str
) -> Requested | None:
    if not await in_thread(engine, partial(_take_flag, credential_id=credential_id, value=False)):
        return None  # another process starting took it
    candidate = await in_thread(engine, partial(_candidate, credential_id=credential_id))
    try:
        if candidate is None:
            request = OperationRequest(credential_id, "verify", TRIGGER)
            return await request_operation(engine, client, task_queue, request)
        credential = await in_thread(engine, partial(_get, credential_id=credential_id))
        request = OperationRequest(
            credential_id, "verify", TRIGGER, SecretChoice(version_id=candidate)
        )
        return await request_with_chosen_secret(
            engine, client, task_queue, credential, request, None
        )
    except RequestFailed as exc:
        await in_thread(engine, partial(_take_flag, credential_id=credential_id, value=True))
        log.warning("verify after restore of %s not requested: %s", credential_id, exc)
        return None


def _get(db: Session, credential_id: str) -> Credential:
    credential = db.get(Credential, credential_id)
    assert credential is not None  # credentials are never deleted
    return credential


def _flagged(db: Session) -> list[str]:
    return list(db.exec(select(Credential.id).where(col(Credential.needs_verify).is_(True))))


def _take_flag(db: Session, credential_id: str, value: bool) -> bool:
    """Set ``needs_verify`` to ``value`` if it is not already: whether this call moved it."""
    moved = db.execute(
        update(Credential)
        .where(col(Credential.id) == credential_id, col(Credential.needs_verify).is_(not value))
        .values(needs_verify=value)
    )
    db.commit()
    return bool(moved.rowcount)  # type: ignore[attr-defined]


def _candidate(db: Session, credential_id: str) -> str | None:
    """The pending secret the interrupted operation left, if it is still pending."""
    interrupted = db.exec(
        select(Operation)
        .where(
            Operation.credential_id == credential_id,
            Operation.error_type == RESTORED_IN_FLIGHT,
            col(Operation.pending_version_id).is_not(None),
        )
        .order_by(col(Operation.created_at).desc())
    ).first()
    if interrupted is None or interrupted.pending_version_id is None:
        return None
    version = db.get(SecretVersion, interrupted.pending_version_id)
    return version.id if version is not None and version.state == SecretState.PENDING else None
