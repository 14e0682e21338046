"""Keyturn's own CA (``"ca": "internal"``): its key is sealed in the vault (``keyturn ca init``
makes it) and it signs with ``cryptography``. Revocation needs no call: its CRL, signed here,
is what tells the world."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from executors.ca.base import (
    CaConfigurationError,
    CaError,
    CaKeys,
    CrlRequest,
    NewCa,
    Signed,
    SignRequest,
)
from executors.ca.keys import KEY_TYPES, generate_key, load_private_key, private_pem

_SETTINGS = {"subject", "validity_days", "key_type"}
DEFAULT_CA_DAYS = 3650
# A CRL is good for this long; revocations publish a new one at once.
CRL_VALIDITY = timedelta(days=7)
# Certificates start this much before they are signed: clocks of their clients drift.
BACKDATE = timedelta(minutes=5)
_REASONS = {r.value: r for r in x509.ReasonFlags}


class InternalCa:
    name: ClassVar[str] = "internal"
    holds_key: ClassVar[bool] = True
    key_types: ClassVar[tuple[str, ...]] = KEY_TYPES

    def check_config(self, config: dict[str, Any]) -> None:
        unknown = sorted(set(config) - _SETTINGS)
        if unknown:
            raise CaConfigurationError(
                f"the internal CA takes only {', '.join(sorted(_SETTINGS))}, not "
                f"{', '.join(unknown)}"
            )
        days = config.get("validity_days", DEFAULT_CA_DAYS)
        if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 36500:
            raise CaConfigurationError("validity_days: a whole number of days, 1 to 36500",
                                       "config.validity_days")  # fmt: skip
        if config.get("key_type", "ecdsa-p384") not in KEY_TYPES:
            raise CaConfigurationError(f"key_type: one of {', '.join(KEY_TYPES)}",
                                       "config.key_type")  # fmt: skip
        subject = config.get("subject", "CN=Keyturn internal CA")
        if not isinstance(subject, str) or not subject.strip():
            raise CaConfigurationError("subject: a distinguished name", "config.subject")

    def create(self, name: str, config: dict[str, Any]) -> NewCa:
        self.check_config(config)
        key = generate_key(config.get("key_type", "ecdsa-p384"))
        subject = x509.Name.from_rfc4514_string(config.get("subject", f"CN=Keyturn CA {name}"))
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + timedelta(days=config.get("validity_days", DEFAULT_CA_DAYS)))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )  # fmt: skip
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return NewCa(_pem(certificate), private_pem(key))

    async def sign(self, request: SignRequest) -> Signed:
        issuer, key = _issuer(request.ca)
        try:
            csr = x509.load_pem_x509_csr(request.csr_pem.encode())
        except ValueError as exc:
            raise CaConfigurationError(f"the CSR does not parse: {exc}", "csr") from None
        if not csr.is_signature_valid:
            raise CaConfigurationError("the CSR's signature does not verify", "csr")
        now = datetime.now(UTC)
        not_after = min(now + timedelta(days=request.validity_days), issuer.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(issuer.subject)
            .public_key(csr.public_key())
            # 159 random bits: unpredictable (RFC 5280 allows 20 octets), positive.
            .serial_number(secrets.randbits(159) | 1 << 158)
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        try:
            sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            builder = builder.add_extension(sans.value, critical=False)
        except x509.ExtensionNotFound:
            pass
        certificate = builder.sign(key, hashes.SHA256())
        return Signed(
            certificate_pem=_pem(certificate),
            chain_pem=request.ca.certificate_pem,
            serial=certificate.serial_number,
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
        )

    async def revoke(self, ca: CaKeys, serial: int, reason: str) -> None:
        return None  # the CRL (``crl``) is how this CA tells of a revocation

    async def crl(self, request: CrlRequest) -> bytes:
        issuer, key = _issuer(request.ca)
        now = datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(now)
            .next_update(now + CRL_VALIDITY)
            .add_extension(x509.CRLNumber(request.number), critical=False)
        )
        for revoked in request.revoked:
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(revoked.serial)
                .revocation_date(revoked.revoked_at)
            )
            if revoked.reason in _REASONS:  # an RFC 5280 reason code, else the reason is ours
                entry = entry.add_extension(x509.CRLReason(_REASONS[revoked.reason]), False)
            builder = builder.add_revoked_certificate(entry.build())
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _issuer(ca: CaKeys) -> tuple[x509.Certificate, Any]:
    if not ca.certificate_pem or not ca.private_key_pem:
        raise CaError(f"CA {ca.name!r} has no key: run `keyturn ca init --name {ca.name}`")
    issuer = x509.load_pem_x509_certificate(ca.certificate_pem.encode())
    return issuer, load_private_key(ca.private_key_pem)


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()
