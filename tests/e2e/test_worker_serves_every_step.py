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
