"""A store made by the previous release is migrated at startup, keeping every row."""

from __future__ import annotations

import secrets
from datetime import datetime
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from keyturn.crypto import Cipher
from starter.cli import main
from store import audit, callbacks, device_slots
from store.engine import make_engine, session_scope
from store.migrations import (
    LATEST,
    alembic_config,
    current_version,
    revision_of,
)
from store.models import (
    Attempt,
    Credential,
    Device,
    Operation,
    OperationStatus,
    Policy,
    SecretVersion,
    Task,
)
from store.queries import latest_template
from store.vault import Vault
from tests.python_process import run_python
from workflows.contracts import SlotRequest, WorkflowRef

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


def run_sql(conn: Connection, script: str) -> None:
    """Each statement of a script of ``;``-ended statements (a schema fixture, rows)."""
    for statement in script.split(";\n"):
        if statement.strip():
            conn.exec_driver_sql(statement)


def test_a_store_of_the_previous_release_is_migrated(empty_database: str) -> None:
    dialect = "postgresql" if empty_database.startswith("postgresql") else "sqlite"
    old = create_engine(empty_database)
    with old.begin() as conn:
        run_sql(conn, (SCHEMAS / f"v1_{dialect}.sql").read_text())
        run_sql(conn, ROWS)
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
        assert audit.record(session, "operation.requested", operation_id="o1") == 3
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
        run_sql(conn, (SCHEMAS / f"v2_{dialect}.sql").read_text())
        conn.exec_driver_sql("INSERT INTO schemaversion (id, version) VALUES (1, 2)")
        device_and_credential = ";\n".join(ROWS.split(";\n")[:2])  # v1's operation lacks gate_seq
        blob = "'\\x00'" if dialect == "postgresql" else "X'00'"
        run_sql(conn, device_and_credential + ";\n" + V2_ROWS.replace("X'00'", blob))
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


V6_ROWS = """
INSERT INTO device (id, name, address, port, executor, zone, profile, host_keys,
  trust_on_first_use, options, allow_insecure_transport, created_at)
  VALUES ('d1', 'web-1', '127.0.0.1', 22, 'ssh', 'default', 'default', '[]', false, '{}', false,
  '2026-11-01 10:00:00');
INSERT INTO credential (id, device_id, username, profile, change_template, verify_template,
  auto_reconcile, sync_state, needs_verify, created_at, secret_changed_at, verified_at)
  VALUES ('c1', 'd1', 'app', 'default', 'ssh/linux-passwd', 'ssh/verify-login', false,
  'IN_SYNC', false, '2026-11-01 10:00:00', '2026-11-01 10:00:00', '2026-11-01 10:00:00');
"""


def test_a_store_of_the_release_before_alembic_is_stamped_and_keeps_every_secret(
    empty_database: str,
) -> None:
    """v6 (the last release that recorded its version in ``schemaversion`` only): Alembic takes
    it over from there, runs only the later steps, and every secret still decrypts."""
    dialect = "postgresql" if empty_database.startswith("postgresql") else "sqlite"
    master_key = secrets.token_bytes(32)
    cipher = Cipher(master_key, "secrets")  # as that release encrypted: the same cipher
    kept = {"v-current": "first pw ' \\ é", "v-previous": "second pw 😀"}
    old = create_engine(empty_database)
    with old.begin() as conn:
        run_sql(conn, (SCHEMAS / f"v6_{dialect}.sql").read_text())
        conn.exec_driver_sql("INSERT INTO schemaversion (id, version) VALUES (1, 6)")
        run_sql(conn, V6_ROWS)
        for version_id, secret in kept.items():
            state = "CURRENT" if version_id == "v-current" else "PREVIOUS"
            ciphertext = cipher.encrypt(secret.encode(), f"c1/{version_id}".encode())
            conn.execute(
                text(
                    "INSERT INTO secretversion (id, credential_id, state, key_id, ciphertext, "
                    "created_at, changed_at) VALUES (:id, 'c1', :state, :key_id, :ciphertext, "
                    "'2026-11-01 10:00:00', '2026-11-01 10:00:00')"
                ),
                {
                    "id": version_id,
                    "state": state,
                    "key_id": cipher.key_id,
                    "ciphertext": ciphertext,
                },
            )
    old.dispose()

    engine = make_engine(empty_database)

    with engine.connect() as conn:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        assert revision == revision_of(LATEST)
        assert conn.execute(text("SELECT version FROM schemaversion")).scalar_one() == LATEST
    with Session(engine) as session:
        rows = session.exec(select(SecretVersion).where(SecretVersion.credential_id == "c1"))
        vault = Vault(master_key)
        assert {row.id: vault.reveal(row) for row in rows} == kept
    make_engine(empty_database).dispose()  # starting again runs nothing and changes nothing
    engine.dispose()


