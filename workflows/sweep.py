"""One run of a policy's expiry or verification schedule (triggers/schedules.py).

Pages through the policy's due credentials, as of the sweep's start, and requests each one's
operation through the one request path (an activity: every request queues at its credential's
gate and every operation takes its device's slots like any other). The store's index does the
finding; this workflow only carries a cursor, so it continues as new with that cursor before
its history grows large, and a restart resumes from the last page recorded.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows import steps
    from workflows.contracts import SWEEP_WORKFLOW, DueQuery, DueRequests, SweepInput

# Well under Temporal's own limits: a page costs a handful of events.
MAX_HISTORY_EVENTS = 2_000
PAGE_TIMEOUT = timedelta(seconds=30)
# Requests of a page heartbeat as they go: a worker lost mid-page is noticed after this long and
# the page is requested again (what was done meanwhile is skipped or joined).
REQUESTS_HEARTBEAT = timedelta(seconds=10)
REQUESTS_TIMEOUT = timedelta(minutes=10)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))


@workflow.defn(name=SWEEP_WORKFLOW)
class SweepWorkflow:
    def __init__(self) -> None:
        self._requested = 0
        self._cursor = ""

    @workflow.query
    def progress(self) -> dict[str, str | int]:
        return {"requested": self._requested, "cursor": self._cursor}

    @workflow.run
    async def run(self, sweep: SweepInput) -> str:
        as_of = sweep.as_of or workflow.now().isoformat()
        self._cursor = sweep.cursor
        self._requested = sweep.requested
        while True:
            page = await workflow.execute_local_activity(
                steps.due_page,
                DueQuery(sweep.policy_id, sweep.purpose, as_of, self._cursor, sweep.page_size),
                start_to_close_timeout=PAGE_TIMEOUT,
                retry_policy=RETRY,
            )
            if page.stop:
                return f"stopped: {page.stop}; {self._requested} requested"
            if page.credential_ids:
                self._requested += await workflow.execute_activity(
                    steps.request_due,
                    DueRequests(sweep.policy_id, sweep.purpose, as_of, page.credential_ids),
                    start_to_close_timeout=REQUESTS_TIMEOUT,
                    heartbeat_timeout=REQUESTS_HEARTBEAT,
                    retry_policy=RETRY,
                )
            if not page.cursor:
                return f"{self._requested} requested"
            self._cursor = page.cursor
            info = workflow.info()
            if (
                info.is_continue_as_new_suggested()
                or info.get_current_history_length() > MAX_HISTORY_EVENTS
            ):
                workflow.continue_as_new(
                    SweepInput(
                        sweep.policy_id,
                        sweep.purpose,
                        sweep.page_size,
                        as_of,
                        self._cursor,
                        self._requested,
                    )
                )
