"""The backup file: a store snapshot and the master key, sealed with a passphrase.

Layout: a magic line, a JSON header line (the KDF's parameters, the salt and the nonce), then
the AES-GCM ciphertext of a JSON manifest line followed by the snapshot's bytes. The key comes
from the passphrase through scrypt; the magic and header are the associated data, so neither
can be altered without the file failing to open. A wrong passphrase and a damaged file look the
same: nothing decrypts.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"KEYTURN-BACKUP 1\n"
# scrypt at 2**15: ~32 MiB and a fraction of a second per attempt, for a file meant to travel.
SCRYPT = {"n": 2**15, "r": 8, "p": 1}
MIN_PASSPHRASE = 12


class BackupUnreadable(Exception):
    """Not a Keyturn backup, a wrong passphrase, or a damaged file."""


@dataclass(frozen=True)
class BackupContents:
    dialect: str  # "sqlite" or "postgresql": how the snapshot was taken
    snapshot: bytes  # a SQLite database file, or a pg_dump archive (custom format)
    master_key: bytes = field(repr=False)  # a secret: kept out of repr
    schema_version: int
    created_at: str


def seal(contents: BackupContents, passphrase: str) -> bytes:
    salt, nonce = os.urandom(16), os.urandom(12)
    header = json.dumps(
        {"kdf": "scrypt", **SCRYPT, "salt": _b64(salt), "nonce": _b64(nonce)}
    ).encode()
    manifest = json.dumps(
        {
            "dialect": contents.dialect,
            "master_key": _b64(contents.master_key),
            "schema_version": contents.schema_version,
            "created_at": contents.created_at,
        }
    ).encode()
    aad = MAGIC + header + b"\n"
    sealed = AESGCM(_key(passphrase, salt, SCRYPT)).encrypt(
        nonce, manifest + b"\n" + contents.snapshot, aad
    )
    return aad + sealed


def open_sealed(blob: bytes, passphrase: str) -> BackupContents:
    if not blob.startswith(MAGIC):
        raise BackupUnreadable("not a Keyturn backup file")
    newline = blob.find(b"\n", len(MAGIC))
    if newline < 0:
        raise BackupUnreadable("the backup file is damaged (no header)")
    header_end = newline + 1
    try:
        header: dict[str, Any] = json.loads(blob[len(MAGIC) : header_end])
        params = {"n": int(header["n"]), "r": int(header["r"]), "p": int(header["p"])}
        salt, nonce = _unb64(header["salt"]), _unb64(header["nonce"])
    except (ValueError, KeyError, TypeError):
        raise BackupUnreadable("the backup file is damaged (its header)") from None
    try:
        plain = AESGCM(_key(passphrase, salt, params)).decrypt(
            nonce, blob[header_end:], blob[:header_end]
        )
    except InvalidTag:
        raise BackupUnreadable("wrong passphrase, or the backup file is damaged") from None
    manifest_line, _, snapshot = plain.partition(b"\n")
    manifest = json.loads(manifest_line)
    return BackupContents(
        dialect=manifest["dialect"],
        snapshot=snapshot,
        master_key=_unb64(manifest["master_key"]),
        schema_version=int(manifest["schema_version"]),
        created_at=manifest["created_at"],
    )


def _key(passphrase: str, salt: bytes, params: dict[str, int]) -> bytes:
    return Scrypt(salt=salt, length=32, **params).derive(passphrase.encode())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
