"""An operation's attempts: one row per executor call (change, verify, probe, task), opened
before the call and finished with its outcome and redacted transcript, each finish an audit
event. In the caller's transaction: a step opens its attempt in the one that loads its job, and
a change that verifies finishes its change attempt in the one that opens the verify's."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, insert, update
from sqlmodel import Session, select

from executors.base import ConnectFailed
from store import audit
from store.models import Attempt, new_id, utcnow


@dataclass(frozen=True)
class Whose:
    """The ids an attempt's audit event names, when the caller has them (the loaded job): they
    spare the event's lookups."""

    credential_id: str
    device_id: str
    principal: str


def open_attempt(session: Session, operation_id: str, step: str, number: int) -> str:
    """A running attempt; an earlier one of the step still running was cut off by a lost
    worker, and says so."""
    attempt_id = new_id()
    session.execute(_CUT_OFF, {"of_operation": operation_id, "of_step": step, "at": utcnow()})
    # The table's defaults fill in the rest (running, started now); the id is the caller's.
    session.execute(
        _OPEN,
        {"id": attempt_id, "operation_id": operation_id, "step": step, "number": number,
         "transcript": ""},
    )  # fmt: skip
    return attempt_id


def finish_attempt(
    session: Session,
    attempt_id: str,
    outcome: str,
    detail: str | None,
    transcript: str,
    whose: Whose | None = None,
) -> None:
    session.flush()  # an attempt opened in this transaction is written first
    finished = session.execute(
        _FINISH,
        {"attempt_id": attempt_id, "outcome": outcome, "detail": detail,
         "transcript": transcript, "finished_at": utcnow()},
    ).one()  # fmt: skip
    # The outcome's kind only: a target's message stays in the attempt's detail.
    audit.record(
        session,
        f"attempt.{finished.step}",
        operation_id=finished.operation_id,
        outcome="succeeded" if outcome == "succeeded" else "failed",
        number=finished.number,
        result=outcome,
        **(
            {
                "credential_id": whose.credential_id,
                "device_id": whose.device_id,
                "principal": whose.principal,
            }
            if whose is not None
            else {}
        ),
    )


# Opening and finishing are on every attempt's path: statements on the table, made once (ORM
# reads, objects and flushes cost several times as much); finishing answers what its audit
# event names. No store step loads an attempt as an object, so none can be stale. (SQLAlchemy
# 2.0 does not flush before a statement on a table, 2.1 does: finish_attempt flushes itself.)
_ATTEMPTS = Attempt.__table__  # type: ignore[attr-defined]
_OPEN = insert(_ATTEMPTS)
# An earlier attempt of the step still running was cut off by a lost worker: closed as such.
_CUT_OFF = (
    update(_ATTEMPTS)
    .where(
        _ATTEMPTS.c.operation_id == bindparam("of_operation"),
        _ATTEMPTS.c.step == bindparam("of_step"),
        _ATTEMPTS.c.outcome == "running",
    )
    .values(
        outcome="WorkerLost",
        detail="the worker running this attempt stopped before it finished",
        finished_at=bindparam("at"),
    )
)
_FINISH = (
    update(_ATTEMPTS)
    .where(_ATTEMPTS.c.id == bindparam("attempt_id"))
    .values(
        outcome=bindparam("outcome"),
        detail=bindparam("detail"),
        transcript=bindparam("transcript"),
        finished_at=bindparam("finished_at"),
    )
    .returning(_ATTEMPTS.c.operation_id, _ATTEMPTS.c.step, _ATTEMPTS.c.number)
)


def earlier_may_have_sent(session: Session, operation_id: str, number: int) -> bool:
    """Whether a change attempt before ``number`` may have reached the target: False only when
    every earlier attempt provably never did.

    Not just the latest: after an attempt that changed the secret and died unrecorded, a
    ConnectFailed retry proves nothing about the attempt before it."""
    outcomes = session.exec(
        select(Attempt.outcome)
        .where(Attempt.operation_id == operation_id, Attempt.step == "change")
        .where(Attempt.number < number)
    ).all()
    # Fewer rows than earlier attempts: one died before recording itself; assume the worst.
    return len(outcomes) < number - 1 or any(o != ConnectFailed.kind for o in outcomes)
