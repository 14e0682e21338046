"""Schema migrations: a store created by an earlier Keyturn is brought up to date at startup.

A fresh store is created whole by ``create_all`` and stamped with the latest version. An existing
one is at version 1 (the schema before versions were recorded) or at the version it records, and
each later step runs once, in order, in one transaction with the version it reaches. Steps only
add (columns, enum values): a process of the previous release keeps working against a migrated
store while a rolling upgrade finishes.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from store.audit import GENESIS, chain_hash
from store.models import AuditEvent, SchemaVersion


def _v2_one_writer_per_credential(conn: Connection) -> None:
    """The credential gate and commit's compare-and-set."""
    columns = {
        "run_id": "VARCHAR",
        "gate_seq": "INTEGER NOT NULL DEFAULT 0",
        "gate_state": "VARCHAR",
        "waiting_for": "VARCHAR",
        "base_version_id": "VARCHAR",
    }
    present = {c["name"] for c in inspect(conn).get_columns("operation")}
    for name, ddl in columns.items():
        if name not in present:
            conn.execute(text(f"ALTER TABLE operation ADD COLUMN {name} {ddl}"))
    if conn.dialect.name == "postgresql":
        # SQLAlchemy stores enum members by name; PostgreSQL keeps them in a native enum type.
        conn.execute(text("ALTER TYPE operationstatus ADD VALUE IF NOT EXISTS 'QUEUED'"))


def _v3_governance(conn: Connection) -> None:
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


# STEPS[n] takes a store from version n + 1 to n + 2.
STEPS: tuple[Callable[[Connection], None], ...] = (_v2_one_writer_per_credential, _v3_governance)
LATEST = len(STEPS) + 1


def migrate(engine: Engine) -> int:
    """Create what is missing and run every step the store has not had; the version reached."""
    existed = inspect(engine).has_table("operation")
    SQLModel.metadata.create_all(engine)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two processes starting together (worker and API) migrate one after the other.
            conn.execute(text("SELECT pg_advisory_xact_lock(7419)"))
        row = conn.execute(text("SELECT version FROM schemaversion WHERE id = 1")).first()
        version = int(row[0]) if row else (1 if existed else LATEST)
        for step in STEPS[version - 1 :]:
            step(conn)
        _append_only_audit(conn)
        table = SchemaVersion.__table__  # type: ignore[attr-defined]
        if row is None:
            conn.execute(table.insert().values(id=1, version=LATEST))
        elif version != LATEST:
            conn.execute(table.update().where(table.c.id == 1).values(version=LATEST))
    return LATEST
