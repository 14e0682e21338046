"""A certificate's key pair and CSR, made by Keyturn with ``cryptography``; names checked.

The private key leaves here as unencrypted PKCS#8 PEM only to be sealed in the vault at once
(store/vault.py ``seal``); the CSR and the certificate are public.
"""

from __future__ import annotations

import ipaddress
import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

# What a certificate's key may be: the types every TLS server and client of today speaks.
KEY_TYPES = ("ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096")
DEFAULT_KEY_TYPE = "ecdsa-p256"
MAX_SANS = 100
# A DNS name (RFC 1123 labels), a wildcard allowed as its whole first label.
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DNS_NAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*\.?$")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def generate_key(key_type: str) -> PrivateKey:
    if key_type.startswith("ecdsa-"):
        curve = ec.SECP256R1() if key_type == "ecdsa-p256" else ec.SECP384R1()
        return ec.generate_private_key(curve)
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise ValueError(f"key_type must be one of {', '.join(KEY_TYPES)}")


def private_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def load_private_key(pem: str) -> PrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("not an ECDSA or RSA private key")
    return key


def san_problem(name: str) -> str | None:
    """Why ``name`` cannot be a subject alternative name (a DNS name or an IP address)."""
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        pass
    if len(name) > 253 or not _DNS_NAME.match(name):
        return f"{name!r} is neither a DNS name nor an IP address"
    return None


def subject_name(subject: str) -> x509.Name:
    """``CN=web-1,O=Acme`` (RFC 4514), or a bare common name."""
    if "=" in subject:
        return x509.Name.from_rfc4514_string(subject)
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])


def subject_problem(subject: str) -> str | None:
    try:
        name = subject_name(subject)
    except ValueError as exc:
        why = f": {exc}" if str(exc) else ""
        return f"not an RFC 4514 distinguished name (CN=web,O=Acme) or a common name{why}"
    if not list(name):
        return "the subject is empty"
    return None


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_csr(key: PrivateKey, subject: str, sans: list[str]) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject_name(subject))
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(n) for n in sans]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def certificate_der(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
