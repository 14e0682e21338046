"""Secret versions of a credential: what an administrator recovering it by hand chooses from.

Listing shows no secret. Reading one version's secret needs a reason, recorded in the audit trail
with the version read (never the secret itself).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlmodel import select

from starter.authz import Admin, Reader, credential_for
from starter.deps import DB, State, StoreRoute
from starter.pages import Cursor, Limit, Page, by_age, keyset_page, shown_as
from starter.problems import Problem, not_found, problem_response
from starter.schemas import VersionOut, VersionSecretOut
from store import audit
from store.jobs import SSH_KEY
from store.models import Credential, SecretVersion
from store.ssh_keys import public_key_line

router = APIRouter(route_class=StoreRoute)


@router.get(
    "/credentials/{credential_id}/versions",
    response_model=Page[VersionOut],
    responses={404: problem_response("no such credential")},
)
def list_versions(
    credential_id: str, db: DB, caller: Reader, limit: Limit = 100, cursor: Cursor = None
) -> Page[VersionOut]:
    """Every secret version of the credential, oldest first: state, the operation that made
    it, and when a login with it was last seen to work. No secret."""
    credential_for(db, caller, credential_id)
    query = select(SecretVersion).where(SecretVersion.credential_id == credential_id)
    return keyset_page(db, query, by_age(SecretVersion), limit, cursor, shown_as(VersionOut))


@router.get(
    "/credentials/{credential_id}/versions/{version_id}/secret",
    response_model=VersionSecretOut,
    response_model_exclude_none=True,  # public_key only for an ssh-key credential
    responses={
        404: problem_response("no such credential, or no such version of it"),
        409: problem_response("the version was encrypted with another master key"),
        422: problem_response("the reason is missing or empty"),
    },
)
def read_version_secret(
    credential_id: str,
    version_id: str,
    reason: Annotated[
        str, Query(min_length=1, max_length=500, description="why; kept in the audit trail")
    ],
    db: DB,
    app: State,
    response: Response,
    caller: Admin,
) -> VersionSecretOut:
    """One version's secret (an ssh-key credential's: the private key, with its public key).
    The read and its reason are recorded before the secret is sent."""
    credential = db.get(Credential, credential_id)
    if credential is None:
        raise not_found("credential", credential_id)
    version = db.get(SecretVersion, version_id)
    if version is None or version.credential_id != credential_id:
        raise Problem(
            404,
            f"credential {credential_id} has no secret version {version_id!r}; list them with "
            f"GET /v1/credentials/{credential_id}/versions",
        )
    if not reason.strip():
        raise Problem(
            422,
            "reason: say why the secret is read; it is kept in the audit trail",
            errors=[{"field": "reason", "message": "must not be blank"}],
        )
    try:
        secret = app.vault.reveal(version)
    except LookupError as exc:
        raise Problem(409, str(exc)) from None
    audit.record(
        db,
        "secret.read",
        principal=caller.name,
        credential_id=credential_id,
        version_id=version.id,
        version_state=version.state,
        reason=reason,
    )
    db.commit()
    response.headers["Cache-Control"] = "no-store"
    public_key = None
    if credential.secret_type == SSH_KEY:  # the secret is the private key
        public_key = public_key_line(secret, f"keyturn:{credential.id}")
    return VersionSecretOut(
        version_id=version.id, state=version.state, secret=secret, public_key=public_key
    )
