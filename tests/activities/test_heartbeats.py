"""An executor step's heartbeats: a beat is due one interval after the activity started or
last beat. An activity that ends sooner sends none (each beat is a write on the Temporal
server); one that runs on beats steadily (what tells Temporal the worker still runs it, and
brings it a cancel); and the silence between two attempts of one activity counts as much as
the silence within one."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

from temporalio.testing import ActivityEnvironment

from activities.executor_steps import _heartbeating

# A quarter of it between beats: 0.1 s where beats are awaited, 1 s where a test checks none
# came (a margin for a loaded host).
QUICK = timedelta(seconds=0.4)
SLOW = timedelta(seconds=4)


class Beats:
    def __init__(self, wanted: int = 1) -> None:
        self.count, self.wanted, self.enough = 0, wanted, asyncio.Event()

    def __call__(self, *_details: object) -> None:
        self.count += 1
        if self.count >= self.wanted:
            self.enough.set()


def _environment(
    beats: Beats, timeout: timedelta, started_ago: timedelta = timedelta()
) -> ActivityEnvironment:
    env = ActivityEnvironment()
    started = datetime.now(UTC) - started_ago
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timeout, started_time=started)
    env.on_heartbeat = beats
    return env


async def test_a_step_shorter_than_a_beat_sends_none() -> None:
    beats = Beats()

    async def step() -> None:
        async with _heartbeating():
            await asyncio.sleep(0)  # the beating task gets its first turn

    await _environment(beats, SLOW).run(step)
    assert beats.count == 0


async def test_a_step_that_runs_on_beats_until_it_ends() -> None:
    beats = Beats(wanted=3)

    async def step() -> None:
        async with _heartbeating():
            await asyncio.wait_for(beats.enough.wait(), timeout=10)

    await _environment(beats, QUICK).run(step)
    assert beats.count >= 3


async def test_an_attempt_that_starts_when_a_beat_is_due_beats_at_once() -> None:
    """The activity began an interval ago (its job loaded, a first attempt recorded): the
    next attempt tells Temporal at once, not an interval later."""
    beats = Beats()

    async def step() -> None:
        async with _heartbeating():
            await asyncio.sleep(0)
            assert beats.count == 1

    await _environment(beats, SLOW, started_ago=SLOW / 2).run(step)
    assert beats.count == 1


async def test_the_silence_between_two_attempts_counts() -> None:
    """A change shorter than an interval, then its record (store work, here half an interval
    more than one): the verify that follows beats as it starts."""
    beats = Beats()

    async def step() -> None:
        async with _heartbeating():  # the change
            await asyncio.sleep(0)
        assert beats.count == 0
        await asyncio.sleep(1.5)  # stands for the change's record, outside any attempt
        async with _heartbeating():  # the verify
            await asyncio.sleep(0)
            assert beats.count == 1

    await _environment(beats, SLOW).run(step)
