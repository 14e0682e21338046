"""An executor step's heartbeats: a beat is due one interval after the activity started or
last beat. An activity that ends sooner sends none (each beat is a write on the Temporal
server); one that runs on beats steadily (what tells Temporal the worker still runs it, and
brings it a cancel), while its store work waits for a thread as much as while a target
answers."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from datetime import UTC, datetime, timedelta

from temporalio.testing import ActivityEnvironment

from activities.executor_steps import ExecutorActivities
from activities.heartbeats import beats_while_running, heartbeating
from activities.task_steps import TaskExecutorActivities

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
        async with heartbeating():
            await asyncio.sleep(0)  # the beating task gets its first turn

    await _environment(beats, SLOW).run(step)
    assert beats.count == 0


async def test_a_step_that_runs_on_beats_until_it_ends() -> None:
    beats = Beats(wanted=3)

    async def step() -> None:
        async with heartbeating():
            await asyncio.wait_for(beats.enough.wait(), timeout=10)

    await _environment(beats, QUICK).run(step)
    assert beats.count >= 3


async def test_a_step_that_starts_when_a_beat_is_due_beats_at_once() -> None:
    """The activity began an interval ago by Temporal's clock (it waited for this worker's
    event loop, say): it tells Temporal at once, not an interval later."""
    beats = Beats()

    async def step() -> None:
        async with heartbeating():
            await asyncio.sleep(0)
            assert beats.count == 1

    await _environment(beats, SLOW, started_ago=SLOW / 2).run(step)
    assert beats.count == 1


class _Step:
    """Stands for an executor step whose store work waits in a thread."""

    def __init__(self, beats: Beats) -> None:
        self.beats = beats
        self.recorded = threading.Event()

    @beats_while_running
    async def run(self, patience: float) -> bool:
        # The "record" is done once the step has beaten: it cannot be, unless the beats go on
        # while this coroutine waits for the thread.
        return await asyncio.to_thread(self.recorded.wait, patience)


async def test_a_step_beats_while_its_store_work_waits_for_a_thread() -> None:
    """A thousand steps released at once wait for threads to record them; a step silent all
    that time would be declared lost, and run again, while its worker was recording it."""
    beats = Beats(wanted=2)
    step = _Step(beats)

    async def release_when_beaten() -> None:
        await beats.enough.wait()
        step.recorded.set()

    releasing = asyncio.ensure_future(release_when_beaten())
    recorded = await _environment(beats, QUICK).run(step.run, 10.0)
    releasing.cancel()
    assert recorded, "the step went silent while its store work waited"
    assert beats.count >= 2


def test_every_step_that_acts_on_a_target_beats_for_its_whole_run() -> None:
    """The change (with its verify), the probe and the task step: each is wrapped whole."""
    for step in (
        ExecutorActivities.change,
        ExecutorActivities.probe,
        TaskExecutorActivities.run_task,
    ):
        # Every wrapper runs the decorator's one code object; an unwrapped step runs its own.
        assert step.__code__ is beats_while_running(_Step.run).__code__, step
