"""Operations started by an earlier Keyturn still replay after an upgrade.

The histories under histories/ were recorded from real runs of earlier releases: v1_* before the
credential gate (a change with a chained child, a verify, a refused change), v2_* before
callbacks and the operation-id search attribute (a change over SSH with a chained child, a
verify of an unreachable device); their payloads are encrypted with the throwaway key beside
them. Replaying them against today's workflow proves an upgrade does not break an operation in
flight.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from keyturn.codec import data_converter
from workflows.callback import CallbackWorkflow
from workflows.device_slots import DeviceSlotsWorkflow
from workflows.operation import OperationWorkflow

HISTORIES = Path(__file__).parent / "histories"


@pytest.mark.parametrize("name", sorted(p.stem for p in HISTORIES.glob("v*_*.json")))
async def test_operations_of_the_previous_release_replay(name: str) -> None:
    key = bytes.fromhex((HISTORIES / "master_key.hex").read_text().strip())
    history = WorkflowHistory.from_json(f"replay-{name}", (HISTORIES / f"{name}.json").read_text())
    replayer = Replayer(
        workflows=[OperationWorkflow, DeviceSlotsWorkflow, CallbackWorkflow],
        data_converter=data_converter(key),
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure
