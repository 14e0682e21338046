"""A device's concurrency slots: at most ``capacity`` operations act on a device at once, the
others wait their turn in the order they were requested.

A claim is granted in the transaction that makes it when a slot is free, so an operation on a
device with room (the usual case) takes its slot in one store step, with no signal and no other
workflow involved. Otherwise it waits; giving a slot back hands it to the first waiter in the
same transaction, and the one who gave it back signals that waiter's workflow (``slot_granted``).
Every step takes the device's lock row first, so claims and releases are serialised per device.

A release that is retried (its first try committed, its answer was lost) answers the claims the
first try handed slots to, so no waiter is left unsignalled. A holder whose workflow ended without
giving its slot back (terminated from the Web UI) is found by the waiters, who ask now and then
whether every holder still runs (``drop``): never by age, so a holder waiting out a lockout
window keeps its slot.
"""

from __future__ import annotations

from sqlalchemy import bindparam, delete, insert, update
from sqlalchemy.orm.util import identity_key
from sqlmodel import Session, col, func, select

from store.models import DeviceSlotClaim, DeviceSlotGate
from store.row_locks import lock_row
from workflows.contracts import SlotRequest

# Statements on the table, made once: every operation claims and gives back a slot, and an ORM
# statement built per call cost several times as much. Parameters are named apart from the
# columns (an insert's or update's own columns are its parameters).
_CLAIMS = DeviceSlotClaim.__table__  # type: ignore[attr-defined]
_HELD = select(_CLAIMS.c.held).where(_CLAIMS.c.token == bindparam("of_token"))
_COUNTS = (
    select(_CLAIMS.c.held, func.count())
    .where(_CLAIMS.c.device_id == bindparam("on_device"))
    .group_by(_CLAIMS.c.held)
)
_ADD = insert(_CLAIMS)
_GIVE_BACK = delete(_CLAIMS).where(_CLAIMS.c.token == bindparam("of_token"))


def claim(session: Session, request: SlotRequest) -> tuple[bool, list[DeviceSlotClaim]]:
    """Claim a slot (idempotent per token): whether it is held now, and the other waiting claims
    this step handed a slot to (the device's cap was raised, say), whose workflows to tell."""
    capacity = lock_row(session, DeviceSlotGate, request.device_id).capacity
    if request.capacity > 0 and capacity != request.capacity:
        capacity = request.capacity  # the device's cap as the newest claim read it
        session.execute(
            update(DeviceSlotGate)
            .where(col(DeviceSlotGate.device_id) == request.device_id)
            .values(capacity=capacity)
        )
    held_before = session.execute(_HELD, {"of_token": request.token}).scalar_one_or_none()
    if held_before is None:  # a new claim, not a retried step's
        held, waiting = _counts(session, request.device_id)
        # Nobody waits and a slot is free (the usual case): held at once, nothing more to read.
        free = not waiting and held < capacity
        session.execute(
            _ADD,
            {
                "token": request.token,
                "device_id": request.device_id,
                "order_key": request.order_key,
                "workflow_id": request.holder.workflow_id,
                "run_id": request.holder.run_id,
                "held": free,
            },
        )
        if free or held >= capacity:
            return free, []
        held_before = False
    handed = _hand_out(session, request.device_id, capacity, by=None)
    mine_handed = any(c.token == request.token for c in handed)
    return bool(held_before) or mine_handed, [c for c in handed if c.token != request.token]


def release(session: Session, device_id: str, token: str) -> list[DeviceSlotClaim] | None:
    """Give a claim back, held or waiting: the claims handed a slot by it, whose workflows to
    tell; None when the store never had this claim (an earlier release's semaphore did)."""
    capacity = lock_row(session, DeviceSlotGate, device_id).capacity
    # One statement (giving back is on every operation's path; reading the claim first was
    # two). A claim the session holds is let go, so no flush can write it back (lock_row has
    # flushed: it has no changes to lose).
    stale = session.identity_map.get(identity_key(DeviceSlotClaim, token))
    if stale is not None:
        session.expunge(stale)
    given_back = session.execute(_GIVE_BACK, {"of_token": token})
    if not given_back.rowcount:  # type: ignore[attr-defined]
        # Given back already: answer again what that release handed out (a lost answer).
        handed = list(
            session.exec(
                select(DeviceSlotClaim).where(col(DeviceSlotClaim.handed_over_by) == token)
            )
        )
        return handed or None
    return _hand_out(session, device_id, capacity, by=token)


def holders(session: Session, device_id: str) -> list[DeviceSlotClaim]:
    return list(
        session.exec(
            select(DeviceSlotClaim).where(
                DeviceSlotClaim.device_id == device_id, col(DeviceSlotClaim.held)
            )
        )
    )


def drop(session: Session, device_id: str, tokens: list[str]) -> list[DeviceSlotClaim]:
    """Free the slots of holders whose workflows have ended; the claims handed them."""
    capacity = lock_row(session, DeviceSlotGate, device_id).capacity
    for token in tokens:
        ended = session.get(DeviceSlotClaim, token)
        if ended is not None:
            session.delete(ended)
    session.flush()
    return _hand_out(session, device_id, capacity, by=None)


def _counts(session: Session, device_id: str) -> tuple[int, int]:
    """How many of the device's claims hold a slot, and how many wait: one statement."""
    counts = {
        bool(held): count for held, count in session.execute(_COUNTS, {"on_device": device_id})
    }
    return counts.get(True, 0), counts.get(False, 0)


def _hand_out(
    session: Session, device_id: str, capacity: int, by: str | None
) -> list[DeviceSlotClaim]:
    """Grant free slots to the first waiters, in request order (under the device's lock)."""
    held, waiting = _counts(session, device_id)
    free = min(capacity - held, waiting)
    if free <= 0:
        return []
    first = list(
        session.exec(
            select(DeviceSlotClaim)
            .where(DeviceSlotClaim.device_id == device_id, col(DeviceSlotClaim.held).is_(False))
            .order_by(col(DeviceSlotClaim.order_key), col(DeviceSlotClaim.token))
            .limit(free)
        )
    )
    for waiter in first:
        waiter.held = True
        waiter.handed_over_by = by
        session.add(waiter)
    return first
