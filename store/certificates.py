"""Certificates and their CAs in the store: the operations of a certificate's actions, the CA's
sealed key, the CRL's compare-and-set, and which certificates are due for renewal."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from executors.ca.base import CaKeys, Revocation
from store import audit
from store.models import (
    Certificate,
    CertificateAuthority,
    CertStatus,
    Operation,
    OperationStatus,
    utcnow,
)
from store.vault import Vault, ca_owner, certificate_owner


def ca_keys(ca: CertificateAuthority, vault: Vault) -> CaKeys:
    """The CA as its plugin needs it, its key (if Keyturn holds it) decrypted in memory."""
    key = ""
    if ca.key_id and ca.key_ciphertext:
        key = vault.unseal(ca_owner(ca.name), ca.key_id, ca.key_ciphertext)
    return CaKeys(ca.name, dict(ca.config), ca.certificate_pem, key)


def certificate_key(certificate: Certificate, vault: Vault) -> str:
    if not certificate.key_id or certificate.key_ciphertext is None:
        raise LookupError(f"certificate {certificate.id} has no key: it was never signed")
    return vault.unseal(
        certificate_owner(certificate.id), certificate.key_id, certificate.key_ciphertext
    )


def note_operation(
    session: Session,
    operation_id: str,
    certificate_id: str,
    kind: str,
    *,
    workflow_id: str,
    trigger: str,
    requested_by: str | None,
    status: OperationStatus,
) -> bool:
    """Make the operation's row if it is missing (the requester and the workflow may each be
    first); True if this call made it. An existing row is never moved back."""
    if session.get(Operation, operation_id) is not None:
        if status == OperationStatus.RUNNING:
            session.execute(
                update(Operation)
                .where(col(Operation.id) == operation_id)
                .where(col(Operation.status) == OperationStatus.SCHEDULED)
                .values(status=OperationStatus.RUNNING)
            )
        return False
    try:
        with session.begin_nested():
            session.add(
                Operation(
                    id=operation_id, credential_id=None, certificate_id=certificate_id,
                    kind=kind, trigger=trigger, status=status, workflow_id=workflow_id,
                    requested_by=requested_by,
                )
            )  # fmt: skip
    except IntegrityError:  # the other one was first
        return False
    return True


def revocations(session: Session, *, ca: str) -> tuple[Revocation, ...]:
    rows = session.exec(
        select(Certificate)
        .where(Certificate.ca == ca, Certificate.status == CertStatus.REVOKED)
        .order_by(col(Certificate.revoked_at))
    ).all()
    return tuple(
        Revocation(int(row.serial, 16), row.revoked_at or utcnow(), row.revocation_reason or "")
        for row in rows
        if row.serial
    )


def store_crl(session: Session, ca: str, number: int, der: bytes) -> bool:
    """Keep ``der`` as the CA's CRL if ``number`` follows the one kept (compare-and-set: two
    revocations building CRLs at once cannot put an older list over a newer one)."""
    moved = session.execute(
        update(CertificateAuthority)
        .where(col(CertificateAuthority.name) == ca)
        .where(col(CertificateAuthority.crl_number) == number - 1)
        .values(crl_number=number, crl_der=der)
    )
    return bool(moved.rowcount)  # type: ignore[attr-defined]


def due_for_renewal(session: Session, as_of: datetime, limit: int = 500) -> list[str]:
    """Issued certificates within their ``renew_before_days`` of expiry, soonest first."""
    rows = session.exec(
        select(Certificate)
        .where(Certificate.status == CertStatus.ISSUED)
        .where(col(Certificate.renew_before_days).is_not(None))
        .where(col(Certificate.not_after).is_not(None))
        .order_by(col(Certificate.not_after))
    ).all()
    due = []
    for row in rows:
        assert row.not_after is not None and row.renew_before_days is not None
        not_after = row.not_after.replace(tzinfo=as_of.tzinfo) if row.not_after.tzinfo is None \
            else row.not_after  # fmt: skip
        if not_after - timedelta(days=row.renew_before_days) <= as_of:
            due.append(row.id)
        if len(due) >= limit:
            break
    return due


def record_created(session: Session, certificate: Certificate, principal: str) -> None:
    """The audit event of a new certificate (ids and names, never its key)."""
    audit.record(
        session, "certificate.created", principal=principal, certificate_id=certificate.id,
        name=certificate.name, ca=certificate.ca, subject=certificate.subject,
        sans=list(certificate.sans), key_type=certificate.key_type,
        requires_approval=certificate.requires_approval,
    )  # fmt: skip
