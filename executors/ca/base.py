"""The certificate-authority interface every CA plugin implements, its errors and its registry.

Small on purpose, like the executors': a CA checks its own settings, signs a CSR, is told of a
revocation, and (when Keyturn holds its key) makes a CRL. Plugins register in the
``keyturn.cas`` entry-point group, so an ACME client or a vendor's CA is one more package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any, ClassVar, Protocol, runtime_checkable

from executors.plugins import Plugins

ENTRY_POINT_GROUP = "keyturn.cas"


@dataclass(frozen=True)
class CaKeys:
    """A CA as Keyturn holds it: its settings and, for a CA whose key Keyturn keeps, its
    certificate and private key (decrypted in memory only; kept out of repr)."""

    name: str
    config: dict[str, Any]
    certificate_pem: str = ""
    private_key_pem: str = field(default="", repr=False)


@dataclass(frozen=True)
class SignRequest:
    ca: CaKeys
    csr_pem: str
    validity_days: int


@dataclass(frozen=True)
class Signed:
    certificate_pem: str
    chain_pem: str  # the issuers, up to and including the CA's own certificate
    serial: int
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class Revocation:
    serial: int
    revoked_at: datetime
    reason: str


@dataclass(frozen=True)
class CrlRequest:
    ca: CaKeys
    revoked: tuple[Revocation, ...]
    number: int  # the CRL number (RFC 5280 5.2.3), one more than the last one issued


@dataclass(frozen=True)
class NewCa:
    """What ``create`` made: the certificate to publish and the key Keyturn seals."""

    certificate_pem: str
    private_key_pem: str = field(repr=False)


class CaError(Exception):
    """A CA could not do what was asked. ``kind`` is the operation's error type."""

    kind: ClassVar[str] = "CaError"


class CaConfigurationError(CaError):
    """The CA's settings (or a request's fields) cannot work; ``field`` names the one at fault.
    Found before anything is signed."""

    kind = "ConfigurationError"

    def __init__(self, message: str, field: str = "config") -> None:
        super().__init__(message)
        self.field = field


@runtime_checkable
class CertificateAuthority(Protocol):
    """The plugin interface. ``holds_key``: Keyturn keeps the CA's key (created by
    ``keyturn ca init``) and passes it in ``CaKeys``; a remote CA keeps its own."""

    name: ClassVar[str]
    holds_key: ClassVar[bool]
    key_types: ClassVar[tuple[str, ...]]  # the certificate key types it signs

    def check_config(self, config: dict[str, Any]) -> None:
        """Raise CaConfigurationError for settings that cannot work. Sends nothing anywhere."""

    def create(self, name: str, config: dict[str, Any]) -> NewCa | None:
        """Make the CA's own key and certificate (``keyturn ca init``); None for a CA that
        keeps its own key."""

    async def sign(self, request: SignRequest) -> Signed:
        """Sign the CSR for ``validity_days``; raise CaError on failure."""

    async def revoke(self, ca: CaKeys, serial: int, reason: str) -> None:
        """Tell the CA a certificate is revoked (a CA that Keyturn holds: nothing to tell)."""

    async def crl(self, request: CrlRequest) -> bytes | None:
        """The CRL listing ``revoked``, DER-encoded; None if the CA publishes its own."""


@cache
def registry() -> Plugins[CertificateAuthority]:
    """Installed CA plugins by name. Keyturn's own register through the same entry points."""
    return Plugins(ENTRY_POINT_GROUP, "CA")


def get_ca_plugin(name: str) -> CertificateAuthority:
    try:
        return registry()[name]
    except KeyError:
        known = ", ".join(sorted(registry())) or "none"
        raise LookupError(f"no CA plugin named {name!r} is installed ({known} are)") from None
