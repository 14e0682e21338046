"""The store on both backends: SQLite (default) and PostgreSQL (the session's throwaway cluster)."""

from __future__ import annotations

import secrets

import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from store.engine import session_scope
from store.models import SecretState, SecretVersion
from store.vault import Vault
from tests.store.helpers import a_credential


def test_versions_move_pending_to_current_to_previous(engine: Engine) -> None:
    vault = Vault(secrets.token_bytes(32))
    credential_id = a_credential(engine)
    with session_scope(engine) as session:
        first = vault.add(session, credential_id, "first-secret", SecretState.CURRENT)
        second = vault.add(session, credential_id, "second-secret", SecretState.PENDING)
    with session_scope(engine) as session:
        Vault.promote(session, credential_id, second.id)
    with Session(engine) as session:
        states = {v.id: v.state for v in session.exec(select(SecretVersion))}
        current = Vault.current(session, credential_id)
        assert current is not None and vault.reveal(current) == "second-secret"
    assert states == {first.id: SecretState.PREVIOUS, second.id: SecretState.CURRENT}


def test_ciphertext_is_bound_to_its_row_and_key(engine: Engine) -> None:
    vault = Vault(secrets.token_bytes(32))
    credential_id = a_credential(engine)
    with session_scope(engine) as session:
        a = vault.add(session, credential_id, "secret-a", SecretState.CURRENT)
        b = vault.add(session, credential_id, "secret-b", SecretState.PREVIOUS)
    assert b"secret-a" not in a.ciphertext
    b.ciphertext = a.ciphertext  # a ciphertext copied onto another row does not decrypt
    with pytest.raises(InvalidTag):
        vault.reveal(b)
    with pytest.raises(LookupError, match="master key"):
        Vault(secrets.token_bytes(32)).reveal(a)
