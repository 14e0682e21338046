"""Telling the workflows of device-slot claims that were just handed a slot (store/device_slots.py):
whoever gives a slot back does it, from its activity, so the giver's history records nothing of
it. Used by the slot activities and by a change that gives its slot back as it ends."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from store import device_slots
from store.engine import session_scope
from store.models import DeviceSlotClaim


async def tell_granted(
    client: Client, engine: Engine, device_id: str, handed: list[DeviceSlotClaim]
) -> None:
    """Signal each claim handed a slot. If this fails, the step that gave the slot back is
    retried, and a retried release answers the same claims. A claim whose workflow has ended
    gives its slot back at once, to the next waiter."""
    while handed:
        told = await asyncio.gather(*(_signal(client, claim) for claim in handed))
        ended = [claim.token for claim, ok in zip(handed, told, strict=True) if not ok]
        handed = []
        for token in ended:
            more = await asyncio.to_thread(give_back, engine, device_id, token)
            handed += more or []


def give_back(engine: Engine, device_id: str, token: str) -> list[DeviceSlotClaim] | None:
    """``store.device_slots.release`` in a transaction of its own."""
    with session_scope(engine) as session:
        return device_slots.release(session, device_id, token)


async def _signal(client: Client, claim: DeviceSlotClaim) -> bool:
    handle = client.get_workflow_handle(claim.workflow_id, run_id=claim.run_id)
    try:
        await handle.signal("slot_granted", claim.token)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        return False  # its workflow has ended (terminated)
    return True
