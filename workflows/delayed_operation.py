"""An operation asked for later (a view, a session's end, an expiry spread by jitter).

Started with a start delay and a fixed id per credential and kind (triggers/delayed.py), so it
costs the server nothing but its start while it waits, more requests meanwhile are absorbed, and
it holds no gate: an operation requested in between runs at once, and a change committed in
between satisfies it. Outside the policy's change window it sleeps until the window opens.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows import steps
    from workflows.contracts import DELAYED_OPERATION_WORKFLOW, DelayedOperation

REQUEST_TIMEOUT = timedelta(seconds=60)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))


@workflow.defn(name=DELAYED_OPERATION_WORKFLOW)
class DelayedOperationWorkflow:
    @workflow.run
    async def run(self, delayed: DelayedOperation) -> str:
        while True:
            outcome = await workflow.execute_activity(
                steps.request_delayed,
                delayed,
                start_to_close_timeout=REQUEST_TIMEOUT,
                retry_policy=RETRY,
            )
            if outcome.retry_in_seconds is None:
                return outcome.outcome
            await workflow.sleep(timedelta(seconds=outcome.retry_in_seconds))
