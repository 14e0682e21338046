"""Rows the store tests need."""

from __future__ import annotations

import secrets

from sqlalchemy.engine import Engine

from store.engine import session_scope
from store.models import Credential, Device


def a_credential(engine: Engine) -> str:
    with session_scope(engine) as session:
        device = Device(
            name=f"d-{secrets.token_hex(3)}",
            address="127.0.0.1",
            port=22,
            executor="ssh",
            host_keys=["ssh-ed25519 AAAA"],
        )
        session.add(device)
        session.flush()
        credential = Credential(
            device_id=device.id,
            username="app",
            change_template="ssh/linux-passwd",
            verify_template="ssh/verify-login",
        )
        session.add(credential)
        return credential.id
