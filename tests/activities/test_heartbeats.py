"""An executor step's heartbeats: none for a step that ends before its first beat is due (each
beat is a write on the Temporal server), and steady beats for one that runs on (what tells
Temporal the worker still runs it, and brings it a cancel)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

from temporalio.testing import ActivityEnvironment

from activities.executor_steps import _heartbeating

# A quarter of it between beats: 0.1 s.
HEARTBEAT_TIMEOUT = timedelta(seconds=0.4)


def _environment(beats: list[object], enough: asyncio.Event, wanted: int) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=HEARTBEAT_TIMEOUT)

    def beat(*details: object) -> None:
        beats.append(details)
        if len(beats) >= wanted:
            enough.set()

    env.on_heartbeat = beat
    return env


async def test_a_step_shorter_than_a_beat_sends_none() -> None:
    beats: list[object] = []
    env = _environment(beats, asyncio.Event(), wanted=1)

    async def step() -> None:
        async with _heartbeating():
            await asyncio.sleep(0)  # the beating task gets its first turn

    await env.run(step)
    assert beats == []


async def test_a_step_that_runs_on_beats_until_it_ends() -> None:
    beats: list[object] = []
    enough = asyncio.Event()
    env = _environment(beats, enough, wanted=3)

    async def step() -> int:
        async with _heartbeating():
            await asyncio.wait_for(enough.wait(), timeout=10)
        return len(beats)

    assert await env.run(step) == 3
