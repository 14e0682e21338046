"""Workflows call activities through declarations (workflows/steps.py): the worker must serve an
implementation of every one, under the declared name."""

from __future__ import annotations

from temporalio import activity

from tests.e2e.conftest import Stack
from worker import build_workers
from workflows import steps


async def test_the_worker_implements_every_declared_step(stack: Stack) -> None:
    # A task queue of its own: the session's worker already serves the stack's.
    settings = stack.settings.model_copy(update={"task_queue": f"{stack.settings.task_queue}-x"})
    workers = build_workers(stack.client, settings, stack.engine)
    served = {
        activity._Definition.must_from_callable(fn).name
        for w in workers
        for fn in w.config().get("activities", ())
    }
    assert served == steps.declared_names()


async def test_each_zone_worker_runs_as_many_executor_calls_at_once_as_the_setting_says(
    stack: Stack,
) -> None:
    """Temporal's default (100 activities) would hold operations the device caps allow."""
    settings = stack.settings.model_copy(
        update={
            "task_queue": f"{stack.settings.task_queue}-y",
            "zones": ["default", "dmz"],
            "max_concurrent_executor_calls": 750,
        }
    )
    workers = build_workers(stack.client, settings, stack.engine)
    zone_workers = [
        w for w in workers if "workflows" not in w.config() or not w.config()["workflows"]
    ]
    assert len(zone_workers) == 2
    assert {w.config().get("max_concurrent_activities") for w in zone_workers} == {750}


async def test_the_worker_keeps_as_many_workflows_in_memory_as_the_setting_says(
    stack: Stack,
) -> None:
    settings = stack.settings.model_copy(
        update={"task_queue": f"{stack.settings.task_queue}-c", "workflow_cache_size": 37}
    )
    (main, *_) = build_workers(stack.client, settings, stack.engine)
    assert main.config().get("workflows") and main.config().get("max_cached_workflows") == 37
