"""A device's slots as claims in the store, on SQLite and PostgreSQL: granted at once while one
is free, otherwise handed over in request order by whoever gives one back."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.engine import Engine
from sqlmodel import select

from store import device_slots
from store.engine import session_scope
from store.models import DeviceSlotClaim
from workflows.contracts import SlotRequest, WorkflowRef


def _request(device_id: str, order: int, capacity: int = 2) -> SlotRequest:
    token = f"op{order}-{secrets.token_hex(3)}/1"
    return SlotRequest(
        device_id, token, WorkflowRef(f"wf-{token}", "run"), capacity, f"{order:04d}"
    )


def _claim(engine: Engine, request: SlotRequest) -> tuple[bool, list[str]]:
    with session_scope(engine) as session:
        held, handed = device_slots.claim(session, request)
        return held, [c.token for c in handed]


def _release(engine: Engine, device_id: str, token: str) -> list[str] | None:
    with session_scope(engine) as session:
        handed = device_slots.release(session, device_id, token)
        return None if handed is None else [c.token for c in handed]


def test_concurrent_claims_hold_no_more_than_the_cap(engine: Engine) -> None:
    device = secrets.token_hex(4)
    requests = [_request(device, i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda r: _claim(engine, r), requests))
    assert sum(held for held, _ in answers) == 2
    with session_scope(engine) as session:
        assert len(device_slots.holders(session, device)) == 2
    # Claiming again (a retried step) answers the same and adds nothing.
    assert [_claim(engine, r)[0] for r in requests] == [held for held, _ in answers]
    with session_scope(engine) as session:
        rows = session.exec(select(DeviceSlotClaim).where(DeviceSlotClaim.device_id == device))
        assert len(list(rows)) == 8


def test_a_release_hands_the_slot_to_the_first_waiter_and_says_so_again(engine: Engine) -> None:
    device = secrets.token_hex(4)
    first, second, third, fourth = (_request(device, i, capacity=1) for i in range(4))
    assert _claim(engine, first) == (True, [])
    # Claimed out of request order: the earlier request still goes first.
    assert _claim(engine, third) == (False, [])
    assert _claim(engine, second) == (False, [])
    assert _claim(engine, fourth) == (False, [])

    assert _release(engine, device, first.token) == [second.token]
    # The same release again (its answer was lost): the same waiter is told again.
    assert _release(engine, device, first.token) == [second.token]
    # A waiter that gives up (canceled) hands nothing over: the slot is still held.
    assert _release(engine, device, third.token) == []
    assert _release(engine, device, second.token) == [fourth.token]
    assert _release(engine, device, fourth.token) == []
    # A claim the store never had (an earlier release's semaphore held it).
    assert _release(engine, device, "never-claimed/1") is None
    with session_scope(engine) as session:
        assert device_slots.holders(session, device) == []


def test_a_raised_cap_hands_out_slots_to_waiters(engine: Engine) -> None:
    device = secrets.token_hex(4)
    holding, waiting = _request(device, 0, capacity=1), _request(device, 1, capacity=1)
    assert _claim(engine, holding)[0] and not _claim(engine, waiting)[0]
    newcomer = _request(device, 2, capacity=3)
    assert _claim(engine, newcomer) == (True, [waiting.token])


def test_the_slot_of_an_ended_holder_goes_to_the_next_waiter(engine: Engine) -> None:
    device = secrets.token_hex(4)
    dead, waiting = _request(device, 0, capacity=1), _request(device, 1, capacity=1)
    assert _claim(engine, dead)[0] and not _claim(engine, waiting)[0]
    with session_scope(engine) as session:
        handed = device_slots.drop(session, device, [dead.token])
        assert [c.token for c in handed] == [waiting.token]
        assert [h.token for h in device_slots.holders(session, device)] == [waiting.token]


def test_a_claim_given_back_in_the_transaction_that_made_it_is_gone(engine: Engine) -> None:
    """Giving back is one DELETE: a claim the session still holds (not yet written, even) is
    written, deleted and not written again at commit."""
    device = secrets.token_hex(4)
    mine = _request(device, 1, capacity=1)
    with session_scope(engine) as session:
        held, _ = device_slots.claim(session, mine)
        assert held
        assert device_slots.release(session, device, mine.token) == []
    with session_scope(engine) as session:
        assert session.get(DeviceSlotClaim, mine.token) is None
    assert _claim(engine, _request(device, 2, capacity=1))[0]  # the slot is free
