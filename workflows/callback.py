"""Telling the requesting module an operation's outcome: one signed POST, retried by Temporal.

The operation workflow starts this one as an abandoned child when it ends, so the operation is
over (its gate left, its workflow id free for the next request) while the delivery is retried,
with backoff, until the receiver answers 2xx or the time limit passes. The webhook-id is the
operation's, so every attempt carries the same one.
"""

from __future__ import annotations

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
        await workflow.execute_activity(
            steps.deliver_callback,
            request,
            start_to_close_timeout=ATTEMPT_TIMEOUT,
            schedule_to_close_timeout=DELIVERY_DEADLINE,
            retry_policy=DELIVERY_RETRY,
        )
