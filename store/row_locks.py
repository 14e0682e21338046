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
from typing import Any

from sqlalchemy import Row, bindparam, insert, inspect, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Insert, Update
from sqlmodel import Session, SQLModel


def lock_row(session: Session, model: type[SQLModel], key: str) -> Row[Any]:
    """Bump ``key``'s ``seq`` (creating its row the first time) and return the row's values,
    read under the lock, in one statement: the bump answers them."""
    bump, create = _statements(model)
    session.flush()  # pending writes first, as an ORM statement would (audit.record does too)
    for _ in range(3):  # the first step on a key may race another to create its row
        row = session.execute(bump, {"key": key}).first()
        if row is not None:
            return row
        try:
            with session.begin_nested():
                return session.execute(create, {"key": key}).one()
        except IntegrityError:
            continue
    raise RuntimeError(f"could not lock {model.__name__} {key}")


@functools.cache
def _statements(model: type[SQLModel]) -> tuple[Update, Insert]:
    """The bump and the first row's insert, each returning the row (PostgreSQL and SQLite both
    can), made once per model: a lock is on every step's path. Statements on the table, not the
    ORM: an ORM bump answering the row cost three times as much. So no ORM object of a lock row
    is ever loaded, and none can be stale."""
    table = model.__table__  # type: ignore[attr-defined]
    key_column = inspect(model).primary_key[0]
    bump = (
        update(table)
        .where(table.c[key_column.key] == bindparam("key"))
        .values(seq=table.c.seq + 1)
        .returning(*table.c)
    )
    create = insert(table).values({key_column.key: bindparam("key"), "seq": 1}).returning(*table.c)
    return bump, create
