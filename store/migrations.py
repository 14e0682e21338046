"""Schema migrations: a store created by an earlier Keyturn is brought up to date at startup
(and by ``keyturn migrate``).

Alembic runs them: each schema version is a revision in ``store/schema/versions`` that runs one
step below, and the store records where it stands in Alembic's ``alembic_version`` table. A fresh
store is created whole by ``create_all`` and stamped with the newest revision. A store of a
release before Alembic is stamped with the version it recorded in ``schemaversion`` (or 1 when
it recorded none) and upgraded from there. Every step runs once, in order, in one transaction with
the version it reaches. Steps only add (columns, enum values): a process of the previous release
keeps working against a migrated store while a rolling upgrade finishes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from store.audit import GENESIS, chain_hash
from store.models import AuditEvent, SchemaVersion

if TYPE_CHECKING:
    from alembic.config import Config


def _v2_one_writer_per_credential(conn: Connection) -> None:
    """The credential gate and commit's compare-and-set."""
    columns = {
        "run_id": "VARCHAR",
        "gate_seq": "INTEGER NOT NULL DEFAULT 0",
        "gate_state": "VARCHAR",
        "waiting_for": "VARCHAR",
        "base_version_id": "VARCHAR",
    }
    _add_columns(conn, "operation", columns)
    if conn.dialect.name == "postgresql":
        # SQLAlchemy stores enum members by name; PostgreSQL keeps them in a native enum type.
        conn.execute(text("ALTER TYPE operationstatus ADD VALUE IF NOT EXISTS 'QUEUED'"))


def _v3_triggers(conn: Connection) -> None:
    """Policy fields of the automatic triggers, and the credential columns sweeps page by.
    The sessions table is new: create_all made it."""
    postgresql = conn.dialect.name == "postgresql"
    timestamp = "TIMESTAMP WITH TIME ZONE" if postgresql else "DATETIME"
    false = "false" if postgresql else "0"
    _add_columns(
        conn,
        "policy",
        {
            "change_every_seconds": "INTEGER",
            "verify_every_seconds": "INTEGER",
            "change_window": "JSON",
            "jitter_seconds": "INTEGER NOT NULL DEFAULT 0",
            "change_after_view_seconds": "INTEGER",
            "change_after_session_seconds": "INTEGER",
            "max_session_wait_seconds": "INTEGER",
            "paused": f"BOOLEAN NOT NULL DEFAULT {false}",
        },
    )
    _add_columns(conn, "credential", {"secret_changed_at": timestamp, "verified_at": timestamp})
    # The current secret's age is when it became current; until a verify runs, that is also
    # the last time it was known to log in.
    conn.execute(
        text(
            "UPDATE credential SET secret_changed_at = COALESCE((SELECT MAX(v.changed_at) "
            "FROM secretversion v WHERE v.credential_id = credential.id "
            "AND v.state = 'CURRENT'), credential.created_at) WHERE secret_changed_at IS NULL"
        )
    )
    conn.execute(
        text("UPDATE credential SET verified_at = secret_changed_at WHERE verified_at IS NULL")
    )
    for name, column in (
        ("ix_credential_expiry", "secret_changed_at"),
        ("ix_credential_verify", "verified_at"),
    ):
        conn.execute(
            text(f"CREATE INDEX IF NOT EXISTS {name} ON credential (policy_id, {column}, id)")
        )


def _v4_recovery_by_hand(conn: Connection) -> None:
    """Secret versions an administrator can choose from, supplied secrets, verify after restore."""
    _add_columns(
        conn,
        "secretversion",
        {"last_login_ok_at": "TIMESTAMP", "last_login_ok_operation_id": "VARCHAR"},
    )
    _add_columns(conn, "operation", {"source_version_id": "VARCHAR"})
    _add_columns(conn, "credential", {"needs_verify": "BOOLEAN NOT NULL DEFAULT false"})


