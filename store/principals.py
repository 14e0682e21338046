"""Principals and their API tokens. A token is shown once, when it is issued; the store keeps
its SHA-256 and a prefix that names it (in lists, the audit trail and a revocation's URL)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from store.models import Principal, PrincipalToken, Role, as_utc, utcnow

# The principal of the bootstrap admin token (KEYTURN_ADMIN_TOKEN): it has no stored token.
BOOTSTRAP_ID = "admin"
BOOTSTRAP_NAME = "admin"
_SCHEME = "kt"


@dataclass(frozen=True)
class Issued:
    token: str  # shown once, never stored
    row: PrincipalToken


@dataclass(frozen=True)
class Refused:
    """Why a token that names a stored one is not accepted (its principal is known)."""

    principal: Principal
    prefix: str
    reason: str


def ensure_bootstrap(session: Session) -> Principal:
    """The admin token's principal, created on first start."""
    row = session.get(Principal, BOOTSTRAP_ID)
    if row is None:
        row = Principal(id=BOOTSTRAP_ID, name=BOOTSTRAP_NAME, role=Role.ADMIN)
        session.add(row)
        session.commit()
    return row


def issue(session: Session, principal_id: str, expires_at: datetime | None) -> Issued:
    """A new token for the principal, in ``session``'s transaction."""
    prefix = f"{_SCHEME}_{secrets.token_hex(6)}"
    token = f"{prefix}.{secrets.token_urlsafe(32)}"
    row = PrincipalToken(
        prefix=prefix,
        principal_id=principal_id,
        digest=_digest(token),
        expires_at=as_utc(expires_at) if expires_at else None,
    )
    session.add(row)
    return Issued(token, row)


def authenticate(session: Session, token: str) -> Principal | Refused | None:
    """The principal a token belongs to; ``Refused`` for a revoked or expired one; None for a
    token Keyturn never issued."""
    prefix, dot, _ = token.partition(".")
    if not dot or not prefix.startswith(f"{_SCHEME}_"):
        return None
    row = session.get(PrincipalToken, prefix)
    if row is None or not secrets.compare_digest(row.digest, _digest(token)):
        return None
    principal = session.get(Principal, row.principal_id)
    if principal is None:
        return None
    if row.revoked_at is not None:
        return Refused(principal, prefix, f"token {prefix} was revoked")
    if row.expires_at is not None and as_utc(row.expires_at) <= utcnow():
        return Refused(principal, prefix, f"token {prefix} expired at {as_utc(row.expires_at)}")
    return principal


def tokens_of(session: Session, principal_id: str) -> list[PrincipalToken]:
    return list(
        session.exec(
            select(PrincipalToken)
            .where(PrincipalToken.principal_id == principal_id)
            .order_by(col(PrincipalToken.created_at))
        )
    )


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