ALEMBIC_LOADED = """
import sys
from store.engine import make_engine
make_engine(sys.argv[1]).dispose()
print(sorted(name for name in sys.modules if name.partition(".")[0] == "alembic"))
"""


def test_a_store_up_to_date_starts_without_alembic(tmp_path: Path) -> None:
    """Every start but the first after an upgrade finds the store at the newest revision: the
    worker and the API then never load Alembic (it would stay in each process's memory)."""
    url = f"sqlite:///{tmp_path / 'keyturn.db'}"

    def start() -> str:
        return run_python(ALEMBIC_LOADED, url).stdout.strip()

    assert start() != "[]"  # a new store is stamped by Alembic
    assert start() == "[]"
    engine = create_engine(url)
    with engine.begin() as conn:  # a store one revision behind is upgraded by it again
        conn.execute(
            text("UPDATE alembic_version SET version_num = :v"), {"v": revision_of(LATEST - 1)}
        )
    engine.dispose()
    assert start() != "[]"
    engine = make_engine(url)
    assert current_version(engine) == LATEST
    engine.dispose()


def test_each_schema_version_is_one_alembic_revision() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    chain = [revision.revision for revision in reversed(list(script.walk_revisions()))]
    assert chain == [revision_of(version) for version in range(1, LATEST + 1)]
    assert script.get_current_head() == revision_of(LATEST)


def test_keyturn_migrate_brings_an_old_store_up_to_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'keyturn.db'}"
    old = create_engine(url)
    with old.begin() as conn:
        run_sql(conn, (SCHEMAS / "v1_sqlite.sql").read_text())
    old.dispose()
    monkeypatch.setenv("KEYTURN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KEYTURN_DATABASE_URL", url)
    with pytest.raises(SystemExit) as exited:
        main(["migrate"])
    assert exited.value.code == 0
    said = capsys.readouterr().out
    assert f"schema version {LATEST} ({revision_of(LATEST)})" in said
    engine = create_engine(url)
    assert current_version(engine) == LATEST
    assert "allow_insecure_transport" in {c["name"] for c in inspect(engine).get_columns("device")}
    engine.dispose()


def test_an_operations_callback_url_moves_to_its_list_of_callbacks(empty_database: str) -> None:
    """v6 → v7: the one URL an operation had is first on its list; an ended operation's list
    is closed, a running one's still open to joins."""
    dialect = "postgresql" if empty_database.startswith("postgresql") else "sqlite"
    old = create_engine(empty_database)
    with old.begin() as conn:
        run_sql(conn, (SCHEMAS / f"v6_{dialect}.sql").read_text())
        conn.exec_driver_sql("INSERT INTO schemaversion (id, version) VALUES (1, 6)")
        run_sql(conn, V6_ROWS)
        for operation_id, finished in (("ended", "'2026-11-01 10:05:00'"), ("running", "NULL")):
            conn.exec_driver_sql(
                "INSERT INTO operation (id, credential_id, kind, trigger, status, workflow_id, "
                "created_at, finished_at, gate_seq, callback_url) VALUES "
                f"('{operation_id}', 'c1', 'change', 'manual', 'SUCCEEDED', 'w', "
                f"'2026-11-01 10:00:00', {finished}, 0, 'https://hooks.example.test/{dialect}')"
            )
    old.dispose()

    engine = make_engine(empty_database)

    with Session(engine) as session:
        for operation_id, closed in (("ended", True), ("running", False)):
            assert callbacks.urls(session, operation_id) == [
                f"https://hooks.example.test/{dialect}"
            ]
            row = session.get(Operation, operation_id)
            assert row is not None and row.callbacks_closed is closed
    make_engine(empty_database).dispose()  # starting again changes nothing
    with Session(engine) as session:
        assert len(callbacks.urls(session, "ended")) == 1
    engine.dispose()


