"""Operations started by an earlier Keyturn still replay after an upgrade.

The histories under histories/ were recorded from real runs of earlier releases: v1_* before the
credential gate (a change with a chained child, a verify, a refused change), v2_* with the gate,
before recovery by hand (a change, a verify, a verify that finds drift, a refused change;
recorded with record_histories.py; a change over SSH with a chained child and a verify of an
unreachable device, from before callbacks and the operation-id search attribute), v3_* a sweep
and a delayed change, v4_* the same four operations verifying inside the change activity, v5_*
the same with their callbacks closed as they end, one change told its outcome and that
delivery's own workflow (one POST per registered URL); v5_lifecycle_* a deactivate, an
activate, a jit-create (which schedules its removal) and a jit-remove; v6_paths_* a reconcile
through a privileged account, a verify retried against an unreachable device, a verify waiting
out its lockout window (and the one that spent the budget), an operation canceled while queued
at its gate and the change it waited behind; v7_* the same operations and paths with one patch
marker standing for every earlier patch; v7_tasks_* a
task's run on two credentials and its two children; v8_* and v8_paths_* the operations and paths
again, with the marker that stands for every patch up to the one-step departure (leave the gate
and close the callback URLs at once) and the chained children planned by the commit (no
plan_children step), plus a change with a chained child and that child's change; v9_* with
the device slots claimed in the store; v10_* started by the API naming the revision of the
steps (no patch marker, one begin step, the commit made by the change step); v11_* the same
with the credential's gate left by the change step too (no depart step). Their
payloads are encrypted with the throwaway key beside them. Replaying them against today's
workflow proves an upgrade does not break an operation in flight.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from keyturn.codec import data_converter
from workflows.callback import CallbackWorkflow
from workflows.contracts import OPERATION_REVISION, OperationInput
from workflows.delayed_operation import DelayedOperationWorkflow
from workflows.device_slots import DeviceSlotsWorkflow
from workflows.operation import OperationWorkflow
from workflows.sweep import SweepWorkflow
from workflows.task_run import TaskRunWorkflow, TaskTargetWorkflow

HISTORIES = Path(__file__).parent / "histories"


WORKFLOWS = [
    OperationWorkflow,
    DeviceSlotsWorkflow,
    SweepWorkflow,
    DelayedOperationWorkflow,
    CallbackWorkflow,
    TaskRunWorkflow,
    TaskTargetWorkflow,
]


@pytest.mark.parametrize("name", sorted(p.stem for p in HISTORIES.glob("v*_*.json")))
async def test_workflows_of_earlier_releases_replay(name: str) -> None:
    """Operations of every earlier release, and a sweep over three pages and a delayed change
    (a view's) recorded from real runs: a change to any workflow must keep these replaying (or
    be behind ``workflow.patched``)."""
    key = bytes.fromhex((HISTORIES / "master_key.hex").read_text().strip())
    history = WorkflowHistory.from_json(f"replay-{name}", (HISTORIES / f"{name}.json").read_text())
    replayer = Replayer(workflows=WORKFLOWS, data_converter=data_converter(key))
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


@pytest.mark.parametrize("name", ["v9_change", "v9_paths_waited_for_a_device_slot"])
async def test_a_start_naming_the_revision_that_a_worker_of_the_earlier_release_began_replays(
    name: str,
) -> None:
    """During an upgrade, the API may start an operation naming the newest revision and a worker
    of the earlier release run it (it ignores the field): its history is that release's. A
    worker of this release that takes it over must replay it that way (it finds the earlier
    release's patch marker), not as a new operation (begin, where register was recorded)."""
    key = bytes.fromhex((HISTORIES / "master_key.hex").read_text().strip())
    converter = data_converter(key)
    history = WorkflowHistory.from_json(f"replay-{name}", (HISTORIES / f"{name}.json").read_text())
    started = history.events[0].workflow_execution_started_event_attributes
    [op] = await converter.decode(list(started.input.payloads), [OperationInput])
    assert op.revision == 0
    renamed = await converter.encode([dataclasses.replace(op, revision=OPERATION_REVISION)])
    del started.input.payloads[:]
    started.input.payloads.extend(renamed)

    replayer = Replayer(workflows=WORKFLOWS, data_converter=converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure
