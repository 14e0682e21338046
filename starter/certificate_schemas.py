"""Request and response bodies of the certificate routes (starter/routes/certificates.py)."""

from __future__ import annotations

import posixpath
from datetime import datetime
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, Field

from executors.ca.keys import KEY_TYPES, MAX_SANS, san_problem, subject_problem
from starter.schemas import Name, _In
from workflows.contracts import CERTIFICATE_KINDS

KeyType = Literal["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
assert get_args(KeyType) == KEY_TYPES  # the API's list is the key generator's
CertificateOperationKind = Literal["cert-request", "cert-sign", "cert-revoke", "cert-publish"]
assert get_args(CertificateOperationKind) == CERTIFICATE_KINDS  # and the workflows' list
MAX_VALIDITY_DAYS = 3650


def _san(value: str) -> str:
    problem = san_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _subject(value: str) -> str:
    problem = subject_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _absolute_path(value: str) -> str:
    if not value.startswith("/") or posixpath.normpath(value) != value or "\0" in value:
        raise ValueError("an absolute, normalised path (/etc/ssl/web.pem)")
    return value


San = Annotated[str, Field(min_length=1, max_length=253), AfterValidator(_san)]
Path = Annotated[str, Field(min_length=2, max_length=4096), AfterValidator(_absolute_path)]


class PublishTo(_In):
    device_id: str = Field(min_length=1, max_length=64)
    credential_id: str = Field(
        min_length=1,
        max_length=64,
        description="the account Keyturn logs in as on the device (a credential of that device)",
    )
    cert_path: Path = Field(description="where the certificate and its chain are written")
    key_path: Path = Field(description="where the private key is written (mode 0600)")
    reload_command: str | None = Field(
        None, min_length=1, max_length=1000, description="run once both files are in place"
    )
    verify_port: int = Field(
        ge=1, le=65535,
        description="the TLS port of the device that must serve the new certificate",
    )  # fmt: skip


class CertificateIn(_In):
    name: str = Name
    subject: Annotated[str, Field(min_length=1, max_length=1000), AfterValidator(_subject)] = Field(
        description="a common name, or an RFC 4514 distinguished name (CN=web,O=Acme)"
    )
    sans: list[San] = Field(
        default_factory=list, max_length=MAX_SANS, description="DNS names and IP addresses"
    )
    key_type: KeyType = "ecdsa-p256"
    validity_days: int = Field(ge=1, le=MAX_VALIDITY_DAYS)
    ca: str = Field(min_length=1, max_length=200, description="the name of a CA (keyturn ca init)")
    publish_to: list[PublishTo] = Field(default_factory=list, max_length=100)
    renew_before_days: int | None = Field(
        None, ge=1, le=MAX_VALIDITY_DAYS,
        description="renewed and republished this many days before it expires; null: never",
    )  # fmt: skip
    profile: str = Field(default="default", min_length=1, max_length=100)


class RevokeIn(_In):
    reason: str = Field(
        min_length=1,
        max_length=500,
        description="why; an RFC 5280 reason name (keyCompromise, superseded, …) is also put "
        "in the CRL entry",
    )


class ApproveIn(_In):
    """An approval says nothing more than who gives it (the caller)."""


class ActionIn(_In):
    """Publish or renew: nothing to say."""


class CertificateOut(BaseModel):
    id: str
    name: str
    subject: str
    sans: list[str]
    key_type: str
    validity_days: int
    ca: str
    profile: str
    publish_to: list[PublishTo]
    renew_before_days: int | None
    status: str = Field(
        description="requested, awaiting_approval, issued, revoked, or failed (never signed)"
    )
    requested_by: str
    requires_approval: bool
    approved_by: str | None
    serial: str | None = Field(description="hexadecimal, as openssl prints it")
    not_before: datetime | None
    not_after: datetime | None
    certificate_pem: str | None = Field(description="the certificate (public); never its key")
    revoked_at: datetime | None
    revocation_reason: str | None
    published_at: datetime | None
    created_at: datetime


class CertificateCreated(CertificateOut):
    operation_id: str = Field(description="the cert-request operation")
    workflow_id: str


class CertificateActionAccepted(BaseModel):
    certificate_id: str
    operation_id: str = Field(description="the operation of the action (GET /v1/operations/…)")
    kind: str = Field(json_schema_extra={"enum": list(CERTIFICATE_KINDS)})
    workflow_id: str


class CaOut(BaseModel):
    name: str
    plugin: str
    certificate_pem: str
    crl_number: int
    created_at: datetime