def _v5_governance(conn: Connection) -> None:
    """The hash-chained audit trail, who requested an operation and where its outcome goes.
    Events written before the chain existed are chained now, in id order."""
    _add_columns(
        conn,
        "auditevent",
        {
            "principal": "VARCHAR NOT NULL DEFAULT 'keyturn'",
            "outcome": "VARCHAR NOT NULL DEFAULT 'ok'",
            "device_id": "VARCHAR",
            "prev_hash": "VARCHAR NOT NULL DEFAULT ''",
            "hash": "VARCHAR NOT NULL DEFAULT ''",
        },
    )
    _add_columns(conn, "operation", {"requested_by": "VARCHAR", "callback_url": "VARCHAR"})
    table = AuditEvent.__table__  # type: ignore[attr-defined]
    previous = GENESIS
    last_id = 0
    for values in conn.execute(table.select().order_by(table.c.id)).mappings().all():
        row = AuditEvent.model_validate({**values, "prev_hash": previous})
        row.hash = chain_hash(row)
        conn.execute(
            table.update().where(table.c.id == row.id).values(prev_hash=previous, hash=row.hash)
        )
        previous, last_id = row.hash, row.id or 0
    conn.execute(text("DELETE FROM audithead"))
    conn.execute(
        text("INSERT INTO audithead (id, last_id, hash) VALUES (1, :last, :hash)"),
        {"last": last_id, "hash": previous},
    )


def _add_columns(conn: Connection, table: str, columns: dict[str, str]) -> None:
    present = {c["name"] for c in inspect(conn).get_columns(table)}
    for name, ddl in columns.items():
        if name not in present:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}"))


def _append_only_audit(conn: Connection) -> None:
    """The store refuses to update or delete an audit event (idempotent, run at every start)."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text(
                "CREATE OR REPLACE FUNCTION keyturn_audit_append_only() RETURNS trigger AS $$ "
                "BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(text("DROP TRIGGER IF EXISTS auditevent_append_only ON auditevent"))
        conn.execute(
            text(
                "CREATE TRIGGER auditevent_append_only BEFORE UPDATE OR DELETE ON auditevent "
                "FOR EACH ROW EXECUTE FUNCTION keyturn_audit_append_only()"
            )
        )
        return
    for action in ("UPDATE", "DELETE"):
        conn.execute(
            text(
                f"CREATE TRIGGER IF NOT EXISTS auditevent_no_{action.lower()} BEFORE {action} "
                "ON auditevent BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END"
            )
        )


def _v6_allow_insecure_transport(conn: Connection) -> None:
    """Cleartext transport is refused unless a device allows it; existing devices do not."""
    false = "false" if conn.dialect.name == "postgresql" else "0"
    _add_columns(conn, "device", {"allow_insecure_transport": f"BOOLEAN NOT NULL DEFAULT {false}"})


def _v7_operation_callbacks(conn: Connection) -> None:
    """Every request's callback URL is registered on its operation (the operationcallback
    table, which create_all made), not only the starting request's: the one URL an operation
    had moves there, first on its list. An ended operation's list is closed. The old column
    stays, unread, for a previous release's process during a rolling upgrade."""
    false = "false" if conn.dialect.name == "postgresql" else "0"
    true = "true" if conn.dialect.name == "postgresql" else "1"
    _add_columns(conn, "operation", {"callbacks_closed": f"BOOLEAN NOT NULL DEFAULT {false}"})
    conn.execute(
        text(
            "INSERT INTO operationcallback (operation_id, position, url, created_at) "
            "SELECT o.id, 1, o.callback_url, o.created_at FROM operation o "
            "WHERE o.callback_url IS NOT NULL AND NOT EXISTS (SELECT 1 FROM operationcallback c "
            "WHERE c.operation_id = o.id)"
        )
    )
    conn.execute(
        text(f"UPDATE operation SET callbacks_closed = {true} WHERE finished_at IS NOT NULL")
    )


