"""An operation's attempts: opened, finished with their outcome, each finish an audit event."""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import select

from store import attempts, audit
from store.engine import session_scope
from store.models import Attempt, AuditEvent
from tests.store.helpers import a_credential, registered, row_of


def _operation(engine: Engine) -> str:
    return registered(engine, a_credential(engine))


def _finished(engine: Engine, attempt_id: str) -> Attempt:
    return row_of(engine, Attempt, attempt_id)


def test_an_attempt_is_finished_in_one_statement_and_audited(engine: Engine) -> None:
    """Finishing does not read the attempt first: one UPDATE answers what its event names."""
    operation_id = _operation(engine)
    with session_scope(engine) as session:
        attempt_id = attempts.open_attempt(session, operation_id, "verify", 2)
    seen: list[str] = []

    def count(_c: object, _cu: object, statement: str, *_: object) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", count)
    try:
        with session_scope(engine) as session:
            whose = attempts.Whose("c", "d", "admin")
            attempts.finish_attempt(session, attempt_id, "AuthFailed", "refused", "log", whose)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert [s for s in seen if "attempt" in s.split()[:4]] == [seen[0]]
    assert seen[0].startswith("UPDATE attempt SET") and "RETURNING" in seen[0]
    finished = _finished(engine, attempt_id)
    assert (finished.outcome, finished.detail, finished.transcript) == (
        "AuthFailed",
        "refused",
        "log",
    )
    assert finished.finished_at is not None
    with session_scope(engine) as session:
        recorded = session.exec(
            select(AuditEvent).where(AuditEvent.operation_id == operation_id)
        ).all()
    last = recorded[-1]
    assert (last.event, last.outcome, last.principal) == ("attempt.verify", "failed", "admin")
    assert last.detail == {"number": 2, "result": "AuthFailed"}
    assert audit.verify(engine)[1] is None


def test_an_attempt_opened_and_finished_in_one_transaction(engine: Engine) -> None:
    """A step whose job cannot be loaded opens and finishes its attempt in one transaction:
    the new row is written before it is finished."""
    operation_id = _operation(engine)
    with session_scope(engine) as session:
        attempt_id = attempts.open_attempt(session, operation_id, "change", 1)
        attempts.finish_attempt(session, attempt_id, "ConfigurationError", "no template", "")
    finished = _finished(engine, attempt_id)
    assert (finished.step, finished.outcome) == ("change", "ConfigurationError")


def test_opening_an_attempt_closes_one_of_the_step_a_lost_worker_left_running(
    engine: Engine,
) -> None:
    """A worker lost mid-attempt leaves it running; the step's next attempt says it was cut
    off. A running attempt of another step of the operation is left alone."""
    operation_id = _operation(engine)
    with session_scope(engine) as session:
        lost_id = attempts.open_attempt(session, operation_id, "change", 1)
        other_id = attempts.open_attempt(session, operation_id, "probe", 1)
    with session_scope(engine) as session:
        next_id = attempts.open_attempt(session, operation_id, "change", 2)
    lost = _finished(engine, lost_id)
    assert (lost.outcome, lost.detail) == (
        "WorkerLost",
        "the worker running this attempt stopped before it finished",
    )
    assert lost.finished_at is not None and lost.finished_at >= lost.started_at
    assert _finished(engine, other_id).outcome == "running"
    opened = _finished(engine, next_id)
    assert (opened.step, opened.number, opened.outcome, opened.finished_at) == (
        "change",
        2,
        "running",
        None,
    )
