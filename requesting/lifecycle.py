"""Check a request to activate, deactivate, create or remove an account before it starts.

Each of those runs a template of its own kind through the credential's auth credential, so the
request is refused (InvalidRequest, nothing stored or started) when the device's executor has no
such template, when the credential has no auth credential, when a jit-create's time to live is
missing or out of bounds, or when its account exists already, and a jit-remove of a credential
that never had a jit-create (an account Keyturn only manages); a ``ttl_seconds`` on any other
kind is refused too.
"""

from __future__ import annotations

from sqlmodel import Session, select

from executors.base import get_executor
from requesting.errors import InvalidRequest
from store.jobs import lifecycle_template
from store.models import Credential, Device, Operation
from workflows.contracts import JIT_MAX_TTL_SECONDS, JIT_MIN_TTL_SECONDS, LIFECYCLE_KINDS


def check_lifecycle(
    db: Session, credential: Credential, kind: str, ttl_seconds: int | None
) -> None:
    if kind != "jit-create" and ttl_seconds is not None:
        raise InvalidRequest("ttl_seconds", f"only a jit-create takes a ttl_seconds, not {kind}")
    if kind not in LIFECYCLE_KINDS:
        return
    if kind == "jit-create":
        if ttl_seconds is None:
            raise InvalidRequest(
                "ttl_seconds", "a jit-create needs the account's time to live in seconds"
            )
        if not JIT_MIN_TTL_SECONDS <= ttl_seconds <= JIT_MAX_TTL_SECONDS:
            raise InvalidRequest(
                "ttl_seconds",
                f"{ttl_seconds} is out of bounds: give {JIT_MIN_TTL_SECONDS} to "
                f"{JIT_MAX_TTL_SECONDS} seconds",
            )
        if credential.jit_until is not None:
            raise InvalidRequest(
                "kind",
                f"the credential's just-in-time account exists until "
                f"{credential.jit_until.isoformat(timespec='seconds')}: request a jit-remove "
                "first",
            )
    device = db.get(Device, credential.device_id)
    assert device is not None  # a foreign key
    try:
        executor = get_executor(device.executor)
    except LookupError as exc:
        raise InvalidRequest("kind", str(exc)) from None
    name, _ = lifecycle_template(executor, credential, kind)
    if not name:
        raise InvalidRequest(
            "kind",
            f"executor {device.executor!r} ships no {kind} template: name one in the "
            f"credential's lifecycle_templates, or use a kind it covers (GET /v1/executors)",
        )
    if credential.auth_credential_id is None:
        raise InvalidRequest(
            "kind",
            f"{kind} runs through a privileged account: give the credential an "
            "auth_credential_id (PATCH /v1/credentials/{id})",
        )
    if kind == "jit-remove" and not _ever_created(db, credential.id):
        # Removing is for accounts Keyturn made: never a credential it only manages.
        raise InvalidRequest(
            "kind",
            "a jit-remove removes an account a jit-create made, and this credential has had "
            "no jit-create",
        )


def _ever_created(db: Session, credential_id: str) -> bool:
    return (
        db.exec(
            select(Operation.id).where(
                Operation.credential_id == credential_id, Operation.kind == "jit-create"
            )
        ).first()
        is not None
    )
