"""``keyturn ca init``: make a CA whose key Keyturn holds (the internal CA), its key sealed in
the vault, and publish its first (empty) CRL. Prints the CA's certificate, for clients to trust."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlmodel import Session

from executors.ca.base import CaConfigurationError, CaKeys, CrlRequest, get_ca_plugin
from keyturn.settings import Settings
from store import audit
from store.engine import make_engine
from store.models import CertificateAuthority
from store.vault import Vault, ca_owner


class CaCommandFailed(Exception):
    """What went wrong, and what to do: printed, exit status 1."""


def init_ca(settings: Settings, name: str, plugin_name: str, config: dict[str, Any]) -> str:
    """Make the CA; its certificate (PEM). Refuses a name already taken."""
    try:
        plugin = get_ca_plugin(plugin_name)
        plugin.check_config(config)
    except LookupError as exc:
        raise CaCommandFailed(str(exc)) from None
    except CaConfigurationError as exc:
        raise CaCommandFailed(f"{exc.field}: {exc}") from None
    engine = make_engine(settings.resolved_database_url)
    vault = Vault(settings.keyring)
    try:
        with Session(engine) as db:
            if db.get(CertificateAuthority, name) is not None:
                raise CaCommandFailed(f"a CA named {name!r} exists; choose another --name")
        made = plugin.create(name, config)
        ca = CertificateAuthority(name=name, plugin=plugin_name, config=config)
        if made is not None:
            sealed = vault.seal(ca_owner(name), made.private_key_pem)
            ca.certificate_pem = made.certificate_pem
            ca.key_id, ca.key_ciphertext = sealed.key_id, sealed.ciphertext
            keys = CaKeys(name, config, made.certificate_pem, made.private_key_pem)
            crl = asyncio.run(plugin.crl(CrlRequest(keys, (), 1)))
            if crl is not None:
                ca.crl_number, ca.crl_der = 1, crl
            del made, keys
        certificate_pem = ca.certificate_pem
        with Session(engine) as db:
            db.add(ca)
            audit.record(db, "ca.created", name=name, plugin=plugin_name)
            db.commit()
        return certificate_pem
    finally:
        engine.dispose()
