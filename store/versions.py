"""Which secret version an operation acts with, when it is not a generated one.

An administrator recovering a credential by hand chooses one: a version to adopt, a value set on
the target by other means (set-in-vault), the next password of a change. After a restore, a
verify also tries the pending secret of the operation that was in flight at backup time. The
request path checks the choice before the workflow starts; prepare checks it again, because a
program with only a Temporal client may start an operation too.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import Session, col, select

from store.models import Operation, SecretState, SecretVersion, utcnow


class VersionNotUsable(Exception):
    """The chosen version cannot be what this operation acts with; the message says why."""


def chosen_version(session: Session, operation: Operation) -> SecretVersion | None:
    """The version ``operation`` acts with instead of a generated one, checked; None if it
    names none."""
    if not operation.source_version_id:
        if operation.kind == "set-in-vault":
            raise VersionNotUsable("set-in-vault needs the secret to store: request it again")
        return None
    version = session.get(SecretVersion, operation.source_version_id)
    if version is None or version.credential_id != operation.credential_id:
        raise VersionNotUsable(
            f"credential {operation.credential_id} has no secret version "
            f"{operation.source_version_id!r}; list them with "
            f"GET /v1/credentials/{operation.credential_id}/versions"
        )
    if operation.kind in ("change", "set-in-vault") and (
        version.operation_id != operation.id or version.state != SecretState.PENDING
    ):
        # A supplied secret is stored by the request path for this operation alone.
        raise VersionNotUsable(
            f"secret version {version.id} was not supplied with operation {operation.id}"
        )
    if operation.kind == "verify" and version.state != SecretState.PENDING:
        return None  # settled since the restore: the verify checks the current secret only
    return version


def fail_unsent_supplied(session: Session, operation_id: str) -> None:
    """The operation ended without acting: a secret supplied for it is failed, not left
    pending (which would read as "the target may have it")."""
    for version in session.exec(
        select(SecretVersion).where(
            SecretVersion.operation_id == operation_id,
            SecretVersion.state == SecretState.PENDING,
        )
    ):
        version.state = SecretState.FAILED
        version.changed_at = utcnow()
        session.add(version)


def seen_working(session: Session, version_id: str, operation_id: str) -> None:
    """A login with this version has just worked on the target. One UPDATE, on every
    verified login's path (reading the row first was one more statement); a version the
    session holds is brought up to date in memory."""
    session.execute(
        update(SecretVersion)
        .where(col(SecretVersion.id) == version_id)
        .values(last_login_ok_at=utcnow(), last_login_ok_operation_id=operation_id)
        .execution_options(synchronize_session="evaluate")
    )
