"""After a restore, a task's run that was in flight is settled: no workflow will end it."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from store.engine import session_scope
from store.models import (
    AuditEvent,
    Credential,
    Device,
    OperationStatus,
    Task,
    TaskResult,
    TaskRun,
)
from store.restored import settle_in_flight


def test_a_run_in_flight_is_failed_with_its_unfinished_targets(engine: Engine) -> None:
    with session_scope(engine) as db:
        db.add(Device(id="d1", name="web-1", address="127.0.0.1", port=22, executor="ssh"))
        db.flush()
        for name in ("c1", "c2"):
            db.add(Credential(id=name, device_id="d1", username=name, change_template="x",
                              verify_template="y"))  # fmt: skip
        db.add(Task(id="t1", name="uptime", template="ssh/uptime", executor="ssh",
                    credential_ids=["c1", "c2"]))  # fmt: skip
        db.flush()
        db.add(TaskRun(id="r1", task_id="t1", workflow_id="w1", status=OperationStatus.RUNNING))
        db.add(TaskRun(id="r0", task_id="t1", workflow_id="w0", status=OperationStatus.SUCCEEDED))
        db.flush()
        db.add(TaskResult(run_id="r1", credential_id="c1", device_id="d1", operation_id="o1",
                          status=OperationStatus.SUCCEEDED, exit_status=0))  # fmt: skip
        db.add(TaskResult(run_id="r1", credential_id="c2", device_id="d1", operation_id="o2",
                          status=OperationStatus.RUNNING))  # fmt: skip

    settle_in_flight(engine)

    with Session(engine) as db:
        run, done = db.get(TaskRun, "r1"), db.get(TaskRun, "r0")
        assert run is not None and run.status == OperationStatus.FAILED and run.finished_at
        assert done is not None and done.status == OperationStatus.SUCCEEDED
        kept, settled = db.get(TaskResult, ("r1", "c1")), db.get(TaskResult, ("r1", "c2"))
        assert kept is not None and kept.status == OperationStatus.SUCCEEDED
        assert settled is not None and settled.status == OperationStatus.FAILED
        assert settled.error_type == "RestoredInFlight"
        events = db.exec(
            select(AuditEvent).where(AuditEvent.event == "task.run_restored_in_flight")
        )
        assert [e.detail["run_id"] for e in events] == ["r1"]
