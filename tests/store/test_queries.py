"""The reads every step shares: an operation with its credential, device and policy at once."""

from __future__ import annotations

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from store.engine import session_scope
from store.models import Credential, Policy
from store.queries import DEFAULT_POLICY, operation_on_device
from tests.store.helpers import a_credential, registered


def test_an_operation_comes_with_its_credential_device_and_policy_in_one_statement(
    engine: Engine,
) -> None:
    credential_id = a_credential(engine)
    with session_scope(engine) as session:
        policy = Policy(name="strict", length=40)
        session.add(policy)
        session.flush()
        credential = session.get(Credential, credential_id)
        assert credential is not None
        credential.policy_id = policy.id
        session.add(credential)
    operation_id = registered(engine, credential_id)
    seen: list[str] = []

    def count(_c: object, _cu: object, statement: str, *_: object) -> None:
        seen.append(statement)

    with session_scope(engine) as session:
        event.listen(engine, "before_cursor_execute", count)
        try:
            operation, credential, device, loaded = operation_on_device(session, operation_id)
        finally:
            event.remove(engine, "before_cursor_execute", count)
        assert len(seen) == 1
        assert (operation.id, credential.id, device.id) == (
            operation_id,
            credential_id,
            credential.device_id,
        )
        assert (loaded.name, loaded.length) == ("strict", 40)


def test_a_credential_without_a_policy_has_the_default(engine: Engine) -> None:
    operation_id = registered(engine, a_credential(engine))
    with session_scope(engine) as session:
        assert operation_on_device(session, operation_id)[3] is DEFAULT_POLICY


def test_a_missing_operation_is_named(engine: Engine) -> None:
    registered(engine, a_credential(engine))
    with (
        session_scope(engine) as session,
        pytest.raises(LookupError, match="operation nope not found"),
    ):
        operation_on_device(session, "nope")
