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
from store.jobs import SSH_KEY
from store.models import Credential, Policy, SecretState, SecretVersion, utcnow
from store.ssh_keys import KeyProblem, parse_private_key
from store.vault import Vault

# Which kinds take which part of a request; everything else refuses it.
_TAKES = {
    "version_id": ("adopt",),
    "password": ("set-in-vault",),
    "next_password": ("change",),
    "private_key": ("set-in-vault",),
}
MAX_SECRET_LENGTH = 1024


@dataclass(frozen=True)
class SecretChoice:
    """What a request names to act with; the values live in memory only."""

    version_id: str | None = None  # adopt: the version to make current
    password: str | None = field(default=None, repr=False)  # set-in-vault: the value to store
    next_password: str | None = field(default=None, repr=False)  # change: instead of generated
    private_key: str | None = field(default=None, repr=False)  # set-in-vault of an ssh-key

    @property
    def supplied(self) -> str | None:
        for value in (self.password, self.private_key, self.next_password):
            if value is not None:
                return value
        return None

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
        "private_key": request.private_key,
    }
    for name, value in given.items():
        if value is not None and kind not in _TAKES[name]:
            kinds = " or ".join(_TAKES[name])
            raise InvalidRequest(name, f"only {kinds} operations take it, not {kind}")
    if credential.secret_type == SSH_KEY:
        _check_key_choice(credential, kind, request)
        return
    if request.private_key is not None:
        raise InvalidRequest(
            "private_key", f"credential {credential.id} holds a password: give password instead"
        )
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
    if kind == "set-in-vault" and request.password is None:  # a password credential here
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


def _check_key_choice(credential: Credential, kind: str, request: SecretChoice) -> None:
    """An ssh-key credential: set-in-vault takes a private key that parses; its next key is
    always generated (a supplied one would have to be trusted never to have been seen)."""
    if request.next_password is not None:
        raise InvalidRequest(
            "next_password",
            f"credential {credential.id} holds an SSH key: a change generates its next key "
            "pair per the policy's key_type and key_bits",
        )
    if request.password is not None:
        raise InvalidRequest(
            "password",
            f"credential {credential.id} holds an SSH key: set-in-vault takes private_key",
        )
    if kind == "set-in-vault":
        if request.private_key is None:
            raise InvalidRequest(
                "private_key", "set-in-vault of an ssh-key credential needs the private key"
            )
        try:
            parse_private_key(request.private_key)
        except KeyProblem as exc:
            raise InvalidRequest("private_key", str(exc)) from None


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
