"""Activities of a device's slots (store/device_slots.py), local activities of the workflows
that act on a device: claim a slot, give it back, and, for a waiter now and then, check that
every holder's workflow still runs.

Operations started by earlier releases took their slots from the device's semaphore workflow
(workflows/device_slots.py): a slot the store never had is given back there.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.slot_grants import give_back, tell_granted
from keyturn.temporal import workflow_running
from store import device_slots
from store.engine import session_scope
from store.models import DeviceSlotClaim
from workflows import steps
from workflows.contracts import (
    SlotClaim,
    SlotRelease,
    SlotRequest,
    WorkflowRef,
    device_slots_workflow_id,
)
from workflows.steps import implements


class DeviceSlotActivities:
    def __init__(
        self,
        engine: Engine,
        client: Client,
        check_interval: timedelta,
    ) -> None:
        self._engine = engine
        self._client = client
        # Answered with every claim: the waiter's workflow checks this often (the settings'
        # slot_holder_check_seconds), so a changed setting needs no change to workflow code.
        self._check_after = int(check_interval.total_seconds())

    def answer(self, held: bool) -> SlotClaim:
        """A claim's answer: held now, or wait and check this often."""
        return SlotClaim(held, self._check_after)

    @implements(steps.request_device_slot)
    async def request_device_slot(self, request: SlotRequest) -> SlotClaim:
        held, handed = await asyncio.to_thread(self._claim, request, [])
        await tell_granted(self._client, self._engine, request.device_id, handed)
        return self.answer(held)

    @implements(steps.release_device_slot)
    async def release_device_slot(self, release: SlotRelease) -> None:
        handed = await asyncio.to_thread(give_back, self._engine, release.device_id, release.token)
        if handed is None:
            await self._release_at_semaphore(release)
            return
        await tell_granted(self._client, self._engine, release.device_id, handed)

    @implements(steps.check_device_slots)
    async def check_device_slots(self, request: SlotRequest) -> SlotClaim:
        held = await asyncio.to_thread(self._holders, request.device_id)
        alive = await self.workflows_running([WorkflowRef(h.workflow_id, h.run_id) for h in held])
        ended = [h.token for h, running in zip(held, alive, strict=True) if not running]
        # The cap the request read when it was made may be stale by now: keep the device's.
        unchanged = dataclasses.replace(request, capacity=0)
        mine, handed = await asyncio.to_thread(self._claim, unchanged, ended)
        await tell_granted(self._client, self._engine, request.device_id, handed)
        return self.answer(mine)

    @implements(steps.workflows_running)
    async def workflows_running(self, refs: list[WorkflowRef]) -> list[bool]:
        """Whether each workflow run still runs: a waiter's check asks it of the holders (and
        the semaphore workflow of earlier releases of its own)."""
        return list(
            await asyncio.gather(
                *(workflow_running(self._client, r.workflow_id, r.run_id) for r in refs)
            )
        )

    def _claim(self, request: SlotRequest, ended: list[str]) -> tuple[bool, list[DeviceSlotClaim]]:
        with session_scope(self._engine) as session:
            handed = device_slots.drop(session, request.device_id, ended) if ended else []
            held, more = device_slots.claim(session, request)
            return held, [c for c in handed if c.token != request.token] + more

    def _holders(self, device_id: str) -> list[DeviceSlotClaim]:
        with session_scope(self._engine) as session:
            return device_slots.holders(session, device_id)

    async def _release_at_semaphore(self, release: SlotRelease) -> None:
        handle = self._client.get_workflow_handle(device_slots_workflow_id(release.device_id))
        try:
            await handle.signal("release", release)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            # Not running: no semaphore holds it (or it was given back already).
