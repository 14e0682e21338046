"""Requests that name the secret an operation acts with: checked, and a supplied value stored.

``adopt`` names a version of the credential; ``set-in-vault`` supplies the value an administrator
set on the target by other means; a ``change`` may supply its next password, which must fit the
credential's policy. A supplied value is stored encrypted as a pending version of the operation
before its workflow starts: workflow payloads and history carry its id, never the value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlmodel import Session

from requesting.errors import InvalidRequest
from store import audit
from store.models import Credential, Policy, SecretState, SecretVersion, utcnow
from store.vault import Vault

# Which kinds take which part of a request; everything else refuses it.
_TAKES = {"version_id": ("adopt",), "password": ("set-in-vault",), "next_password": ("change",)}
MAX_SECRET_LENGTH = 1024


@dataclass(frozen=True)
class SecretChoice:
    """What a request names to act with; the values live in memory only."""

    version_id: str | None = None  # adopt: the version to make current
    password: str | None = field(default=None, repr=False)  # set-in-vault: the value to store
    next_password: str | None = field(default=None, repr=False)  # change: instead of generated

    @property
    def supplied(self) -> str | None:
        return self.password if self.password is not None else self.next_password

    @property
    def names_a_secret(self) -> bool:
        return self.version_id is not None or self.supplied is not None


def check_secret_choice(
    db: Session, credential: Credential, kind: str, request: SecretChoice
) -> None:
    """Raise InvalidRequest unless the request names exactly what its kind needs."""
    given = {
        "version_id": request.version_id,
        "password": request.password,
        "next_password": request.next_password,
    }
    for name, value in given.items():
        if value is not None and kind not in _TAKES[name]:
            kinds = " or ".join(_TAKES[name])
            raise InvalidRequest(name, f"only {kinds} operations take it, not {kind}")
    if kind == "adopt":
        if not request.version_id:
            raise InvalidRequest("version_id", "adopt needs the id of the version to adopt")
        version = db.get(SecretVersion, request.version_id)
        if version is None or version.credential_id != credential.id:
            raise InvalidRequest(
                "version_id",
                f"credential {credential.id} has no secret version {request.version_id!r}; "
                f"list them with GET /v1/credentials/{credential.id}/versions",
            )
    if kind == "set-in-vault" and request.password is None:
        raise InvalidRequest("password", "set-in-vault needs the password set on the target")
    secret = request.supplied
    if secret is not None:
        name = "password" if request.password is not None else "next_password"
        if not secret or len(secret) > MAX_SECRET_LENGTH:
            raise InvalidRequest(name, f"must be 1 to {MAX_SECRET_LENGTH} characters long")
        if name == "next_password":
            policy = db.get(Policy, credential.policy_id) if credential.policy_id else None
            violation = (policy or Policy(name="(default)")).password_rules().violation(secret)
            if violation:
                raise InvalidRequest(name, f"breaks the credential's policy: it {violation}")


def store_supplied(
    db: Session, vault: Vault, credential: Credential, operation_id: str, secret: str
) -> str:
    """The supplied secret as a pending version of the operation about to start; its id."""
    version = vault.add(db, credential.id, secret, SecretState.PENDING, operation_id)
    audit.record(
        db,
        "secret.supplied",
        operation_id=operation_id,
        credential_id=credential.id,
        version_id=version.id,
    )
    db.commit()
    return version.id


def fail_unused(db: Session, version_id: str) -> None:
    """The operation a supplied secret was stored for never started: the version is failed."""
    version = db.get(SecretVersion, version_id)
    if version is not None and version.state == SecretState.PENDING:
        version.state = SecretState.FAILED
        version.changed_at = utcnow()
        db.add(version)
        db.commit()
