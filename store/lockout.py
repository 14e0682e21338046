"""The lockout budget: how many failed logins Keyturn may cause per account per window.

Targets lock accounts after a few failed logins; probes, verifies and retries must never be the
reason. Every login that may be refused is reserved first and settled after: a reservation
counts against the budget while in flight, so concurrent operations cannot overspend it, and a
login that worked (or never reached the target) gives its reservation back. A login whose
verdict is unknown keeps it, like a refused one (activities.executor_steps decides which).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from store.engine import session_scope
from store.models import AccountLock, LoginCharge, as_utc, new_id, utcnow


@dataclass(frozen=True)
class Budget:
    device_id: str
    username: str
    limit: int
    window: timedelta


class BudgetSpent(Exception):
    """No login may be tried before ``retry_after``; the message names account and window."""

    def __init__(self, budget: Budget, retry_after: timedelta) -> None:
        self.retry_after = retry_after
        super().__init__(
            f"lockout budget spent: {budget.limit} failed logins for {budget.username!r} within "
            f"{budget.window.total_seconds():g}s; the next login may be tried in "
            f"{retry_after.total_seconds():.0f}s"
        )


class BudgetBusy(BudgetSpent):
    """The budget is taken by logins still in flight, not by refusals: wait for them to settle
    (most logins work and give their charge back) rather than for the window to pass."""

    def __init__(self, budget: Budget, retry_after: timedelta) -> None:
        super().__init__(budget, retry_after)
        self.args = (
            f"lockout budget busy: {budget.limit} logins for {budget.username!r} are in flight; "
            f"the next may be tried once one of them settles",
        )


# How soon to try again when the budget is busy with logins in flight.
BUSY_RETRY = timedelta(seconds=1)

# Statements on the tables, made once: every login reserves and settles (two of each per
# change), and an ORM statement built per call cost several times as much as these. No ORM
# object of a lock row or a charge is ever loaded, so none can be stale.
_LOCKS = AccountLock.__table__  # type: ignore[attr-defined]
_CHARGES = LoginCharge.__table__  # type: ignore[attr-defined]
# Parameters named apart from the columns: an update's own columns are its SET parameters.
_LOCK = (
    update(_LOCKS)
    .where(_LOCKS.c.device_id == bindparam("on_device"), _LOCKS.c.username == bindparam("as_user"))
    .values(touched=_LOCKS.c.touched + 1)
)
_CREATE_LOCK = insert(_LOCKS)
_IN_WINDOW = select(_CHARGES.c.state, _CHARGES.c.at).where(
    _CHARGES.c.device_id == bindparam("on_device"),
    _CHARGES.c.username == bindparam("as_user"),
    _CHARGES.c.at >= bindparam("since"),
)
_CHARGE = insert(_CHARGES)
_KEEP = update(_CHARGES).where(_CHARGES.c.id == bindparam("charge_id"))
_GIVE_BACK = delete(_CHARGES).where(_CHARGES.c.id == bindparam("charge_id"))


class LockoutLedger:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def reserve(self, budget: Budget) -> str:
        """A charge id for one login, or BudgetSpent when the window has no room left."""
        for _ in range(3):  # the first reservation for an account may race to create its lock row
            try:
                return self._reserve(budget)
            except IntegrityError:
                continue
        return self._reserve(budget)

    def _reserve(self, budget: Budget) -> str:
        with session_scope(self._engine) as session:
            if not _lock(session, budget):
                session.execute(
                    _CREATE_LOCK,
                    {"device_id": budget.device_id, "username": budget.username},
                )
            return _charge(session, budget)

    def settle(self, charge_id: str, *, failed: bool) -> None:
        with session_scope(self._engine) as session:
            settle(session, charge_id, failed=failed)


def reserve_ahead(session: Session, budget: Budget) -> str | None:
    """A charge for a login about to be tried, in the caller's transaction (the one that opens
    the attempt: one trip to the store less), or None when the budget has no room now or the
    account has never been charged: the login then reserves on its own, and waits if it must.
    A worker lost before the login leaves the charge in flight, as one lost during a login."""
    if not _lock(session, budget):
        return None
    try:
        return _charge(session, budget)
    except BudgetSpent:
        return None


def _lock(session: Session, budget: Budget) -> bool:
    """Lock the account's row, if it has one. Written first: the row lock (PostgreSQL) or the
    write lock (SQLite) this takes makes the count of its charges and the insert of one more
    one atomic step per account."""
    locked = session.execute(_LOCK, _account(budget))
    return bool(locked.rowcount)  # type: ignore[attr-defined]


def _account(budget: Budget) -> dict[str, str]:
    """The parameters that name the budget's account in _LOCK and _IN_WINDOW."""
    return {"on_device": budget.device_id, "as_user": budget.username}


def _charge(session: Session, budget: Budget) -> str:
    """Charge one login to the account whose row the transaction locked, or say why not."""
    now = utcnow()
    charges = session.execute(_IN_WINDOW, {**_account(budget), "since": now - budget.window}).all()
    if len(charges) >= budget.limit:
        failed = [at for state, at in charges if state == "failed"]
        if len(failed) < budget.limit:
            # Full only because logins are in flight: most give their charge back.
            raise BudgetBusy(budget, BUSY_RETRY)
        oldest = min(as_utc(at) for at in failed)
        raise BudgetSpent(budget, max(oldest + budget.window - now, timedelta(seconds=1)))
    charge_id = new_id()
    session.execute(
        _CHARGE,
        {
            "id": charge_id,
            "device_id": budget.device_id,
            "username": budget.username,
            "at": now,
        },
    )
    return charge_id


def settle(session: Session, charge_id: str, *, failed: bool) -> None:
    """``failed``: the login was refused, or may have been (its verdict is unknown); its charge
    is kept until it leaves the window. Any other login gives its charge back. In the caller's
    transaction: an attempt settles its logins in the one that records its end."""
    # One statement each way, by id: settling is on every login's path.
    if failed:
        session.execute(_KEEP, {"charge_id": charge_id, "state": "failed", "at": utcnow()})
    else:
        session.execute(_GIVE_BACK, {"charge_id": charge_id})