def _v8_activation_and_jit(conn: Connection) -> None:
    """Credential state moved by activate/deactivate, just-in-time accounts and their time to
    live, per-credential lifecycle templates, and the policy's lock after a session."""
    postgresql = conn.dialect.name == "postgresql"
    timestamp = "TIMESTAMP WITH TIME ZONE" if postgresql else "DATETIME"
    true, false = ("true", "false") if postgresql else ("1", "0")
    json_empty = "JSON NOT NULL DEFAULT '{}'"
    _add_columns(
        conn,
        "credential",
        {
            "active": f"BOOLEAN NOT NULL DEFAULT {true}",
            "jit_until": timestamp,
            "lifecycle_templates": json_empty,
        },
    )
    _add_columns(conn, "operation", {"ttl_seconds": "INTEGER"})
    _add_columns(conn, "policy", {"lock_after_session": f"BOOLEAN NOT NULL DEFAULT {false}"})


def _v9_ssh_keys(conn: Connection) -> None:
    """SSH keys as secrets: a credential's secret type and key targets, a policy's key type,
    an operation's per-device key results. Existing credentials hold passwords."""
    _add_columns(
        conn,
        "credential",
        {
            "secret_type": "VARCHAR NOT NULL DEFAULT 'password'",
            "key_targets": "JSON NOT NULL DEFAULT '[]'",
            "key_remove_template": "VARCHAR",
        },
    )
    _add_columns(
        conn, "policy", {"key_type": "VARCHAR NOT NULL DEFAULT 'ed25519'", "key_bits": "INTEGER"}
    )
    _add_columns(conn, "operation", {"key_results": "JSON"})


def _v10_principals(conn: Connection) -> None:
    """Template review (maker-checker), and profiles. The principal and token tables are new:
    create_all made them. Templates stored before review existed are what ran until now:
    approved. A credential's profile is its device's, whatever an earlier release stored."""
    timestamp = "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"
    _add_columns(
        conn,
        "template",
        {
            "status": "VARCHAR NOT NULL DEFAULT 'pending'",
            "author": "VARCHAR NOT NULL DEFAULT 'keyturn'",
            "reviewed_by": "VARCHAR",
            "reviewed_at": timestamp,
            "approved_at": timestamp,
            "review_note": "VARCHAR",
        },
    )
    conn.execute(
        text(
            "UPDATE template SET status = 'approved', approved_at = created_at, "
            "reviewed_at = created_at, reviewed_by = 'keyturn' WHERE approved_at IS NULL"
        )
    )
    conn.execute(
        text(
            "UPDATE credential SET profile = (SELECT d.profile FROM device d "
            "WHERE d.id = credential.device_id)"
        )
    )


def _v11_tasks(conn: Connection) -> None:
    """The task manager: tasks, their runs and each run's per-credential results. The three
    tables are new (create_all made them); nothing that exists changes. Operations of kind
    ``task`` fit the operation table as it is."""


def _v12_certificates(conn: Connection) -> None:
    """Certificates and their CAs (new tables: create_all made them). A certificate's actions
    are operations that act on no credential: an operation names its certificate instead, so
    its credential becomes optional."""
    _add_columns(conn, "operation", {"certificate_id": "VARCHAR"})
    conn.execute(
        text("CREATE INDEX IF NOT EXISTS ix_operation_certificate_id ON operation (certificate_id)")
    )
    if conn.dialect.name == "postgresql":
        conn.execute(text("ALTER TABLE operation ALTER COLUMN credential_id DROP NOT NULL"))
        return
    _drop_sqlite_not_null(
        conn, "operation", "credential_id VARCHAR NOT NULL", "credential_id VARCHAR"
    )


