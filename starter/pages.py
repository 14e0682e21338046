"""One way to page through a list: ``?limit=&cursor=`` in, ``{"items", "next_cursor"}`` out.

Pages are keyset pages: the cursor holds the sort key of the last item shown, and the next page
starts after it. Offsets would skip or repeat items when rows are added between two pages, and
cost a scan of everything skipped; a keyset page costs one index range read.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field
from sqlalchemy import and_, or_
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col
from sqlmodel.sql.expression import SelectOfScalar

from starter.problems import invalid

T = TypeVar("T")
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)

Limit = Annotated[int, Query(ge=1, le=500, description="items per page")]
Cursor = Annotated[
    str | None, Query(max_length=1000, description="next_cursor of the previous page, unchanged")
]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; null when this page is the last"
    )


def keyset_page(
    db: Session,
    query: SelectOfScalar[R],
    keys: Sequence[Any],
    limit: int,
    cursor: str | None,
    show: Callable[[R], T],
    *,
    descending: bool = False,
) -> Page[T]:
    """One page of ``query`` ordered by ``keys`` (columns that together are unique, the last one
    an id), each row shown by ``show``; ``next_cursor`` is None after the last page."""
    if cursor is not None:
        query = query.where(_after(keys, _decode(cursor, keys), descending))
    order = [key.desc() if descending else key for key in keys]
    rows = list(db.exec(query.order_by(*order).limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode([getattr(rows[-1], key.key) for key in keys]) if more else None
    return Page(items=[show(row) for row in rows], next_cursor=next_cursor)


def by_age(model: Any) -> tuple[Any, Any]:
    """Oldest first; the id breaks ties between rows made in the same microsecond."""
    return col(model.created_at), col(model.id)


def shown_as(out: type[M]) -> Callable[[Any], M]:
    """Show a stored row as the API model ``out`` (the fields they share)."""
    return lambda row: out.model_validate(row, from_attributes=True)


def _after(keys: Sequence[Any], values: list[Any], descending: bool) -> ColumnElement[bool]:
    """Rows that sort after ``values``: (a > x) or (a = x and b > y) or ... Spelled out rather
    than as a row-value comparison so that each value binds with its column's type."""
    clauses = []
    for i, key in enumerate(keys):
        equal = [earlier == value for earlier, value in zip(keys[:i], values[:i], strict=True)]
        beyond = key < values[i] if descending else key > values[i]
        clauses.append(and_(*equal, beyond))
    return or_(*clauses)


def _encode(values: list[Any]) -> str:
    # A time is tagged, not guessed back from its text: the columns' types do not all say
    # their Python type.
    shown = [
        {"at": value.isoformat()} if isinstance(value, datetime) else value for value in values
    ]
    return base64.urlsafe_b64encode(json.dumps(shown).encode()).decode()


def _python_type(key: Any) -> type:
    column_type = key.expression.type
    python_type: type = getattr(column_type, "impl_instance", column_type).python_type
    return python_type


def _decode(cursor: str, keys: Sequence[Any]) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(values, list) or len(values) != len(keys):
            raise ValueError("not a cursor of this list")
        decoded = [
            datetime.fromisoformat(value["at"]) if isinstance(value, dict) else value
            for value in values
        ]
        # A cursor of another list, or one made by hand, must not reach the database as a value
        # of the wrong type (the driver would fail the request).
        if not all(isinstance(v, _python_type(k)) for k, v in zip(keys, decoded, strict=True)):
            raise ValueError("not a cursor of this list")
        return decoded
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, KeyError):
        raise invalid("cursor", "pass next_cursor of the previous page as it was") from None
