"""The callback delivery activity: POST an operation's outcome to its callback URL, signed.

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
from store import audit
from store.engine import session_scope
from store.models import Operation
from workflows import steps
from workflows.contracts import CallbackInput
from workflows.steps import implements

ATTEMPT_TIMEOUT_SECONDS = 10.0


class CallbackActivities:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    @implements(steps.deliver_callback)
    async def deliver_callback(self, request: CallbackInput) -> None:
        operation = await asyncio.to_thread(self._operation, request.operation_id)
        if operation is None or operation.callback_url is None:
            return  # nothing to tell, or no one to tell it to
        key = self._settings.webhook_key
        refused = webhooks.refusal(operation.callback_url, self._settings.webhook_allow_http)
        if key is None or refused is not None:
            raise ApplicationError(
                refused or "KEYTURN_WEBHOOK_SECRET is not set on this worker",
                type="CallbackRefused",
                non_retryable=True,
            )
        message_id = webhooks.message_id(operation.id)
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
                    operation.callback_url,
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
            self._delivered, operation.id, activity.info().attempt, response.status_code
        )

    def _operation(self, operation_id: str) -> Operation | None:
        with session_scope(self._engine) as session:
            return session.get(Operation, operation_id)

    def _delivered(self, operation_id: str, attempt: int, status: int) -> None:
        with session_scope(self._engine) as session:
            audit.record(
                session, "callback.delivered", operation_id=operation_id, attempt=attempt,
                status=status,
            )  # fmt: skip
