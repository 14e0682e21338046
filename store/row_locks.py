"""Per-key write locks that work alike on SQLite and PostgreSQL: a step that must be atomic per
credential or per device updates that key's lock row first, which takes the database's write
lock (SQLite) or the row's lock (PostgreSQL) until the transaction ends.

On PostgreSQL two transactions that take two of these locks in opposite orders can deadlock
(one is aborted after a second). A transaction that takes several takes them in this order:
a credential's gate, the audit trail's head (every audit event appends under it), a device's
slots, an account's lockout row. An operation's begin step registers at the gate, records,
and claims a slot; a verified change records its commit, then gives its slot back."""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from sqlalchemy import bindparam, inspect, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Select, Update
from sqlmodel import Session, select

from store.models import CredentialGate, DeviceSlotGate

_Lock = TypeVar("_Lock", CredentialGate, DeviceSlotGate)


def lock_row(session: Session, model: type[_Lock], key: str) -> _Lock:
    """Bump ``key``'s ``seq`` (creating its row the first time) and return the row, read under
    the lock."""
    bump, read, key_name = _statements(model)
    session.flush()  # pending writes first, as an ORM statement would (audit.record does too)
    for _ in range(3):  # the first step on a key may race another to create its row
        bumped = session.execute(bump, {"key": key})
        if bumped.rowcount:  # type: ignore[attr-defined]
            # Read after the lock, and fresh even if this session holds the row already: one
            # statement (get-then-refresh was two).
            row: _Lock = session.execute(read, {"key": key}).scalar_one()
            return row
        try:
            with session.begin_nested():
                created = model.model_validate({key_name: key, "seq": 1})
                session.add(created)
            return created
        except IntegrityError:
            continue
    raise RuntimeError(f"could not lock {model.__name__} {key}")


@functools.cache
def _statements(model: type[Any]) -> tuple[Update, Select[Any], str]:
    """The bump (on the table: the read that follows refreshes the row, so the ORM has nothing
    to bring up to date), the read, and the key's name, made once per model: a lock is on
    every step's path."""
    key_column = inspect(model).primary_key[0]
    table = model.__table__
    bump = update(table).where(table.c[key_column.key] == bindparam("key"))
    read = select(model).where(key_column == bindparam("key"))
    return (
        bump.values(seq=table.c.seq + 1),
        read.execution_options(populate_existing=True),
        key_column.key,
    )
