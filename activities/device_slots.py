"""Activities that talk to a device's semaphore workflow (workflows/device_slots.py).

Local activities of the operation workflow: a workflow cannot signal-with-start another one
itself, and these calls are short and idempotent (the semaphore ignores a repeated token).
"""

from __future__ import annotations

import asyncio

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from keyturn.temporal import workflow_running
from workflows import steps
from workflows.contracts import (
    DEVICE_SLOTS_WORKFLOW,
    SlotRelease,
    SlotRequest,
    SlotsState,
    WorkflowRef,
    device_slots_workflow_id,
)
from workflows.steps import implements


class DeviceSlotActivities:
    def __init__(self, client: Client, task_queue: str) -> None:
        self._client = client
        self._task_queue = task_queue

    @implements(steps.request_device_slot)
    async def request_device_slot(self, request: SlotRequest) -> None:
        """Queue for a slot, starting the device's semaphore if it is not running."""
        await self._client.start_workflow(
            DEVICE_SLOTS_WORKFLOW,
            SlotsState(request.device_id, max(request.capacity, 1)),
            id=device_slots_workflow_id(request.device_id),
            task_queue=self._task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal="acquire",
            start_signal_args=[request],
        )

    @implements(steps.release_device_slot)
    async def release_device_slot(self, release: SlotRelease) -> None:
        handle = self._client.get_workflow_handle(device_slots_workflow_id(release.device_id))
        try:
            await handle.signal("release", release)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            # Not running: it ended after giving this slot up as its holder's, nothing to free.

    @implements(steps.workflows_running)
    async def workflows_running(self, refs: list[WorkflowRef]) -> list[bool]:
        return list(
            await asyncio.gather(
                *(workflow_running(self._client, r.workflow_id, r.run_id) for r in refs)
            )
        )
