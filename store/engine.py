"""The database engine: SQLite (WAL) by default, PostgreSQL in production."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

from store.migrations import migrate

# The pool is sized for every thread that may hold a connection in one process: ``keyturn dev``
# runs the worker and the API in one process, on one engine.
STORE_ACTIVITY_THREADS = 16  # the worker's thread pool for store activities (worker.py)
API_THREADS = 40  # AnyIO's default thread limiter: FastAPI runs sync routes (and their DB) there
# asyncio.to_thread's default executor (ThreadPoolExecutor's default size): store steps of the
# executor activities and of the async routes (store.engine.in_thread).
LOOP_THREADS = min(32, (os.cpu_count() or 1) + 4)
# A connection is only held by code running in one of those threads, one at a time, and given
# back before that code returns or waits for anything else: no session is held across an await,
# and a sync route's session is closed when the route returns, not after FastAPI has validated
# the response in the thread pool again (starter.deps.StoreRoute). So whoever waits for a
# connection waits for a thread that is working and will give it back: a burst queues, it cannot
# deadlock, as long as the event loop never waits for one (the API never touches the store from
# the loop). With room for every thread no one even waits: a burst queues for a thread (AnyIO's
# limiter, the executors' queues) before it reaches the pool. POOL_SIZE connections stay open
# for the worker's steady load; the overflow is opened for bursts and closed once given back.
# A worker or an API alone (production, PostgreSQL) only ever opens its own share.
POOL_SIZE = STORE_ACTIVITY_THREADS
MAX_OVERFLOW = API_THREADS + LOOP_THREADS
# A backstop for threads not counted above (an app embedding the API with a larger limiter):
# longer than SQLite's busy timeout, the longest a healthy holder may wait for the write lock
# while holding its connection, so a queued request outlasts a slow holder instead of failing.
POOL_TIMEOUT = 60.0
SQLITE_BUSY_TIMEOUT = 30.0


def make_engine(url: str) -> Engine:
    pool = {"pool_size": POOL_SIZE, "max_overflow": MAX_OVERFLOW, "pool_timeout": POOL_TIMEOUT}
    if url.startswith("sqlite"):
        # Activities write from a thread pool; WAL lets readers proceed while one thread writes.
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT},
            **pool,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, **pool)
    migrate(engine)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk (the WAL synced) before it returns, so a secret version the
    # vault committed survives a power loss; NORMAL could lose the last commits in WAL mode.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


_HELD = "keyturn.store.held"


def hold(session: Session, *rows: object) -> None:
    """Keep ``rows`` in ``session``'s identity map until the session closes. SQLAlchemy holds
    what a session loaded weakly: once no variable refers to a row, the next ``get`` of it in
    the same transaction reads it again. A step whose parts each look a row up by its id (the
    begin step registers, then prepares) holds what it read under its lock, and the later
    parts find it without a statement."""
    session.info.setdefault(_HELD, []).extend(rows)


_T = TypeVar("_T")


async def in_thread(engine: Engine, work: Callable[[Session], _T]) -> _T:
    """``work(db)`` with a session of its own, in a worker thread: how async code (a route, the
    request path) reads or writes the store. The session is closed, its connection back in the
    pool, before this returns; rows it returns are detached, their columns loaded."""

    def run() -> _T:
        with Session(engine, expire_on_commit=False) as db:
            return work(db)

    return await asyncio.to_thread(run)
