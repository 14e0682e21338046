"""A workflow's side of its devices' slots (store/device_slots.py): claim one, wait for its grant
when none is free, give it back.

Shared by every workflow that acts on a device (operations, task targets, certificate
publishes), so they all take turns the same way. Waiting costs no history but a rare check:
whoever gives a slot back signals the waiter it hands it to (from the activity, so the giver's
history records nothing of it), and only every ``check_after_seconds`` does a waiter ask the
store whether a holder's workflow ended without giving its slot back.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Protocol, TypeVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows import steps
    from workflows.contracts import SlotClaim, SlotRelease, SlotRequest

_P = TypeVar("_P")
_R = TypeVar("_R")


class LocalCall(Protocol):
    """How the workflow runs a store step (a local activity, with its own options)."""

    def __call__(self, activity: Callable[[_P], Awaitable[_R]], arg: _P, /) -> Awaitable[_R]: ...


def _nothing() -> None:
    pass


class SlotHolder:
    def __init__(self, call: LocalCall) -> None:
        self._call = call
        self._granted: set[str] = set()

    def granted(self, token: str) -> None:
        """The workflow's ``slot_granted`` signal: the claim ``token`` holds a slot now."""
        self._granted.add(token)

    async def take(self, request: SlotRequest, waiting: Callable[[], None] = _nothing) -> bool:
        """Return once ``request`` holds one of its device's slots; ``waiting`` is called first
        if it must wait for one. True when the slot is a claim in the store (False: the device's
        semaphore workflow granted it, in a history of an earlier release)."""
        claim = await self.claim(request)
        await self.wait(request, claim, waiting)
        return claim is not None

    async def claim(self, request: SlotRequest) -> SlotClaim | None:
        """Ask for the slot (``take``'s first half: whatever follows must give it back)."""
        return await self._call(steps.request_device_slot, request)

    async def wait(
        self,
        request: SlotRequest,
        claim: SlotClaim | None,
        waiting: Callable[[], None] = _nothing,
    ) -> None:
        """Wait until the claim holds its slot (``take``'s second half)."""
        token = request.token
        if claim is None:
            # Recorded by an earlier release: the device's semaphore workflow signals the grant.
            if token not in self._granted:
                waiting()
                await workflow.wait_condition(lambda: token in self._granted)
            return
        if claim.held or token in self._granted:
            return
        waiting()
        while not claim.held and token not in self._granted:
            try:
                await workflow.wait_condition(
                    lambda: token in self._granted,
                    timeout=timedelta(seconds=claim.check_after_seconds),
                )
            except builtins.TimeoutError:
                claim = await self._call(steps.check_device_slots, request)

    def given_back(self, token: str) -> None:
        """A step gave the claim back itself (a change that verified)."""
        self._granted.discard(token)

    async def give_back(self, device_id: str, token: str) -> None:
        """Give the claim back, held or still waiting (its step tells whoever it hands the slot
        to)."""
        self._granted.discard(token)
        await self._call(steps.release_device_slot, SlotRelease(device_id, token))