def test_a_store_before_lifecycle_operations_gets_active_credentials(empty_database: str) -> None:
    """The activation and JIT step (from v6): every existing credential is active, none is a
    just-in-time account, none names lifecycle templates; no policy locks after a session;
    old operations have no time to live."""
    dialect = "postgresql" if empty_database.startswith("postgresql") else "sqlite"
    old = create_engine(empty_database)
    with old.begin() as conn:
        run_sql(conn, (SCHEMAS / f"v6_{dialect}.sql").read_text())
        conn.exec_driver_sql("INSERT INTO schemaversion (id, version) VALUES (1, 6)")
        run_sql(conn, V6_ROWS)
    old.dispose()

    engine = make_engine(empty_database)

    with Session(engine) as session:
        credential = session.get(Credential, "c1")
        assert credential is not None
        assert (credential.active, credential.jit_until, credential.lifecycle_templates) == (
            True,
            None,
            {},
        )
    assert "ttl_seconds" in {c["name"] for c in inspect(engine).get_columns("operation")}
    assert "lock_after_session" in {c["name"] for c in inspect(engine).get_columns("policy")}
    with session_scope(engine) as session:  # the new columns take values
        credential = session.get(Credential, "c1")
        assert credential is not None
        credential.active = False
        credential.lifecycle_templates = {"deactivate": "ssh/linux-lock"}
        session.add(credential)
    with Session(engine) as session:
        stored = session.get(Credential, "c1")
        assert stored is not None and stored.active is False
        assert stored.lifecycle_templates == {"deactivate": "ssh/linux-lock"}
    make_engine(empty_database).dispose()  # starting again changes nothing
    engine.dispose()


def test_a_store_before_ssh_keys_holds_passwords_after_migrating(empty_database: str) -> None:
    """The ssh-key step: every existing credential is a password credential with no key
    targets, every policy makes ed25519 keys, no operation has key results."""
    dialect = "postgresql" if empty_database.startswith("postgresql") else "sqlite"
    old = create_engine(empty_database)
    with old.begin() as conn:
        run_sql(conn, (SCHEMAS / f"v6_{dialect}.sql").read_text())
        conn.exec_driver_sql("INSERT INTO schemaversion (id, version) VALUES (1, 6)")
        run_sql(conn, V6_ROWS)
        run_sql(
            conn,
            "INSERT INTO policy (id, name, length, lowercase, uppercase, digits, symbols, "
            "exclude, max_attempts, retry_interval_seconds, backoff, connect_timeout_seconds, "
            "read_timeout_seconds, lockout_budget, lockout_window_seconds, "
            "max_concurrent_operations, jitter_seconds, paused, created_at) VALUES ('p1', "
            "'linux', 24, true, true, true, true, '', 5, 10, 2, 10, 30, 3, 900, 2, 0, false, "
            "'2026-11-01 09:00:00')",
        )
    old.dispose()

    engine = make_engine(empty_database)

    with Session(engine) as session:
        credential = session.get(Credential, "c1")
        assert credential is not None
        assert (credential.secret_type, credential.key_targets) == ("password", [])
        assert credential.key_remove_template is None
        policy = session.get(Policy, "p1")
        assert policy is not None and (policy.key_type, policy.key_bits) == ("ed25519", None)
    assert "key_results" in {c["name"] for c in inspect(engine).get_columns("operation")}
    assert current_version(engine) == LATEST
    engine.dispose()


