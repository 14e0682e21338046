"""The callback activities: close an operation's callback URLs as it ends, and POST its outcome,
signed, to one of them.

Temporal retries it (workflows/callback.py); a non-2xx answer or a network error fails this
attempt. The body holds ids and outcomes only, never a secret.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from governance import webhooks
from keyturn.settings import Settings
from store import audit, callbacks, gate
from store.engine import session_scope
from store.models import Operation
from workflows import steps
from workflows.contracts import CallbackInput, GateCheck
from workflows.steps import implements

ATTEMPT_TIMEOUT_SECONDS = 10.0


class CallbackActivities:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    @implements(steps.close_callbacks)
    def close_callbacks(self, check: GateCheck) -> int:
        with session_scope(self._engine) as session:
            return gate.close_callbacks(session, check.operation_id)

    @implements(steps.deliver_callback)
    async def deliver_callback(self, request: CallbackInput) -> None:
        # An older release's delivery (position 0) told the operation's one URL, now the first.
        position = request.position or 1
        found = await asyncio.to_thread(self._operation, request.operation_id, position)
        if found is None:
            return  # nothing to tell, or no one to tell it to
        operation, url = found
        key = self._settings.webhook_key
        refused = webhooks.refusal(url, self._settings.webhook_allow_http)
        if key is None or refused is not None:
            raise ApplicationError(
                refused or "KEYTURN_WEBHOOK_SECRET is not set on this worker",
                type="CallbackRefused",
                non_retryable=True,
            )
        message_id = webhooks.message_id(operation.id, request.position)
        finished = operation.finished_at or operation.created_at
        content = webhooks.body(
            finished.isoformat(),
            {
                "operation_id": operation.id,
                "credential_id": operation.credential_id,
                "parent_operation_id": operation.parent_operation_id,
                "kind": operation.kind,
                "trigger": operation.trigger,
                "status": str(operation.status),
                "resolution": operation.resolution,
                "error_type": operation.error_type,
            },
        )
        timestamp = int(time.time())
        async with httpx.AsyncClient(timeout=ATTEMPT_TIMEOUT_SECONDS) as http:
            try:
                response = await http.post(
                    url,
                    content=content,
                    headers=webhooks.headers(key, message_id, timestamp, content),
                )
            except httpx.HTTPError as exc:
                raise ApplicationError(
                    f"callback not delivered: {type(exc).__name__}", type="CallbackFailed"
                ) from None
        if not response.is_success:
            raise ApplicationError(
                f"the callback receiver answered {response.status_code}", type="CallbackFailed"
            )
        await asyncio.to_thread(
            self._delivered, operation.id, position, activity.info().attempt, response.status_code
        )

    def _operation(self, operation_id: str, position: int) -> tuple[Operation, str] | None:
        with session_scope(self._engine) as session:
            operation = session.get(Operation, operation_id)
            url = callbacks.url_at(session, operation_id, position)
            return (operation, url) if operation is not None and url is not None else None

    def _delivered(self, operation_id: str, position: int, attempt: int, status: int) -> None:
        with session_scope(self._engine) as session:
            audit.record(
                session, "callback.delivered", operation_id=operation_id, receiver=position,
                attempt=attempt, status=status,
            )  # fmt: skip
