"""The credential gate and commit's compare-and-set, on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col
from temporalio.exceptions import ApplicationError

from activities.store_steps import StoreActivities, commit_in
from keyturn.zones import StepQueues
from store import callbacks, gate
from store.engine import session_scope
from store.models import Credential, CredentialGate, Operation, OperationStatus, SecretState
from store.vault import Vault
from tests.store.helpers import Statements, a_credential, registered, row_of
from workflows.contracts import CommitInput, StepInput

KEY = secrets.token_bytes(32)


def _register(engine: Engine, credential_id: str, kind: str = "change") -> str:
    return registered(engine, credential_id, kind)


def _row(engine: Engine, operation_id: str) -> Operation:
    return row_of(engine, Operation, operation_id)


def test_concurrent_registrations_form_one_queue(engine: Engine) -> None:
    credential_id = a_credential(engine)
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: _register(engine, credential_id), range(8)))
    rows = sorted((_row(engine, i) for i in ids), key=lambda r: r.gate_seq)
    assert [r.gate_state for r in rows] == ["holding"] + ["queued"] * 7
    assert [r.waiting_for for r in rows] == [None] + [r.id for r in rows[:-1]]
    assert rows[1].status == OperationStatus.QUEUED and rows[0].status == OperationStatus.SCHEDULED
    # Registering again (the workflow after the API) changes nothing.
    again = gate.admit(
        engine, gate.Registration(rows[2].id, credential_id, "change", "manual", "x", "run")
    )
    assert again.queued and again.waiting_for == rows[1].id


def test_leaving_hands_the_gate_on_and_a_canceled_waiter_is_unlinked(engine: Engine) -> None:
    credential_id = a_credential(engine)
    first, second, third = (_register(engine, credential_id) for _ in range(3))
    with session_scope(engine) as session:  # the second leaves while queued (canceled)
        assert gate.leave(session, second) is None
    assert _row(engine, third).waiting_for == first
    with session_scope(engine) as session:
        follower = gate.leave(session, first)
        assert follower is not None and follower.id == third
    with session_scope(engine) as session:  # leaving again answers the same follower
        again = gate.leave(session, first)
        assert again is not None and again.id == third
    assert _row(engine, third).gate_state == "holding"
    fourth = _register(engine, credential_id)
    assert _row(engine, fourth).waiting_for == third


def test_an_operation_whose_workflow_ended_is_abandoned(engine: Engine) -> None:
    credential_id = a_credential(engine)
    first, second = (_register(engine, credential_id) for _ in range(2))
    with session_scope(engine) as session:
        follower = gate.abandon(session, first, "terminated")
        assert follower is not None and follower.id == second
    dead = _row(engine, first)
    assert dead.status == OperationStatus.FAILED and dead.error_type == "WorkflowEnded"


def test_commit_never_overwrites_a_current_secret_that_moved(engine: Engine) -> None:
    credential_id = a_credential(engine)
    vault = Vault(KEY)
    with session_scope(engine) as session:
        vault.add(session, credential_id, "first", SecretState.CURRENT)
    steps = StoreActivities(engine, vault, StepQueues("queue"), heartbeat_seconds=10.0)
    operation_id = _register(engine, credential_id)
    steps.prepare(StepInput(operation_id))
    with session_scope(engine) as session:  # another writer moves current meanwhile
        newer = vault.add(session, credential_id, "newer", SecretState.PENDING)
        session.flush()
        Vault.promote(session, credential_id, newer.id)

    refused = steps.commit(CommitInput(operation_id, "verified"))

    assert not refused.committed and "moved" in refused.detail
    with session_scope(engine) as session:
        current = Vault.current(session, credential_id)
        assert current is not None and vault.reveal(current) == "newer"
    # A probe showed the target has the pending secret: adopting it is allowed.
    assert steps.commit(CommitInput(operation_id, "adopted", adopt=True)).committed
    pending = _row(engine, operation_id).pending_version_id
    with session_scope(engine) as session:
        current = Vault.current(session, credential_id)
        assert current is not None and current.id == pending


def _join(engine: Engine, operation_id: str, credential_id: str, url: str) -> bool:
    with session_scope(engine) as session:
        return gate.join_callback(session, operation_id, credential_id, url)


def test_a_join_is_told_unless_it_comes_after_the_operation_closed_its_callbacks(
    engine: Engine,
) -> None:
    """Joins race the operation's end: every join the store accepted is on the list the
    operation closed with, and every join after that is refused (the request starts anew)."""
    credential_id = a_credential(engine)
    operation_id = _register(engine, credential_id)
    urls = [f"https://hooks.example.test/{n}" for n in range(24)]

    def close() -> int:
        with session_scope(engine) as session:
            return gate.close_callbacks(session, operation_id)

    with ThreadPoolExecutor(8) as pool:
        joins = [pool.submit(_join, engine, operation_id, credential_id, u) for u in urls[:12]]
        closing = pool.submit(close)
        joins += [pool.submit(_join, engine, operation_id, credential_id, u) for u in urls[12:]]
        told = closing.result()
        accepted = [u for u, j in zip(urls, joins, strict=True) if j.result()]
    with session_scope(engine) as session:
        assert sorted(callbacks.urls(session, operation_id)) == sorted(accepted)
        assert told == len(accepted)
        assert not _join(engine, operation_id, credential_id, "https://hooks.example.test/late")
        assert gate.close_callbacks(session, operation_id) == told  # closing again: the same


def test_a_url_given_twice_is_told_once_and_a_join_may_come_before_the_row(
    engine: Engine,
) -> None:
    credential_id = a_credential(engine)
    operation_id = secrets.token_hex(8)  # its workflow started; no step has registered it yet
    url = "https://hooks.example.test/a"
    assert _join(engine, operation_id, credential_id, url)
    gate.admit(
        engine,
        gate.Registration(
            operation_id, credential_id, "change", "manual", "wf", "run", callback_url=url
        ),
    )
    assert _join(engine, operation_id, credential_id, "https://hooks.example.test/b")
    with session_scope(engine) as session:
        assert callbacks.urls(session, operation_id) == [url, "https://hooks.example.test/b"]
        assert gate.close_callbacks(session, operation_id) == 2


def test_the_begin_step_reads_its_rows_once_under_the_lock(engine: Engine) -> None:
    """Register and prepare share a transaction: the gate is locked first, in one statement
    that answers its row; then the operation and the credential are read once each, under the
    lock (a lifecycle operation ahead may have just deactivated the credential); prepare reads
    the device and the policy with them in one statement, which keeps the two already held."""
    credential_id = a_credential(engine)
    steps = StoreActivities(engine, Vault(KEY), StepQueues("queue"), heartbeat_seconds=10.0)
    operation_id = _register(engine, credential_id)  # the API's registration
    registration = gate.Registration(
        operation_id, credential_id, "change", "manual", f"wf-{operation_id}", "run"
    )
    with Statements(engine) as statements, session_scope(engine) as session:
        admission = gate.admitted(session, registration)
        plan = steps.prepared(session, admission.operation_id)
    assert not admission.queued and plan.device_id == admission.device_id
    joined = statements.count("SELECT operation.", "JOIN device", "WHERE operation.id =")
    assert joined == 1
    assert statements.count("SELECT operation.", "WHERE operation.id =") == 1 + joined
    assert statements.count("SELECT credential.", "WHERE credential.id =") == 1
    assert statements.count("SELECT device.") == statements.count("SELECT policy.") == 0
    assert statements.count("UPDATE credentialgate", "RETURNING") == 1
    assert statements.count("SELECT credentialgate") == 0
    assert statements.first("UPDATE credentialgate") < statements.first("SELECT credential.")


def test_preparing_an_operation_not_in_the_store_fails_for_good(engine: Engine) -> None:
    steps = StoreActivities(engine, Vault(KEY), StepQueues("queue"), heartbeat_seconds=10.0)
    with pytest.raises(ApplicationError, match="operation nope is not in the store") as caught:
        steps.prepare(StepInput("nope"))
    assert caught.value.type == "NotRegistrable" and caught.value.non_retryable


@pytest.mark.parametrize("credential_known", [True, False], ids=["credential-known", "unknown"])
def test_a_committed_departure_locks_the_gate_once_and_hands_it_on(
    engine: Engine, credential_known: bool
) -> None:
    """What a verified change's record does in one transaction: lock the gate and read the
    operation under it, commit, leave (locked already) and close its callbacks. The record
    knows the credential (it loaded the job): the operation is read once, after the lock;
    without it, once to learn whose gate and again under the lock."""
    credential_id = a_credential(engine)
    steps = StoreActivities(engine, Vault(KEY), StepQueues("queue"), heartbeat_seconds=10.0)
    first, second = (_register(engine, credential_id) for _ in range(2))
    steps.prepare(StepInput(first))
    whose = credential_id if credential_known else None
    with Statements(engine) as statements, session_scope(engine) as session:
        # As the record does: what lock_of returns is not kept (the session holds it).
        assert gate.lock_of(session, first, whose) is not None
        assert commit_in(session, CommitInput(first, "verified")).committed
        follower, receivers = gate.depart(session, first, locked=True)
    assert follower is not None and follower.id == second and receivers == 0
    assert statements.count("UPDATE credentialgate", "RETURNING") == 1
    assert statements.count("SELECT credentialgate") == 0
    reads = statements.count("SELECT operation.", "WHERE operation.id =")
    assert reads == (1 if credential_known else 2)
    if credential_known:
        assert statements.first("UPDATE credentialgate") < statements.first("SELECT operation.")
    assert _row(engine, second).gate_state == "holding"
    left = _row(engine, first)
    assert left.gate_state is None and left.status == OperationStatus.SUCCEEDED


def test_a_credential_deactivated_as_its_operation_registers_is_seen_inactive(
    engine: Engine,
) -> None:
    """The begin step reads the credential again once the gate is locked: a lifecycle
    operation ahead may have just deactivated it, and a change must then be refused."""
    credential_id = a_credential(engine)
    steps = StoreActivities(engine, Vault(KEY), StepQueues("queue"), heartbeat_seconds=10.0)
    operation_id = _register(engine, credential_id)
    registration = gate.Registration(
        operation_id, credential_id, "change", "manual", f"wf-{operation_id}", "run"
    )
    with session_scope(engine) as session:
        seen = session.get(Credential, credential_id)  # read before, and kept by this session
        assert seen is not None and seen.active
        with engine.begin() as other:  # the operation ahead commits the deactivation
            other.execute(
                update(Credential).where(col(Credential.id) == credential_id).values(active=False)
            )
        admission = gate.admitted(session, registration)
        with pytest.raises(ApplicationError, match="inactive"):
            steps.prepared(session, admission.operation_id)


def test_an_unknown_credential_is_not_registrable_and_leaves_no_gate_row(engine: Engine) -> None:
    """The gate is locked before the credential is read: for a credential that does not exist
    the lock row it made goes with the rolled-back transaction."""
    missing = secrets.token_hex(8)
    with pytest.raises(gate.NotRegistrable, match=missing):
        gate.admit(engine, gate.Registration("op", missing, "change", "manual", "wf", "run"))
    with session_scope(engine) as session:
        assert session.get(CredentialGate, missing) is None
        assert session.get(Operation, "op") is None


def test_locking_the_gate_of_another_credential_is_refused(engine: Engine) -> None:
    operation_id = _register(engine, a_credential(engine))
    other = a_credential(engine)
    with pytest.raises(ValueError, match="does not act on"), session_scope(engine) as session:
        gate.lock_of(session, operation_id, other)
