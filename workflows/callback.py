"""Telling the requesting modules an operation's outcome: one signed POST per callback URL
registered on it (the request that started it and every one that joined), retried by Temporal.

The operation workflow starts this one as an abandoned child when it ends, so the operation is
over (its gate left, its workflow id free for the next request) while each delivery is retried,
with backoff, until its receiver answers 2xx or the time limit passes. The webhook-id is the
operation's and the URL's position on its list, so every attempt carries the same one.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows import steps
    from workflows.contracts import CALLBACK_WORKFLOW, CallbackInput

# Retries back off from a second to ten minutes, for up to a day.
DELIVERY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
    non_retryable_error_types=["CallbackRefused"],
)
DELIVERY_DEADLINE = timedelta(days=1)
ATTEMPT_TIMEOUT = timedelta(seconds=30)


@workflow.defn(name=CALLBACK_WORKFLOW)
class CallbackWorkflow:
    @workflow.run
    async def run(self, request: CallbackInput) -> None:
        if not request.receivers:  # started by an older release: its one delivery
            await self._deliver(request)
            return
        # One delivery per URL, each retried on its own: a failing receiver delays no other.
        deliveries = [
            self._deliver(dataclasses.replace(request, position=position))
            for position in range(1, request.receivers + 1)
        ]
        outcomes = await asyncio.gather(*deliveries, return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise failed[0]

    async def _deliver(self, request: CallbackInput) -> None:
        await workflow.execute_activity(
            steps.deliver_callback,
            request,
            start_to_close_timeout=ATTEMPT_TIMEOUT,
            schedule_to_close_timeout=DELIVERY_DEADLINE,
            retry_policy=DELIVERY_RETRY,
        )
