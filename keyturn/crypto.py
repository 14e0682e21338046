"""AES-GCM with keys derived from the master key, one derived key per purpose.

Deriving (HKDF) rather than reusing the master key means a leaked payload key says nothing about
the key that protects secrets at rest, and the key id lets a later key rotation tell versions apart.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_BYTES = 12


class Cipher:
    """Authenticated encryption for one purpose ("secrets", "payloads")."""

    def __init__(self, master_key: bytes, purpose: str) -> None:
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=f"keyturn/{purpose}".encode()
        ).derive(master_key)
        self._aead = AESGCM(derived)
        self.key_id = hashlib.sha256(derived).hexdigest()[:16]

    def encrypt(self, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, associated_data)

    def decrypt(self, blob: bytes, associated_data: bytes = b"") -> bytes:
        return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated_data)


def derived_token(master_key: bytes, purpose: str) -> str:
    """A bearer token for one narrow purpose, stable for a master key (HKDF, like the keys)."""
    derived = HKDF(
        algorithm=hashes.SHA256(), length=24, salt=None, info=f"keyturn/token/{purpose}".encode()
    ).derive(master_key)
    return derived.hex()
