"""Workflows call activities through declarations (workflows/steps.py): the worker must serve an
implementation of every one, under the declared name."""

from __future__ import annotations

from temporalio import activity
from temporalio.worker import Worker

from tests.e2e.conftest import Stack
from worker import MAIN_QUEUE_ACTIVITIES, build_workers
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


async def test_the_main_queue_s_worker_runs_the_executor_steps_with_the_setting_or_without(
    stack: Stack,
) -> None:
    """With the default zone on the main queue, as many steps at once there as on a zone's
    queue, besides the store's; the default zone's own queue is still served (steps planned
    before). Without it, the main queue serves the steps too, at Temporal's default: steps
    planned on it by a worker with the setting still run once it is turned off."""
    settings = stack.settings.model_copy(
        update={
            "task_queue": f"{stack.settings.task_queue}-m",
            "zones": ["default", "dmz"],
            "max_concurrent_executor_calls": 750,
            "default_zone_on_main_queue": True,
        }
    )
    main, *zone_workers = build_workers(stack.client, settings, stack.engine)
    assert {"keyturn.change", "keyturn.probe", "keyturn.run_task"} <= _names(main)
    assert main.config().get("max_concurrent_activities") == MAIN_QUEUE_ACTIVITIES + 750
    assert {w.config()["task_queue"] for w in zone_workers} == {
        settings.zone_task_queue("dmz"),
        f"{settings.task_queue}-zone-default",
    }
    without = settings.model_copy(
        update={"default_zone_on_main_queue": False, "task_queue": f"{settings.task_queue}-z"}
    )
    (plain, *_) = build_workers(stack.client, without, stack.engine)
    assert {"keyturn.change", "keyturn.probe"} <= _names(plain)
    assert plain.config().get("max_concurrent_activities") is None  # Temporal's default


def _names(worker: Worker) -> set[str]:
    return {
        str(activity._Definition.must_from_callable(f).name) for f in worker.config()["activities"]
    }
