"""The keyring: newest key first for everything new, every key for what is already sealed; a
keyring read from a file follows the file, so running processes take a rotation up."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload

from keyturn import keyring
from keyturn.codec import EncryptionCodec
from keyturn.keyring import Keyring


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_a_keyring_file_is_read_again_when_a_key_is_added(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    old = secrets.token_bytes(32)
    path.write_text(_b64(old))  # a key file of an earlier release: one key, no newline
    ring = Keyring.from_file(path)
    before = ring.cipher("secrets")
    sealed = before.encrypt(b"kept")

    new = keyring.add_newest(path)

    assert path.stat().st_mode & 0o777 == 0o600
    assert ring.keys == (new, old) and ring.newest == new
    assert ring.cipher("secrets").key_id != before.key_id
    reopened = ring.cipher_for("secrets", before.key_id)
    assert reopened is not None and reopened.decrypt(sealed) == b"kept"
    assert ring.cipher_for("secrets", "unknown") is None


async def test_the_payload_codec_reads_payloads_of_every_key_in_the_ring(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(_b64(secrets.token_bytes(32)) + "\n")
    codec = EncryptionCodec(Keyring.from_file(path))
    before = await codec.encode([Payload(data=b"started before the rotation")])
    keyring.add_newest(path)
    after = await codec.encode([Payload(data=b"after")])
    assert before[0].metadata["encryption-key-id"] != after[0].metadata["encryption-key-id"]
    decoded = await codec.decode([*before, *after])
    assert [p.data for p in decoded] == [b"started before the rotation", b"after"]
    keyring.write(path, [Keyring.from_file(path).newest])  # the old key forgotten
    with pytest.raises(ValueError, match="not in the keyring"):
        await codec.decode(before)


@pytest.mark.parametrize(
    "text", ["", "not base64!", _b64(b"short"), f"{_b64(secrets.token_bytes(32))},x"]
)
def test_a_malformed_keyring_is_refused_saying_so(text: str) -> None:
    with pytest.raises(ValueError, match="KEYTURN_MASTER_KEY"):
        keyring.parse(text, "KEYTURN_MASTER_KEY")


def test_keyturn_master_key_may_hold_several_keys_newest_first() -> None:
    from keyturn.settings import Settings

    new, old = secrets.token_bytes(32), secrets.token_bytes(32)
    settings = Settings(master_key=f"{_b64(new)},{_b64(old)}", admin_token="t")
    assert settings.keyring.keys == (new, old) and settings.master_key_bytes == new
    assert settings.master_key_path is None
