"""The audit trail is append-only and hash-chained: altering or removing a row is found, and
`keyturn audit verify` names the first broken event."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from store import audit
from store.engine import make_engine, session_scope
from store.models import AuditEvent, Credential, Device


def _seed(engine: Engine, events: int) -> None:
    with session_scope(engine) as db:
        db.add(Device(id="d1", name="web-1", address="127.0.0.1", port=22, executor="ssh"))
        db.flush()
        db.add(
            Credential(
                id="c1", device_id="d1", username="app", change_template="ssh/linux-passwd",
                verify_template="ssh/verify-login",
            )
        )  # fmt: skip
    for n in range(events):
        with session_scope(engine) as db:
            audit.record(db, "test.event", credential_id="c1", principal="admin", n=n)


def _verify_cli(url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEYTURN_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "starter.cli", "audit", "verify"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _tamper(engine: Engine, statement: str) -> None:
    """What someone with write access to the database could do: lift the guard, change rows."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ALTER TABLE auditevent DISABLE TRIGGER auditevent_append_only")
        else:
            conn.exec_driver_sql("DROP TRIGGER auditevent_no_update")
            conn.exec_driver_sql("DROP TRIGGER auditevent_no_delete")
        conn.exec_driver_sql(statement)


def test_events_chain_and_name_who_and_where(engine: Engine) -> None:
    _seed(engine, 3)
    checked, broken = audit.verify(engine)
    assert (checked, broken) == (3, None)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, principal, device_id, prev_hash, hash FROM auditevent ORDER BY id")
        ).all()
    assert [r.id for r in rows] == [1, 2, 3]
    assert all(r.principal == "admin" and r.device_id == "d1" for r in rows)
    assert rows[0].prev_hash == audit.GENESIS
    assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]


def test_events_of_one_transaction_chain_among_those_of_others(engine: Engine) -> None:
    """A transaction that records several events locks the trail's head once; transactions
    racing it, and a session that goes on into a new transaction, still chain."""
    _seed(engine, 0)

    def writer(k: int) -> None:
        for i in range(5):
            with session_scope(engine) as db:
                for j in range(3):
                    audit.record(
                        db, "test.event", credential_id="c1", principal="admin", k=k, i=i, j=j
                    )

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(writer, range(4)))
    with Session(engine) as db:
        for n in range(2):  # one session, two transactions
            audit.record(db, "test.event", credential_id="c1", principal="admin", n=n)
            db.commit()

    assert audit.verify(engine) == (4 * 5 * 3 + 2, None)
    with engine.connect() as conn:
        ids = conn.execute(text("SELECT id FROM auditevent ORDER BY id")).scalars().all()
    assert ids == list(range(1, 4 * 5 * 3 + 2 + 1))


def test_the_store_refuses_to_change_an_event(engine: Engine) -> None:
    _seed(engine, 2)
    for statement in ("UPDATE auditevent SET outcome = 'x'", "DELETE FROM auditevent"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.exec_driver_sql(statement)
    assert audit.verify(engine) == (2, None)


@pytest.mark.parametrize(
    ("statement", "named"),
    [
        ("UPDATE auditevent SET outcome = 'failed' WHERE id = 3", "event 3 was altered"),
        ("UPDATE auditevent SET detail = '{\"n\": 9}' WHERE id = 2", "event 2 was altered"),
        ("DELETE FROM auditevent WHERE id = 3", "event 3 is missing"),
        ("DELETE FROM auditevent WHERE id = 5", "events 5 to 5 are missing"),
    ],
)
def test_verify_names_the_first_broken_event(
    empty_database: str, statement: str, named: str
) -> None:
    engine = make_engine(empty_database)
    try:
        _seed(engine, 5)
        assert _verify_cli(empty_database).returncode == 0
        _tamper(engine, statement)
        result = _verify_cli(empty_database)
        assert result.returncode == 1, result.stdout
        assert named in result.stderr, result.stderr
    finally:
        engine.dispose()


def test_a_rehashed_row_is_still_found(engine: Engine) -> None:
    """Altering an event and recomputing its own hash breaks the link from the next one."""
    _seed(engine, 4)
    with Session(engine) as db:
        row = db.get(AuditEvent, 2)
        assert row is not None
        forged = AuditEvent.model_validate({**row.model_dump(), "outcome": "forged"})
    _tamper(
        engine,
        f"UPDATE auditevent SET outcome = 'forged', hash = '{audit.chain_hash(forged)}' "
        "WHERE id = 2",
    )
    checked, broken = audit.verify(engine)
    assert checked == 2 and broken is not None and broken.event_id == 2


def test_verify_on_a_store_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    make_engine(url).dispose()
    result = _verify_cli(url)
    assert result.returncode == 0 and "intact: 0 events" in result.stdout


@pytest.mark.parametrize("savepoint", ["released", "rolled-back"])
def test_events_inside_and_after_a_savepoint_keep_the_chain(engine: Engine, savepoint: str) -> None:
    """A transaction appends, appends inside a savepoint (released or rolled back), and appends
    again: the last append reads the head the savepoint left, not the one held before it."""
    _seed(engine, 1)
    with session_scope(engine) as db:
        audit.record(db, "test.before", credential_id="c1", principal="admin")
        with contextlib.suppress(_RolledBack), db.begin_nested():
            audit.record(db, "test.inside", credential_id="c1", principal="admin")
            if savepoint == "rolled-back":
                raise _RolledBack()
        last = audit.record(db, "test.after", credential_id="c1", principal="admin")

    assert last == (4 if savepoint == "released" else 3)
    assert audit.verify(engine) == (last, None)


class _RolledBack(Exception):
    pass
