"""Rows the store tests need."""

from __future__ import annotations

import secrets
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine

from store import gate
from store.engine import session_scope
from store.models import Credential, Device

_Row = TypeVar("_Row")


def a_credential(engine: Engine) -> str:
    with session_scope(engine) as session:
        device = Device(
            name=f"d-{secrets.token_hex(3)}",
            address="127.0.0.1",
            port=22,
            executor="ssh",
            host_keys=["ssh-ed25519 AAAA"],
        )
        session.add(device)
        session.flush()
        credential = Credential(
            device_id=device.id,
            username="app",
            change_template="ssh/linux-passwd",
            verify_template="ssh/verify-login",
        )
        session.add(credential)
        return credential.id


def registered(engine: Engine, credential_id: str, kind: str = "change") -> str:
    """An operation registered at the credential's gate, as the API registers one."""
    operation_id = secrets.token_hex(8)
    gate.admit(
        engine,
        gate.Registration(operation_id, credential_id, kind, "manual", f"wf-{operation_id}", "run"),
    )
    return operation_id


def row_of(engine: Engine, model: type[_Row], key: Any) -> _Row:
    """The row as committed, read in a transaction of its own."""
    with session_scope(engine) as session:
        row = session.get(model, key)
        assert row is not None
        return row


class Statements:
    """The statements an engine runs while counted, normalised to one line each; ``commits``:
    how many had been seen at each commit, so a test can take one transaction's."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.seen, self.commits = engine, list[str](), list[int]()

    def __enter__(self) -> Statements:
        event.listen(self.engine, "before_cursor_execute", self._seen)
        event.listen(self.engine, "commit", self._committed)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)
        event.remove(self.engine, "commit", self._committed)

    def _seen(self, _conn: object, _cursor: object, statement: str, *_: object) -> None:
        self.seen.append(" ".join(statement.split()))

    def _committed(self, _conn: object) -> None:
        self.commits.append(len(self.seen))

    def first_transaction(self) -> list[str]:
        """The statements up to the first commit."""
        return self.seen[: self.commits[0]] if self.commits else list(self.seen)

    def count(self, start: str, *parts: str) -> int:
        return sum(s.startswith(start) and all(p in s for p in parts) for s in self.seen)

    def first(self, start: str) -> int:
        return next(i for i, s in enumerate(self.seen) if s.startswith(start))
