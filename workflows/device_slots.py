"""A device's concurrency slots as earlier releases kept them: one semaphore workflow per device,
FIFO, alive only while some operation holds or waits for a slot.

Slots are claims in the store now (store/device_slots.py, workflows/slot_holder.py): a free slot
is taken in the step that asks for it, with no workflow of the device's and no signal. This
workflow stays registered for the operations earlier releases started, which still ask it and
give back to it; it ends once the last of them has.

Operations ask for a slot with signal-with-start (so the semaphore starts if it is not running,
and a request can never be lost to one that is just finishing: Temporal refuses to complete a
workflow that has unhandled signals) and are granted it by a signal back. Waiting therefore
costs the waiter no timer, no retry and no store polling, whether it lasts seconds or hours.

Chosen over a table of slots polled by the waiters (what came before): the grant order is the
semaphore's own state, a worker crash loses nothing (it is a workflow), and a holder whose
workflow was terminated is detected by asking Temporal, never by age, so a live holder that waits
long (a lockout window) keeps its slot. Its history grows with grants, not with waiting time,
and it continues as new before it grows large.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from workflows import steps
    from workflows.contracts import (
        DEVICE_SLOTS_WORKFLOW,
        SlotRelease,
        SlotRequest,
        SlotsState,
    )

# While operations wait, ask this often whether every holder's workflow still runs.
HOLDER_CHECK_INTERVAL = timedelta(seconds=30)
# Continue as new past this many events (Temporal suggests it much later; grants are cheap).
MAX_HISTORY_EVENTS = 5_000


@workflow.defn(name=DEVICE_SLOTS_WORKFLOW)
class DeviceSlotsWorkflow:
    @workflow.init
    def __init__(self, state: SlotsState) -> None:
        # Here, not in run: the signal that started this workflow is handled before run begins.
        self._capacity = state.capacity
        self._holders: dict[str, SlotRequest] = {h.token: h for h in state.holders}
        self._waiters: list[SlotRequest] = list(state.waiters)
        self._released: set[str] = set()  # tokens given back (or withdrawn) in this run
        self._changed = False

    @workflow.signal
    def acquire(self, request: SlotRequest) -> None:
        if request.capacity > 0:
            self._capacity = request.capacity  # the device's cap as the newest request read it
        if request.token in self._released:
            pass  # released already: its acquire came late, or twice
        elif request.token not in self._holders and all(
            w.token != request.token for w in self._waiters
        ):
            self._waiters.append(request)
            # FIFO by when the operation was requested, not by when its request got here.
            self._waiters.sort(key=lambda w: w.order_key)
        self._changed = True

    @workflow.signal
    def release(self, release: SlotRelease) -> None:
        if self._holders.pop(release.token, None) is None:
            self._waiters = [w for w in self._waiters if w.token != release.token]
        # Remembered for this run: a late or repeated acquire of it must not queue it again.
        self._released.add(release.token)
        self._changed = True

    @workflow.query
    def slots(self) -> dict[str, list[str] | int]:
        return {
            "capacity": self._capacity,
            "holders": list(self._holders),
            "waiters": [w.token for w in self._waiters],
        }

    @workflow.run
    async def run(self, state: SlotsState) -> None:
        next_check: datetime | None = None  # when to ask whether the holders still live
        while True:
            await self._grant()
            if not self._holders and not self._waiters:
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not self._holders and not self._waiters:
                    return  # idle: nothing of this device stays on the server
            if workflow.info().get_current_history_length() > MAX_HISTORY_EVENTS:
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    SlotsState(
                        state.device_id,
                        self._capacity,
                        tuple(self._holders.values()),
                        tuple(self._waiters),
                    )
                )
            self._changed = False
            if not self._waiters:
                next_check = None
                await workflow.wait_condition(lambda: self._changed)
                continue
            # A fixed deadline, so a busy device (signals more often than the interval) still
            # gets its holders checked.
            next_check = next_check or workflow.now() + HOLDER_CHECK_INTERVAL
            remaining = next_check - workflow.now()
            try:
                if remaining <= timedelta(0):
                    raise TimeoutError
                await workflow.wait_condition(lambda: self._changed, timeout=remaining)
            except TimeoutError:
                next_check = None
                await self._drop_dead_holders()

    async def _grant(self) -> None:
        while self._waiters and len(self._holders) < self._capacity:
            granted = []
            while self._waiters and len(self._holders) < self._capacity:
                request = self._waiters.pop(0)
                self._holders[request.token] = request
                granted.append(request)
            results = await asyncio.gather(
                *(
                    workflow.get_external_workflow_handle(
                        r.holder.workflow_id, run_id=r.holder.run_id
                    ).signal("slot_granted", r.token)
                    for r in granted
                ),
                return_exceptions=True,
            )
            for request, result in zip(granted, results, strict=True):
                if isinstance(result, FailureError):
                    # The operation's workflow has ended (terminated): the slot is free again.
                    self._holders.pop(request.token, None)
                elif isinstance(result, BaseException):
                    raise result

    async def _drop_dead_holders(self) -> None:
        holders = list(self._holders.values())
        alive = await workflow.execute_local_activity(
            steps.workflows_running,
            [h.holder for h in holders],
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
        )
        for holder, running in zip(holders, alive, strict=True):
            if not running:
                workflow.logger.warning(
                    "slot %s freed: its operation's workflow %s has ended",
                    holder.token,
                    holder.holder.workflow_id,
                )
                self._holders.pop(holder.token, None)
