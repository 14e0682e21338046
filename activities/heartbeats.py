"""An executor step tells Temporal it is alive for as long as it runs, its store work included.

A step (a change and its verify, a probe, a task) has a heartbeat timeout (``lost_worker_
seconds``): a worker that dies mid-step is noticed within it, and the step is tried again
elsewhere. What the step waits for besides the target counts as much as the target: opening
its attempt, recording it, telling the operations that wait for it. Those run in threads, and
under a burst (a thousand steps released at once on two cores) a thread can be minutes away; a
step that beat only while an executor ran was then declared lost while its worker was busy
recording it, and the step ran again. So the beat runs for the whole step.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

from temporalio import activity

HEARTBEAT_EVERY_SECONDS = 2.0

_S = TypeVar("_S")
_I = TypeVar("_I")
_O = TypeVar("_O")


@contextlib.asynccontextmanager
async def heartbeating() -> AsyncIterator[None]:
    """Beat while the block runs. A beat is due one interval after the activity started (by
    Temporal's clock) or last beat: a step that ends sooner sends none (each beat is a write
    on the Temporal server, and most steps are shorter than an interval)."""
    info = activity.info()
    timeout = info.heartbeat_timeout
    # Often enough for a short timeout (settings.lost_worker_seconds) to hold on a busy host.
    every = (
        min(HEARTBEAT_EVERY_SECONDS, timeout.total_seconds() / 4)
        if timeout
        else HEARTBEAT_EVERY_SECONDS
    )
    # Temporal's timer started with the activity (a worker clock behind it counts from now).
    running = (datetime.now(UTC) - info.started_time).total_seconds()
    last = time.monotonic() - max(0.0, running)

    async def beat() -> None:
        nonlocal last
        while True:
            due = last + every - time.monotonic()
            if due > 0:
                await asyncio.sleep(due)
            activity.heartbeat()
            last = time.monotonic()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


def beats_while_running(
    step: Callable[[_S, _I], Coroutine[Any, Any, _O]],
) -> Callable[[_S, _I], Coroutine[Any, Any, _O]]:
    """An executor step's method, beating from its start to its end (see the module)."""

    @functools.wraps(step)
    async def running(self: _S, arg: _I) -> _O:
        async with heartbeating():
            return await step(self, arg)

    return running
