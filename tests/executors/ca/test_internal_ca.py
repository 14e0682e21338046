"""The internal CA through the CA plugin interface: it validates its own settings, signs a CSR
Keyturn made (names kept, validity capped by its own), and lists revocations in a signed CRL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from executors.ca.base import (
    CaConfigurationError,
    CaError,
    CaKeys,
    CertificateAuthority,
    CrlRequest,
    Revocation,
    SignRequest,
    get_ca_plugin,
)
from executors.ca.internal import InternalCa
from executors.ca.keys import generate_key, make_csr, san_problem


def test_the_internal_ca_is_an_installed_plugin_of_the_interface() -> None:
    plugin = get_ca_plugin("internal")
    assert isinstance(plugin, InternalCa) and isinstance(plugin, CertificateAuthority)
    with pytest.raises(LookupError, match="no CA plugin named 'acme'"):
        get_ca_plugin("acme")


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"colour": "blue"}, "config"),
        ({"validity_days": 0}, "config.validity_days"),
        ({"validity_days": "10"}, "config.validity_days"),
        ({"key_type": "dsa"}, "config.key_type"),
        ({"subject": ""}, "config.subject"),
    ],
)
def test_the_internal_ca_refuses_settings_it_cannot_use(config: dict[str, object],
                                                        field: str) -> None:  # fmt: skip
    with pytest.raises(CaConfigurationError) as refused:
        InternalCa().check_config(config)
    assert refused.value.field == field


async def test_it_signs_a_csr_and_lists_revocations_in_its_crl() -> None:
    ca = InternalCa()
    made = ca.create("t", {"subject": "CN=Test CA", "validity_days": 2})
    keys = CaKeys("t", {}, made.certificate_pem, made.private_key_pem)
    assert made.private_key_pem not in repr(keys) and made.private_key_pem not in repr(made)
    csr = make_csr(generate_key("rsa-2048"), "CN=web", ["web.example", "10.0.0.1"])
    signed = await ca.sign(SignRequest(keys, csr, validity_days=30))
    certificate = x509.load_pem_x509_certificate(signed.certificate_pem.encode())
    issuer = x509.load_pem_x509_certificate(made.certificate_pem.encode())
    certificate.verify_directly_issued_by(issuer)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in names] == ["web.example", "10.0.0.1"]
    assert signed.not_after == issuer.not_valid_after_utc  # capped: not past the CA's own end
    assert signed.serial == certificate.serial_number > 0

    now = datetime.now(UTC)
    der = await ca.crl(
        CrlRequest(keys, (Revocation(signed.serial, now - timedelta(seconds=5), "superseded"),), 7)
    )
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    entry = crl.get_revoked_certificate_by_serial_number(signed.serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.superseded
    )
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7

    with pytest.raises(CaConfigurationError, match="CSR"):
        await ca.sign(SignRequest(keys, "not a csr", 1))
    with pytest.raises(CaError, match="no key"):
        await ca.sign(SignRequest(CaKeys("t", {}), csr, 1))


@pytest.mark.parametrize(
    ("name", "ok"),
    [("web.example", True), ("*.example.org", True), ("::1", True), ("a..b", False),
     ("-x.example", False), ("x_y.example", False), ("web.*.example", False), ("", False)],
)  # fmt: skip
def test_subject_alternative_names_are_dns_names_or_addresses(name: str, ok: bool) -> None:
    assert (san_problem(name) is None) is ok
