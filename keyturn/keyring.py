"""The master keys: the newest encrypts everything new, every one still decrypts.

A keyring is read from ``KEYTURN_MASTER_KEY`` (base64 keys separated by commas, newest first) or
from the master key file (one base64 key per line, newest first). ``keyturn rotate-key`` adds a
new key at the top of the file and re-encrypts every secret version with it; the older keys stay
so the payloads of workflows started before the rotation still decrypt. A keyring read from a
file looks at it again when it changes (its size or modification time), so running workers and
APIs take a rotation up without a restart: they write with the new key as soon as it is there,
and a key id they do not know makes them read the file again before giving up.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path

from keyturn.crypto import Cipher

KEY_BYTES = 32


class Keyring:
    def __init__(self, keys: Sequence[bytes], source: Path | None = None) -> None:
        if not keys:
            raise ValueError("a keyring holds at least one master key")
        self._keys = tuple(keys)
        self._source = source
        self._seen = _stamp(source) if source else None
        self._ciphers: dict[tuple[bytes, str], Cipher] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, *keys: bytes) -> Keyring:
        """A fixed keyring, newest first (tests, a backup's key, KEYTURN_MASTER_KEY)."""
        return cls(keys)

    @classmethod
    def from_file(cls, path: Path) -> Keyring:
        return cls(parse(path.read_text(), str(path)), source=path)

    @property
    def newest(self) -> bytes:
        self.refresh()
        return self._keys[0]

    @property
    def keys(self) -> tuple[bytes, ...]:
        self.refresh()
        return self._keys

    def cipher(self, purpose: str) -> Cipher:
        """The newest key's cipher for ``purpose``: what new ciphertext is made with."""
        return self._cipher(self.newest, purpose)

    def cipher_for(self, purpose: str, key_id: str) -> Cipher | None:
        """The cipher that made ``key_id``'s ciphertext, or None if no key of the ring (nor of
        the file, read again) derives it."""
        for force in (False, True):
            self.refresh(force)
            for key in self._keys:
                cipher = self._cipher(key, purpose)
                if cipher.key_id == key_id:
                    return cipher
        return None

    def refresh(self, force: bool = False) -> None:
        """Read the file again if it changed since it was read (or ``force``)."""
        if self._source is None:
            return
        stamp = _stamp(self._source)
        if stamp == self._seen and not force:
            return
        keys = parse(self._source.read_text(), str(self._source))
        with self._lock:
            self._keys, self._seen = tuple(keys), stamp

    def _cipher(self, key: bytes, purpose: str) -> Cipher:
        cipher = self._ciphers.get((key, purpose))
        if cipher is None:
            cipher = self._ciphers[(key, purpose)] = Cipher(key, purpose)
        return cipher


def parse(text: str, where: str) -> list[bytes]:
    """Base64 keys of 32 bytes separated by commas or line breaks, newest first."""
    keys = []
    for item in text.replace(",", "\n").split():
        try:
            key = base64.b64decode(item, validate=True)
        except binascii.Error:
            key = b""
        if len(key) != KEY_BYTES:
            raise ValueError(
                f"{where}: each master key must be the base64 encoding of exactly 32 bytes"
            )
        keys.append(key)
    if not keys:
        raise ValueError(f"{where}: no master key")
    return keys


def add_newest(path: Path) -> bytes:
    """Put a new random key at the top of the keyring file (the older keys stay below it);
    the new key."""
    new = secrets.token_bytes(KEY_BYTES)
    write(path, [new, *parse(path.read_text(), str(path))])
    return new


def write(path: Path, keys: Sequence[bytes]) -> None:
    """Replace the keyring file whole (mode 0600, synced), so a reader never sees half."""
    lines = "".join(base64.b64encode(k).decode() + "\n" for k in keys)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(lines)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _stamp(path: Path) -> tuple[int, int, int]:
    status = path.stat()
    return status.st_mtime_ns, status.st_size, status.st_ino
