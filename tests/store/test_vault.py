"""The store on both backends: SQLite (default) and the local PostgreSQL server."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from store.engine import make_engine, session_scope
from store.models import Credential, Device, SecretState, SecretVersion
from store.vault import Vault

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        yield make_engine(f"sqlite:///{tmp_path / 'store.db'}")
        return
    name = f"keyturn_test_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    try:
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _credential(engine: Engine) -> str:
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


def test_versions_move_pending_to_current_to_previous(engine: Engine) -> None:
    vault = Vault(secrets.token_bytes(32))
    credential_id = _credential(engine)
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
    credential_id = _credential(engine)
    with session_scope(engine) as session:
        a = vault.add(session, credential_id, "secret-a", SecretState.CURRENT)
        b = vault.add(session, credential_id, "secret-b", SecretState.PREVIOUS)
    assert b"secret-a" not in a.ciphertext
    b.ciphertext = a.ciphertext  # a ciphertext copied onto another row does not decrypt
    with pytest.raises(InvalidTag):
        vault.reveal(b)
    with pytest.raises(LookupError, match="master key"):
        Vault(secrets.token_bytes(32)).reveal(a)