def _drop_sqlite_not_null(conn: Connection, table: str, before: str, after: str) -> None:
    """SQLite cannot drop a NOT NULL in place. Rebuilding the table would trip the foreign keys
    of the tables referring to it (they cannot be switched off inside a transaction); removing
    a NOT NULL changes nothing on disk, so SQLite's documented way is to edit the table's
    definition in its schema and bump the schema version (https://sqlite.org/lang_altertable.html,
    "Making Other Kinds Of Table Schema Changes"). Idempotent."""
    ddl = conn.execute(
        text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"), {"t": table}
    ).scalar_one()
    if before not in ddl:
        return
    version = conn.execute(text("PRAGMA schema_version")).scalar_one()
    conn.execute(text("PRAGMA writable_schema = ON"))
    conn.execute(
        text("UPDATE sqlite_master SET sql = :sql WHERE type = 'table' AND name = :t"),
        {"sql": ddl.replace(before, after, 1), "t": table},
    )
    conn.execute(text(f"PRAGMA schema_version = {int(version) + 1}"))
    conn.execute(text("PRAGMA writable_schema = OFF"))


# STEPS[n] takes a store from version n + 1 to n + 2.


def _v13_device_slots_in_the_store(conn: Connection) -> None:
    """A device's slots are claims in the store (store/device_slots.py), granted in the step
    that claims them when one is free, instead of by a semaphore workflow per device. The two
    tables are new (create_all made them); nothing that exists changes."""


STEPS: tuple[Callable[[Connection], None], ...] = (
    _v2_one_writer_per_credential,
    _v3_triggers,
    _v4_recovery_by_hand,
    _v5_governance,
    _v6_allow_insecure_transport,
    _v7_operation_callbacks,
    _v8_activation_and_jit,
    _v9_ssh_keys,
    _v10_principals,
    _v11_tasks,
    _v12_certificates,
    _v13_device_slots_in_the_store,
)
LATEST = len(STEPS) + 1


def migrate(engine: Engine) -> int:
    """Create what is missing and run every step the store has not had; the version reached."""
    existed = inspect(engine).has_table("operation")
    SQLModel.metadata.create_all(engine)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two processes starting together (worker and API) migrate one after the other.
            conn.execute(text("SELECT pg_advisory_xact_lock(7419)"))
        recorded = _recorded_revision(conn)
        if recorded != revision_of(LATEST):
            _upgrade(conn, existed, recorded)
        _append_only_audit(conn)
        # Kept for the backup format and for tools of earlier releases, which read the version
        # there; Alembic's own table is where migrations look.
        table = SchemaVersion.__table__  # type: ignore[attr-defined]
        conn.execute(table.delete())
        conn.execute(table.insert().values(id=1, version=LATEST))
    return LATEST


def _upgrade(conn: Connection, existed: bool, recorded: str | None) -> None:
    """Alembic, from where the store stands (``recorded``: the revision it records, None for
    none) to the newest revision. Imported here: a store
    already up to date (every start but the first after an upgrade) needs none of it, and each
    process that makes an engine, the worker and the API, would otherwise hold its ~11 MiB."""
    from alembic import command

    alembic = alembic_config(conn)
    if recorded is None:
        row = conn.execute(text("SELECT version FROM schemaversion WHERE id = 1")).first()
        version = int(row[0]) if row else (1 if existed else LATEST)
        command.stamp(alembic, revision_of(version))
    command.upgrade(alembic, "head")


def _recorded_revision(conn: Connection) -> str | None:
    """The revision Alembic recorded in its table (a linear history: one row), if any."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


def current_version(engine: Engine) -> int:
    """The schema version the store is at, as Alembic recorded it."""
    with engine.connect() as conn:
        revision = _recorded_revision(conn)
    return int(revision) if revision is not None else 0


def revision_of(version: int) -> str:
    """The Alembic revision of a schema version: version 6 is revision "0006"."""
    return f"{version:04d}"


def alembic_config(conn: Connection | None = None) -> Config:
    """Alembic's configuration for the store, running on ``conn`` (``store/schema/env.py``)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "schema"))
    config.attributes["connection"] = conn
    return config


def step_named(name: str) -> int:
    """The position of a step in STEPS, for a revision that names its step rather than counting
    (so that steps of parallel releases can be reordered without touching it)."""
    return [step.__name__ for step in STEPS].index(name)
