"""A store made by the previous release is migrated at startup, keeping every row."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect, text
from sqlmodel import Session

from store import audit
from store.engine import make_engine, session_scope
from store.migrations import LATEST
from store.models import Operation, OperationStatus

SCHEMAS = Path(__file__).parent / "schemas"
# A row as the previous release wrote it (enum members are stored by name).
ROWS = """
INSERT INTO device (id, name, address, port, executor, zone, profile, host_keys,
  trust_on_first_use, options, created_at)
  VALUES ('d1', 'web-1', '127.0.0.1', 22, 'ssh', 'default', 'default', '[]', false, '{}',
  '2026-11-01 10:00:00');
INSERT INTO credential (id, device_id, username, profile, change_template, verify_template,
  auto_reconcile, sync_state, created_at)
  VALUES ('c1', 'd1', 'app', 'default', 'ssh/linux-passwd', 'ssh/verify-login', false,
  'IN_SYNC', '2026-11-01 10:00:00');
INSERT INTO operation (id, credential_id, kind, trigger, status, workflow_id, created_at)
  VALUES ('o1', 'c1', 'change', 'manual', 'SUCCEEDED', 'keyturn-change-c1',
  '2026-11-01 10:00:00');
INSERT INTO auditevent (at, event, operation_id, credential_id, detail)
  VALUES ('2026-11-01 10:00:00', 'operation.requested', 'o1', 'c1', '{"kind": "change"}');
INSERT INTO auditevent (at, event, operation_id, credential_id, detail)
  VALUES ('2026-11-01 10:00:01', 'operation.succeeded', 'o1', 'c1', '{"kind": "change"}');
"""


def test_a_store_of_the_previous_release_is_migrated(empty_database: str) -> None:
    dialect = "postgresql" if empty_database.startswith("postgresql") else "sqlite"
    old = create_engine(empty_database)
    with old.begin() as conn:
        for statement in (SCHEMAS / f"v1_{dialect}.sql").read_text().split(";\n"):
            if statement.strip():
                conn.exec_driver_sql(statement)
        for statement in ROWS.split(";\n"):
            if statement.strip():
                conn.exec_driver_sql(statement)
    old.dispose()

    engine = make_engine(empty_database)

    columns = {c["name"] for c in inspect(engine).get_columns("operation")}
    assert {"run_id", "gate_seq", "gate_state", "waiting_for", "base_version_id"} <= columns
    assert {"requested_by", "callback_url"} <= columns
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM schemaversion")).scalar_one() == LATEST
    # The events written before the chain existed are chained, and new ones follow them.
    assert audit.verify(engine) == (2, None)
    with session_scope(engine) as session:
        assert audit.record(session, "operation.requested", operation_id="o1").id == 3
    assert audit.verify(engine) == (3, None)
    with Session(engine) as session:
        kept = session.get(Operation, "o1")
        assert kept is not None and kept.status == OperationStatus.SUCCEEDED
        assert kept.gate_state is None  # an old operation holds no gate
    with session_scope(engine) as session:  # the new status value is storable
        session.add(
            Operation(
                id="o2", credential_id="c1", kind="verify", workflow_id="w",
                status=OperationStatus.QUEUED,
            )
        )  # fmt: skip
    # Starting again changes nothing.
    make_engine(empty_database).dispose()
    engine.dispose()


def test_a_new_store_is_created_at_the_latest_version(empty_database: str) -> None:
    engine = make_engine(empty_database)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM schemaversion")).scalar_one() == LATEST
    engine.dispose()
