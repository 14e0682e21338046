"""Principals and their tokens (admin only). A token is shown once, in the answer that issues
it; the store keeps its hash and a prefix that names it."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from sqlmodel import Session, select

from starter.authz import APP, Admin
from starter.deps import DB, StoreRoute
from starter.pages import Cursor, Limit, Page, by_age, keyset_page
from starter.problems import Problem, invalid, not_found, problem_response
from starter.schemas import IssuedOut, PrincipalIn, PrincipalOut, TokenIn, TokenOut
from store import audit, principals
from store.models import Credential, Principal, PrincipalToken, Role, as_utc, utcnow

router = APIRouter(route_class=StoreRoute)


@router.post(
    "/principals",
    status_code=201,
    response_model=IssuedOut,
    responses={
        409: problem_response("a principal has this name"),
        422: problem_response(
            "invalid field: credential_ids on a role other than app, an unknown credential, "
            "an expiry in the past"
        ),
    },
)
def create_principal(body: PrincipalIn, db: DB, caller: Admin) -> IssuedOut:
    """A principal and its first token, shown in this answer only. Its profiles exist once
    named; an ``app`` names the credentials whose secrets it reads (``credential_ids``)."""
    if body.credential_ids and body.role != APP:
        raise invalid("credential_ids", "only an app principal is granted credentials")
    for credential_id in body.credential_ids:
        if db.get(Credential, credential_id) is None:
            raise invalid("credential_ids", f"no credential with id {credential_id!r}")
    _not_past(body.expires_at)
    if db.exec(select(Principal).where(Principal.name == body.name)).first():
        raise Problem(409, f"a principal named {body.name!r} exists; choose another name")
    row = Principal(
        name=body.name,
        role=Role(body.role),
        profiles=sorted(set(body.profiles)),
        credential_ids=list(dict.fromkeys(body.credential_ids)),
        created_by=caller.name,
    )
    db.add(row)
    db.flush()
    issued = principals.issue(db, row.id, body.expires_at)
    audit.record(
        db, "principal.created", principal=caller.name, principal_id=row.id, name=row.name,
        role=row.role, profiles=row.profiles, credential_ids=row.credential_ids,
        token_prefix=issued.row.prefix,
    )  # fmt: skip
    db.commit()
    return IssuedOut(
        **_out(db, row).model_dump(), token=issued.token, token_prefix=issued.row.prefix
    )


@router.get("/principals", response_model=Page[PrincipalOut])
def list_principals(
    db: DB, caller: Admin, limit: Limit = 100, cursor: Cursor = None
) -> Page[PrincipalOut]:
    """Principals, oldest first, with their tokens' prefixes, expiries and revocations (never
    a token)."""
    return keyset_page(
        db, select(Principal), by_age(Principal), limit, cursor, lambda row: _out(db, row)
    )


@router.get(
    "/principals/{principal_id}",
    response_model=PrincipalOut,
    responses={404: problem_response("no such principal")},
)
def get_principal(principal_id: str, db: DB, caller: Admin) -> PrincipalOut:
    return _out(db, _principal(db, principal_id))


@router.post(
    "/principals/{principal_id}/tokens",
    status_code=201,
    response_model=IssuedOut,
    responses={
        404: problem_response("no such principal"),
        409: problem_response("the bootstrap admin's token is KEYTURN_ADMIN_TOKEN"),
        422: problem_response("an expiry in the past"),
    },
)
def issue_token(principal_id: str, body: TokenIn, db: DB, caller: Admin) -> IssuedOut:
    """Another token for the principal (to rotate one: issue, switch, revoke the old)."""
    row = _principal(db, principal_id)
    if row.id == principals.BOOTSTRAP_ID:
        raise Problem(409, "the bootstrap admin's token is KEYTURN_ADMIN_TOKEN; change it there")
    _not_past(body.expires_at)
    issued = principals.issue(db, row.id, body.expires_at)
    audit.record(
        db, "principal.token_issued", principal=caller.name, principal_id=row.id,
        token_prefix=issued.row.prefix,
    )  # fmt: skip
    db.commit()
    return IssuedOut(
        **_out(db, row).model_dump(), token=issued.token, token_prefix=issued.row.prefix
    )


@router.delete(
    "/principals/{principal_id}/tokens/{prefix}",
    response_model=TokenOut,
    responses={404: problem_response("no such principal, or no such token of it")},
)
def revoke_token(principal_id: str, prefix: str, db: DB, caller: Admin) -> PrincipalToken:
    """Revoke a token: every call with it is refused (401) from now on. Revoking twice keeps
    the first revocation's time."""
    row = _principal(db, principal_id)
    token = db.get(PrincipalToken, prefix)
    if token is None or token.principal_id != row.id:
        raise Problem(
            404, f"principal {principal_id} has no token {prefix!r}; list them with "
            f"GET /v1/principals/{principal_id}",
        )  # fmt: skip
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        db.add(token)
        audit.record(
            db, "principal.token_revoked", principal=caller.name, principal_id=row.id,
            token_prefix=prefix,
        )  # fmt: skip
        db.commit()
    return token


def _principal(db: Session, principal_id: str) -> Principal:
    row = db.get(Principal, principal_id)
    if row is None:
        raise not_found("principal", principal_id)
    return row


def _not_past(expires_at: datetime | None) -> None:
    if expires_at is not None and as_utc(expires_at) <= utcnow():
        raise invalid("expires_at", "must be in the future")


def _out(db: Session, row: Principal) -> PrincipalOut:
    return PrincipalOut(
        **row.model_dump(),
        tokens=[TokenOut(**t.model_dump()) for t in principals.tokens_of(db, row.id)],
    )
