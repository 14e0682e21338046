"""A store made by the previous release is migrated at startup, keeping every row."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import create_engine, inspect, text
from sqlmodel import Session

from store import audit
from store.engine import make_engine, session_scope
from store.migrations import LATEST
from store.models import Credential, Device, Operation, OperationStatus, Policy
from store.queries import latest_template

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
    assert "source_version_id" in columns
    versions = {c["name"] for c in inspect(engine).get_columns("secretversion")}
    assert {"last_login_ok_at", "last_login_ok_operation_id"} <= versions
    assert {"requested_by", "callback_url"} <= columns
    with Session(engine) as session:  # an existing device does not allow cleartext transport
        device = session.get(Device, "d1")
        assert device is not None and device.allow_insecure_transport is False
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
        credential = session.get(Credential, "c1")
        assert credential is not None and credential.needs_verify is False
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


V2_ROWS = """
INSERT INTO policy (id, name, length, lowercase, uppercase, digits, symbols, exclude,
  max_attempts, retry_interval_seconds, backoff, connect_timeout_seconds, read_timeout_seconds,
  lockout_budget, lockout_window_seconds, max_concurrent_operations, created_at)
  VALUES ('p1', 'linux', 24, true, true, true, true, '', 5, 10, 2, 10, 30, 3, 900, 2,
  '2026-11-01 09:00:00');
INSERT INTO secretversion (id, credential_id, state, key_id, ciphertext, created_at, changed_at)
  VALUES ('v1', 'c1', 'CURRENT', 'k', X'00', '2026-11-01 10:00:00', '2026-11-02 10:00:00');
"""


def test_a_store_of_the_one_writer_release_gets_the_trigger_columns(empty_database: str) -> None:
    """v2 → v3: policies keep working with every trigger off; each credential's age is when its
    current secret became current, so the first sweep finds exactly what is really due."""
    dialect = "postgresql" if empty_database.startswith("postgresql") else "sqlite"
    old = create_engine(empty_database)
    with old.begin() as conn:
        for statement in (SCHEMAS / f"v2_{dialect}.sql").read_text().split(";\n"):
            if statement.strip():
                conn.exec_driver_sql(statement)
        conn.exec_driver_sql("INSERT INTO schemaversion (id, version) VALUES (1, 2)")
        device_and_credential = ROWS.split(";\n")[:2]  # the v1 operation row lacks gate_seq
        blob = "'\\x00'" if dialect == "postgresql" else "X'00'"
        for statement in [*device_and_credential, *V2_ROWS.replace("X'00'", blob).split(";\n")]:
            if statement.strip():
                conn.exec_driver_sql(statement)
    old.dispose()

    engine = make_engine(empty_database)

    with Session(engine) as session:
        policy = session.get(Policy, "p1")
        assert policy is not None
        assert (policy.change_every_seconds, policy.paused, policy.jitter_seconds) == (
            None,
            False,
            0,
        )
        credential = session.get(Credential, "c1")
        assert credential is not None
        assert credential.secret_changed_at.replace(tzinfo=None) == datetime(2026, 11, 2, 10)
        assert credential.verified_at == credential.secret_changed_at
    indexes = {i["name"] for i in inspect(engine).get_indexes("credential")}
    assert {"ix_credential_expiry", "ix_credential_verify"} <= indexes
    assert inspect(engine).has_table("credentialsession")
    make_engine(empty_database).dispose()
    engine.dispose()


def test_templates_stored_before_review_existed_stay_runnable(empty_database: str) -> None:
    """Step 10 (principals): a template saved by an earlier release is what ran until then, so
    it is approved; the principal tables are new."""
    dialect = "postgresql" if empty_database.startswith("postgresql") else "sqlite"
    old = create_engine(empty_database)
    with old.begin() as conn:
        for statement in (SCHEMAS / f"v1_{dialect}.sql").read_text().split(";\n"):
            if statement.strip():
                conn.exec_driver_sql(statement)
        conn.exec_driver_sql(
            "INSERT INTO template (id, name, version, executor, kind, body, shipped, created_at) "
            "VALUES ('t1', 'mine', 1, 'ssh', 'change', 'exec: true', false, '2026-11-01 10:00:00')"
        )
        for statement in ROWS.split(";\n")[:2]:  # a device and its credential
            conn.exec_driver_sql(statement.replace("'default', 'ssh/linux", "'other', 'ssh/linux"))
    old.dispose()
    engine = make_engine(empty_database)
    with Session(engine) as session:
        template = latest_template(session, "mine")
        assert (template.id, template.status, template.author) == ("t1", "approved", "keyturn")
        assert template.approved_at is not None
    assert {"principal", "principaltoken"} <= set(inspect(engine).get_table_names())
    with Session(engine) as session:  # the credential had a profile of its own: now its device's
        credential = session.get(Credential, "c1")
        assert credential is not None and credential.profile == "default"
    engine.dispose()
