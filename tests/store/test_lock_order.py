"""The order in which a transaction takes the store's locks (store/row_locks.py), on PostgreSQL,
where two transactions taking two locks in opposite orders deadlock. SQLite serialises every
writer on one lock, so it has no order to keep and is not run here.

An operation's begin step locks the audit trail's head (its events) before its device's slots
(its claim); a verify's record must do the same: it commits and records (events) before it
gives its slot back. Kept, a record that waits for the head holds no device lock meanwhile.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from activities.executor_steps import ExecutorActivities, _AttemptWrites
from activities.store_steps import StoreActivities
from keyturn.zones import StepQueues
from store import attempts, audit, device_slots, gate
from store.engine import make_engine, session_scope
from store.models import Credential, DeviceSlotGate, SecretState
from store.row_locks import lock_row
from store.vault import Vault
from tests.servers.postgresql import PostgresCluster
from tests.store.helpers import a_credential
from workflows.contracts import CommitInput, SlotRelease, SlotRequest, WorkflowRef


@pytest.fixture
def engine(pg_cluster: PostgresCluster) -> Iterator[Engine]:
    with pg_cluster.new_databases() as (name,):
        engine = make_engine(pg_cluster.url(name, driver="postgresql+psycopg"))
        try:
            yield engine
        finally:
            engine.dispose()


def _verified_change_holding_a_slot(engine: Engine) -> tuple[str, str, str]:
    """An operation prepared (its pending secret stored) and holding its device's one slot:
    (operation, device, slot token)."""
    vault = Vault(secrets.token_bytes(32))
    credential_id = a_credential(engine)
    operation_id, token = secrets.token_hex(8), secrets.token_hex(8)
    with session_scope(engine) as session:
        credential = session.get(Credential, credential_id)
        assert credential is not None
        device_id = credential.device_id
        vault.add(session, credential_id, "Old-secret-1", SecretState.CURRENT)
        request = gate.Registration(operation_id, credential_id, "change", "manual", "wf", None)
        gate.admitted(session, request)
        StoreActivities(engine, vault, StepQueues("keyturn"), heartbeat_seconds=10.0).prepared(
            session, operation_id
        )
        holder = WorkflowRef("wf", "run")
        held, _ = device_slots.claim(session, SlotRequest(device_id, token, holder, 1, "1"))
        assert held
    return operation_id, device_id, token


@pytest.mark.parametrize("commits", [True, False], ids=["committing", "leaving-the-commit"])
def test_a_verify_record_waiting_for_the_audit_trail_holds_no_device_lock(
    engine: Engine, commits: bool
) -> None:
    """The verify's record, which gives the slot back, with the commit or without (a change a
    retry found already applied is committed by the workflow's own step)."""
    operation_id, device_id, token = _verified_change_holding_a_slot(engine)
    with session_scope(engine) as session:
        attempt_id = attempts.open_attempt(session, operation_id, "verify", 1)
    writes = _AttemptWrites(
        slot=SlotRelease(device_id, token),
        commit=CommitInput(operation_id, "verified") if commits else None,
    )
    steps = ExecutorActivities(engine, Vault(secrets.token_bytes(32)))

    def record_the_verify() -> None:
        steps._finish_attempt(attempt_id, "succeeded", None, "", writes=writes)

    with Session(engine) as holding_the_head, ThreadPoolExecutor(1) as pool:
        audit.record(holding_the_head, "test.holds_the_head")  # locked until it ends
        recording = pool.submit(record_the_verify)
        try:
            _until_a_transaction_waits_for_a_lock(engine)  # the record, for the head
            # Another operation's begin step on the device locks its slots: not held by the
            # waiting record (it would wait for it, and the record for the head it holds).
            with Session(engine) as beginning:
                beginning.execute(text("SET LOCAL lock_timeout = '5s'"))
                lock_row(beginning, DeviceSlotGate, device_id)
                beginning.rollback()
        finally:
            holding_the_head.rollback()
        recording.result(timeout=30)

    assert (writes.committed is not None and writes.committed.committed) == commits
    assert writes.handed == []


def _until_a_transaction_waits_for_a_lock(engine: Engine) -> None:
    deadline = time.monotonic() + 30
    while True:
        with engine.connect() as connection:
            waiting = connection.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            ).scalar_one()
        if waiting:
            return
        assert time.monotonic() < deadline, "no transaction waited for a lock"
        time.sleep(0.02)
