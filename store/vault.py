"""Secret versions: encrypted at rest, moved between states only by these functions.

The associated data binds each ciphertext to its credential and version id, so a ciphertext
copied onto another row does not decrypt.
"""

from __future__ import annotations

from sqlmodel import Session, select

from keyturn.crypto import Cipher
from store.models import SecretState, SecretVersion, new_id, utcnow


class Vault:
    def __init__(self, master_key: bytes) -> None:
        self._cipher = Cipher(master_key, "secrets")

    def add(
        self,
        session: Session,
        credential_id: str,
        secret: str,
        state: SecretState,
        operation_id: str | None = None,
    ) -> SecretVersion:
        version_id = new_id()
        version = SecretVersion(
            id=version_id,
            credential_id=credential_id,
            state=state,
            key_id=self._cipher.key_id,
            ciphertext=self._cipher.encrypt(secret.encode(), _aad(credential_id, version_id)),
            operation_id=operation_id,
        )
        session.add(version)
        return version

    def reveal(self, version: SecretVersion) -> str:
        """Decrypt; call only inside an activity, and keep the value in memory only."""
        if version.key_id != self._cipher.key_id:
            raise LookupError(
                f"secret version {version.id} was encrypted with key {version.key_id}; "
                "start Keyturn with that master key"
            )
        aad = _aad(version.credential_id, version.id)
        return self._cipher.decrypt(version.ciphertext, aad).decode()

    @staticmethod
    def current(session: Session, credential_id: str) -> SecretVersion | None:
        return session.exec(
            select(SecretVersion).where(
                SecretVersion.credential_id == credential_id,
                SecretVersion.state == SecretState.CURRENT,
            )
        ).first()

    @staticmethod
    def promote(session: Session, credential_id: str, pending_id: str) -> None:
        """pending → current and current → previous, in the caller's transaction."""
        now = utcnow()
        for version in session.exec(
            select(SecretVersion).where(
                SecretVersion.credential_id == credential_id,
                SecretVersion.state == SecretState.CURRENT,
            )
        ):
            version.state = SecretState.PREVIOUS
            version.changed_at = now
            session.add(version)
        pending = session.get(SecretVersion, pending_id)
        if pending is None or pending.credential_id != credential_id:
            raise LookupError(f"pending secret version {pending_id} not found")
        pending.state = SecretState.CURRENT
        pending.changed_at = now
        session.add(pending)


def _aad(credential_id: str, version_id: str) -> bytes:
    return f"{credential_id}/{version_id}".encode()
