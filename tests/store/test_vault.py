"""The store on both backends: SQLite (default) and PostgreSQL (the session's throwaway cluster)."""

from __future__ import annotations

import secrets

import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from keyturn.crypto import Cipher
from keyturn.keyring import Keyring
from store.engine import session_scope
from store.models import Certificate, CertificateAuthority, SecretState, SecretVersion
from store.vault import Vault, certificate_owner, reencrypt_all
from store.versions import seen_working
from tests.store.helpers import a_credential, registered


def _current_and_pending(engine: Engine) -> tuple[Vault, str, SecretVersion, SecretVersion]:
    """A vault and a credential with a current and a pending version."""
    vault = Vault(secrets.token_bytes(32))
    credential_id = a_credential(engine)
    with session_scope(engine) as session:
        first = vault.add(session, credential_id, "first-secret", SecretState.CURRENT)
        second = vault.add(session, credential_id, "second-secret", SecretState.PENDING)
    return vault, credential_id, first, second


def test_versions_move_pending_to_current_to_previous(engine: Engine) -> None:
    vault, credential_id, first, second = _current_and_pending(engine)
    with session_scope(engine) as session:
        Vault.promote(session, credential_id, second.id)
    with Session(engine) as session:
        states = {v.id: v.state for v in session.exec(select(SecretVersion))}
        current = Vault.current(session, credential_id)
        assert current is not None and vault.reveal(current) == "second-secret"
    assert states == {first.id: SecretState.PREVIOUS, second.id: SecretState.CURRENT}


def test_a_promotion_in_a_transaction_that_holds_the_versions_updates_them(
    engine: Engine,
) -> None:
    """The commit reads the current version, then promotes in the same transaction: what the
    session holds says what the store now says."""
    _, credential_id, first, second = _current_and_pending(engine)
    with session_scope(engine) as session:
        held = Vault.current(session, credential_id)
        assert held is not None and held.id == first.id
        Vault.promote(session, credential_id, second.id)
        assert held.state == SecretState.PREVIOUS
        now = Vault.current(session, credential_id)
        assert now is not None and now.id == second.id and now.state == SecretState.CURRENT


def test_promoting_a_version_of_another_credential_changes_nothing(engine: Engine) -> None:
    vault = Vault(secrets.token_bytes(32))
    credential_id, other_id = a_credential(engine), a_credential(engine)
    with session_scope(engine) as session:
        first = vault.add(session, credential_id, "first-secret", SecretState.CURRENT)
        foreign = vault.add(session, other_id, "other-secret", SecretState.PENDING)
    with pytest.raises(LookupError, match=foreign.id), session_scope(engine) as session:
        Vault.promote(session, credential_id, foreign.id)
    with Session(engine) as session:
        states = {v.id: v.state for v in session.exec(select(SecretVersion))}
    assert states == {first.id: SecretState.CURRENT, foreign.id: SecretState.PENDING}


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


def test_after_a_rotation_every_version_is_sealed_with_the_new_key_alone(engine: Engine) -> None:
    """Versions written under the old key, some while the ring already held the new one (a
    process that had not read the keyring again): re-encrypted, each still reveals its secret
    with the new key alone, and no ciphertext in the store opens with the old key."""
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    credential_id = a_credential(engine)
    written = {}
    with session_scope(engine) as session:
        for n in range(250):  # more than one batch
            version = Vault(old).add(session, credential_id, f"secret-{n}", SecretState.PREVIOUS)
            written[version.id] = f"secret-{n}"
    rotated = Vault(Keyring.of(new, old))
    with session_scope(engine) as session:
        version = rotated.add(session, credential_id, "after", SecretState.CURRENT)
        written[version.id] = "after"

    assert reencrypt_all(engine, rotated, batch=100) == 250
    assert reencrypt_all(engine, rotated) == 0  # nothing left under the old key

    only_new, only_old = Vault(new), Cipher(old, "secrets")
    with Session(engine) as session:
        versions = session.exec(select(SecretVersion)).all()
    assert {v.key_id for v in versions} == {only_new.newest_key_id}
    assert {v.id: only_new.reveal(v) for v in versions} == written
    for version in versions:
        with pytest.raises(InvalidTag):
            only_old.decrypt(version.ciphertext, f"{credential_id}/{version.id}".encode())


def test_a_rotation_reseals_certificate_and_ca_keys(engine: Engine) -> None:
    """Keys that belong to no credential (a CA's, a certificate's current and pending ones) are
    sealed with the new key too, and each opens only as what it belongs to."""
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    before = Vault(old)
    ca_key, key, pending = before.seal("ca/x", "ca-key"), None, None
    with session_scope(engine) as session:
        session.add(
            CertificateAuthority(
                name="x", plugin="internal", key_id=ca_key.key_id,
                key_ciphertext=ca_key.ciphertext,
            )
        )  # fmt: skip
        session.flush()  # the CA first: the certificate refers to it
        certificate = Certificate(name="web", subject="CN=web", key_type="ecdsa-p256",
                                  validity_days=1, ca="x")  # fmt: skip
        key = before.seal(certificate_owner(certificate.id), "cert-key")
        pending = before.seal(certificate_owner(certificate.id), "next-key")
        certificate.key_id, certificate.key_ciphertext = key.key_id, key.ciphertext
        certificate.pending_key_id = pending.key_id
        certificate.pending_key_ciphertext = pending.ciphertext
        certificate_id = certificate.id
        session.add(certificate)

    rotated = Vault(Keyring.of(new, old))
    assert reencrypt_all(engine, rotated) == 3
    assert reencrypt_all(engine, rotated) == 0

    only_new = Vault(new)
    with Session(engine) as session:
        ca = session.get(CertificateAuthority, "x")
        row = session.get(Certificate, certificate_id)
    assert ca is not None and row is not None
    assert ca.key_ciphertext is not None and row.key_ciphertext is not None
    assert row.pending_key_ciphertext is not None and row.key_id and row.pending_key_id
    assert only_new.unseal("ca/x", ca.key_id or "", ca.key_ciphertext) == "ca-key"
    owner = certificate_owner(certificate_id)
    assert only_new.unseal(owner, row.key_id, row.key_ciphertext) == "cert-key"
    assert only_new.unseal(owner, row.pending_key_id, row.pending_key_ciphertext) == "next-key"
    with pytest.raises(InvalidTag):  # bound to its owner: another's ciphertext does not open
        only_new.unseal("ca/x", row.key_id, row.key_ciphertext)


def test_a_version_seen_working_in_a_transaction_that_holds_it_is_updated(engine: Engine) -> None:
    _, credential_id, _, pending = _current_and_pending(engine)
    operation_id = registered(engine, credential_id)
    with session_scope(engine) as session:
        held = session.get(SecretVersion, pending.id)
        assert held is not None and held.last_login_ok_at is None
        seen_working(session, pending.id, operation_id)
        assert held.last_login_ok_at is not None
        assert held.last_login_ok_operation_id == operation_id
    with Session(engine) as session:
        stored = session.get(SecretVersion, pending.id)
        assert stored is not None and stored.last_login_ok_operation_id == operation_id