def test_a_store_before_tasks_gets_the_task_tables_and_keeps_its_operations(
    empty_database: str,
) -> None:
    """Step 11 (tasks): the task, task run and task result tables are new; what exists stays,
    and an operation of kind task fits the operation table as it was."""
    dialect = "postgresql" if empty_database.startswith("postgresql") else "sqlite"
    old = create_engine(empty_database)
    with old.begin() as conn:
        run_sql(conn, (SCHEMAS / f"v6_{dialect}.sql").read_text())
        conn.exec_driver_sql("INSERT INTO schemaversion (id, version) VALUES (1, 6)")
        run_sql(conn, V6_ROWS)
    old.dispose()

    engine = make_engine(empty_database)

    assert {"task", "taskrun", "taskresult"} <= set(inspect(engine).get_table_names())
    assert current_version(engine) == LATEST
    with session_scope(engine) as session:
        session.add(Task(id="t1", name="uptime", template="ssh/uptime", executor="ssh",
                         credential_ids=["c1"]))  # fmt: skip
        session.add(
            Operation(id="o9", credential_id="c1", kind="task", workflow_id="keyturn-task-r1-c1")
        )
    with Session(engine) as session:
        task = session.get(Task, "t1")
        assert task is not None and (task.credential_ids, task.schedule) == (["c1"], None)
        operation = session.get(Operation, "o9")
        assert operation is not None and operation.kind == "task"
    engine.dispose()


def test_operations_of_a_store_before_certificates_keep_their_attempts(
    empty_database: str,
) -> None:
    """The certificates step: an operation may act on a certificate instead of a credential, so
    its credential becomes optional (SQLite rebuilds the table); every operation, its attempts
    and their link, and the table's indexes stay."""
    dialect = "postgresql" if empty_database.startswith("postgresql") else "sqlite"
    old = create_engine(empty_database)
    with old.begin() as conn:
        run_sql(conn, (SCHEMAS / f"v6_{dialect}.sql").read_text())
        conn.exec_driver_sql("INSERT INTO schemaversion (id, version) VALUES (1, 6)")
        run_sql(conn, V6_ROWS)
        conn.exec_driver_sql(
            "INSERT INTO operation (id, credential_id, kind, trigger, status, workflow_id, "
            "created_at, gate_seq) VALUES ('o1', 'c1', 'change', 'manual', 'SUCCEEDED', 'w', "
            "'2026-11-01 10:00:00', 0)"
        )
        conn.exec_driver_sql(
            "INSERT INTO attempt (id, operation_id, step, number, started_at, outcome, "
            "transcript) VALUES ('a1', 'o1', 'change', 1, '2026-11-01 10:00:00', 'succeeded', "
            "'ok')"
        )
    old.dispose()

    engine = make_engine(empty_database)

    columns = {c["name"]: c for c in inspect(engine).get_columns("operation")}
    assert columns["credential_id"]["nullable"] and "certificate_id" in columns
    indexes = {i["name"] for i in inspect(engine).get_indexes("operation")}
    assert {"ix_operation_credential_id", "ix_operation_certificate_id"} <= indexes
    with Session(engine) as session:
        kept = session.get(Operation, "o1")
        assert kept is not None and kept.on_credential == "c1"
        attempts = session.exec(select(Attempt).where(Attempt.operation_id == "o1")).all()
        assert [a.id for a in attempts] == ["a1"]
    with session_scope(engine) as session:  # an operation of a certificate is storable
        session.add(
            Operation(
                id="o2", credential_id=None, certificate_id="cert-1", kind="cert-sign",
                workflow_id="keyturn-cert-cert-1",
            )
        )  # fmt: skip
    if dialect == "sqlite":
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    with session_scope(engine) as session:  # and the link from attempts still holds
        session.add(Attempt(id="a2", operation_id="o1", step="verify", number=2))
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        session.add(Attempt(id="a3", operation_id="nowhere", step="verify", number=1))
    assert current_version(engine) == LATEST
    engine.dispose()


def test_a_store_before_device_slot_claims_gets_their_tables(empty_database: str) -> None:
    """The device-slots step: its two tables are new, and claims work on a migrated store."""
    dialect = "postgresql" if empty_database.startswith("postgresql") else "sqlite"
    old = create_engine(empty_database)
    with old.begin() as conn:
        run_sql(conn, (SCHEMAS / f"v6_{dialect}.sql").read_text())
        conn.exec_driver_sql("INSERT INTO schemaversion (id, version) VALUES (1, 6)")
    old.dispose()

    engine = make_engine(empty_database)

    tables = set(inspect(engine).get_table_names())
    assert {"deviceslotgate", "deviceslotclaim"} <= tables
    with session_scope(engine) as session:
        request = SlotRequest("d1", "op/1", WorkflowRef("wf", "run"), 1, "2026-11-30/op")
        assert device_slots.claim(session, request) == (True, [])
    assert current_version(engine) == LATEST
    engine.dispose()
