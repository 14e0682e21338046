"""Per-key write locks that work alike on SQLite and PostgreSQL: a step that must be atomic per
credential or per device updates that key's lock row first, which takes the database's write
lock (SQLite) or the row's lock (PostgreSQL) until the transaction ends.

On PostgreSQL two transactions that take two of these locks in opposite orders can deadlock
(one is aborted after a second). A transaction that takes several takes them in this order:
a credential's gate, the audit trail's head (every audit event appends under it), a device's
slots, an account's lockout row. An operation's begin step registers at the gate, records,
and claims a slot; a verified change records its commit, then gives its slot back."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import inspect, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from store.models import CredentialGate, DeviceSlotGate

_Lock = TypeVar("_Lock", CredentialGate, DeviceSlotGate)


def lock_row(session: Session, model: type[_Lock], key: str) -> _Lock:
    """Bump ``key``'s ``seq`` (creating its row the first time) and return the row, read under
    the lock."""
    key_column = inspect(model).primary_key[0]
    for _ in range(3):  # the first step on a key may race another to create its row
        bumped = session.execute(
            update(model).where(key_column == key).values(seq=col(model.seq) + 1)
        )
        if bumped.rowcount:  # type: ignore[attr-defined]
            # Read after the lock, and fresh even if this session holds the row already: one
            # statement (get-then-refresh was two).
            return session.exec(
                select(model).where(key_column == key).execution_options(populate_existing=True)
            ).one()
        try:
            with session.begin_nested():
                created = model.model_validate({key_column.key: key, "seq": 1})
                session.add(created)
            return created
        except IntegrityError:
            continue
    raise RuntimeError(f"could not lock {model.__name__} {key}")
