"""Secret versions: encrypted at rest, moved between states only by these functions.

The associated data binds each ciphertext to its credential and version id, so a ciphertext
copied onto another row does not decrypt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import bindparam, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from keyturn.keyring import Keyring
from store.engine import session_scope
from store.models import (
    Certificate,
    CertificateAuthority,
    SecretState,
    SecretVersion,
    new_id,
    utcnow,
)

PURPOSE = "secrets"


class Vault:
    """Encrypts with the keyring's newest key; decrypts with whichever key a version names.
    A single key (bytes) is a keyring of one."""

    def __init__(self, keys: Keyring | bytes) -> None:
        self._keyring = keys if isinstance(keys, Keyring) else Keyring.of(keys)

    def add(
        self,
        session: Session,
        credential_id: str,
        secret: str,
        state: SecretState,
        operation_id: str | None = None,
    ) -> SecretVersion:
        version_id = new_id()
        cipher = self._keyring.cipher(PURPOSE)
        version = SecretVersion(
            id=version_id,
            credential_id=credential_id,
            state=state,
            key_id=cipher.key_id,
            ciphertext=cipher.encrypt(secret.encode(), _aad(credential_id, version_id)),
            operation_id=operation_id,
        )
        session.add(version)
        return version

    def reveal(self, version: SecretVersion) -> str:
        """Decrypt; call only inside an activity, and keep the value in memory only."""
        cipher = self._keyring.cipher_for(PURPOSE, version.key_id)
        if cipher is None:
            raise LookupError(
                f"secret version {version.id} was encrypted with key {version.key_id}; "
                "start Keyturn with that master key in its keyring"
            )
        aad = _aad(version.credential_id, version.id)
        return cipher.decrypt(version.ciphertext, aad).decode()

    @property
    def newest_key_id(self) -> str:
        return self._keyring.cipher(PURPOSE).key_id

    def reencrypt(self, version: SecretVersion) -> bool:
        """Seal ``version`` with the newest key (in the caller's transaction); False if it
        already was. Its state and ids do not change, so nothing else notices."""
        cipher = self._keyring.cipher(PURPOSE)
        if version.key_id == cipher.key_id:
            return False
        aad = _aad(version.credential_id, version.id)
        version.ciphertext = cipher.encrypt(self.reveal(version).encode(), aad)
        version.key_id = cipher.key_id
        return True

    def seal(self, owner: str, secret: str) -> Sealed:
        """Encrypt a secret that belongs to no credential (a certificate's or a CA's private
        key) with the newest key, bound to ``owner`` ("certificate/<id>", "ca/<name>"): a
        ciphertext copied onto another row does not open."""
        cipher = self._keyring.cipher(PURPOSE)
        return Sealed(cipher.key_id, cipher.encrypt(secret.encode(), _owner_aad(owner)))

    def reseal(self, owner: str, key_id: str, ciphertext: bytes) -> Sealed | None:
        """``seal`` again with the newest key; None if it already was."""
        if key_id == self.newest_key_id:
            return None
        return self.seal(owner, self.unseal(owner, key_id, ciphertext))

    def unseal(self, owner: str, key_id: str, ciphertext: bytes) -> str:
        """Decrypt what ``seal`` made; call only inside an activity or a command, in memory."""
        cipher = self._keyring.cipher_for(PURPOSE, key_id)
        if cipher is None:
            raise LookupError(
                f"the secret of {owner} was encrypted with key {key_id}; start Keyturn with "
                "that master key in its keyring"
            )
        return cipher.decrypt(ciphertext, _owner_aad(owner)).decode()

    @staticmethod
    def current(session: Session, credential_id: str) -> SecretVersion | None:
        return session.exec(_CURRENT, params={"of_credential": credential_id}).first()

    @staticmethod
    def promote(session: Session, credential_id: str, pending_id: str) -> None:
        """pending → current and current → previous, in the caller's transaction: two UPDATEs
        (a commit is on every change's path; reading the rows first was two more statements).
        Versions the session holds are brought up to date in memory."""
        now = utcnow()
        session.execute(
            update(SecretVersion)
            .where(
                col(SecretVersion.credential_id) == credential_id,
                col(SecretVersion.state) == SecretState.CURRENT,
            )
            .values(state=SecretState.PREVIOUS, changed_at=now)
            .execution_options(synchronize_session="evaluate")
        )
        promoted = session.execute(
            update(SecretVersion)
            .where(
                col(SecretVersion.id) == pending_id,
                col(SecretVersion.credential_id) == credential_id,
            )
            .values(state=SecretState.CURRENT, changed_at=now)
            .execution_options(synchronize_session="evaluate")
        )
        if not promoted.rowcount:  # type: ignore[attr-defined]
            raise LookupError(f"pending secret version {pending_id} not found")


# Made once: every change reads the current version (an ORM statement built per call cost
# about twice as much). Not so promote's updates: the session's versions are brought up to date
# by evaluating their statements in memory, which needs the values in the statement itself.
_CURRENT = select(SecretVersion).where(
    SecretVersion.credential_id == bindparam("of_credential"),
    SecretVersion.state == SecretState.CURRENT,
)


@dataclass(frozen=True)
class Sealed:
    key_id: str
    ciphertext: bytes = field(repr=False)


def ca_owner(name: str) -> str:
    """Whose sealed secret a CA's private key is."""
    return f"ca/{name}"


def certificate_owner(certificate_id: str) -> str:
    """Whose sealed secret a certificate's private key (and its pending one) is."""
    return f"certificate/{certificate_id}"


def _owner_aad(owner: str) -> bytes:
    return f"sealed/{owner}".encode()


def _aad(credential_id: str, version_id: str) -> bytes:
    return f"{credential_id}/{version_id}".encode()


def reencrypt_all(engine: Engine, vault: Vault, batch: int = 200) -> int:
    """Seal every secret version (and every certificate's and CA's private key) with the
    vault's newest key; how many were re-sealed. Runs
    in batches, each its own transaction, until none is left under an older key: a version a
    process wrote with the older key while this ran is caught by a later batch."""
    total = 0
    while True:
        with session_scope(engine) as session:
            versions = session.exec(
                select(SecretVersion)
                .where(SecretVersion.key_id != vault.newest_key_id)
                .order_by(col(SecretVersion.id))
                .limit(batch)
                .with_for_update()
            ).all()
            for version in versions:
                vault.reencrypt(version)
                session.add(version)
        if not versions:
            return total + reseal_keys(engine, vault)
        total += len(versions)


def reseal_keys(engine: Engine, vault: Vault) -> int:
    """Seal every certificate's and CA's private key with the vault's newest key; how many.
    One transaction: there are few of them."""
    count = 0
    with session_scope(engine) as session:
        for ca in session.exec(select(CertificateAuthority).with_for_update()):
            if ca.key_id and ca.key_ciphertext is not None:
                sealed = vault.reseal(ca_owner(ca.name), ca.key_id, ca.key_ciphertext)
                if sealed is not None:
                    ca.key_id, ca.key_ciphertext = sealed.key_id, sealed.ciphertext
                    session.add(ca)
                    count += 1
        for cert in session.exec(select(Certificate).with_for_update()):
            owner = certificate_owner(cert.id)
            if cert.key_id and cert.key_ciphertext is not None:
                sealed = vault.reseal(owner, cert.key_id, cert.key_ciphertext)
                if sealed is not None:
                    cert.key_id, cert.key_ciphertext = sealed.key_id, sealed.ciphertext
                    count += 1
            if cert.pending_key_id and cert.pending_key_ciphertext is not None:
                sealed = vault.reseal(owner, cert.pending_key_id, cert.pending_key_ciphertext)
                if sealed is not None:
                    cert.pending_key_id = sealed.key_id
                    cert.pending_key_ciphertext = sealed.ciphertext
                    count += 1
            session.add(cert)
    return count
