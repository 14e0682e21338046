"""Payload codec: every workflow payload is AES-GCM encrypted before it reaches Temporal.

Payloads carry only ids by design (DESIGN.md invariant 1); this codec is defence in depth, and
failure messages are moved into encoded attributes so they are encrypted too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import temporalio.converter
from temporalio.api.common.v1 import Payload

from keyturn.keyring import Keyring

ENCODING = b"binary/keyturn-aesgcm"
PURPOSE = "payloads"


class EncryptionCodec(temporalio.converter.PayloadCodec):
    """Encodes with the keyring's newest key and decodes with whichever key a payload names,
    so workflows started before a key rotation keep replaying while the old key is in the
    ring. A single key (bytes) is a keyring of one."""

    def __init__(self, keys: Keyring | bytes) -> None:
        self._keyring = keys if isinstance(keys, Keyring) else Keyring.of(keys)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        cipher = self._keyring.cipher(PURPOSE)
        key_id = cipher.key_id.encode()
        return [
            Payload(
                metadata={"encoding": ENCODING, "encryption-key-id": key_id},
                data=cipher.encrypt(p.SerializeToString()),
            )
            for p in payloads
        ]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        decoded = []
        for p in payloads:
            if p.metadata.get("encoding") != ENCODING:
                decoded.append(p)
                continue
            key_id = p.metadata.get("encryption-key-id", b"").decode()
            cipher = self._keyring.cipher_for(PURPOSE, key_id)
            if cipher is None:
                raise ValueError("payload was encrypted with a master key not in the keyring")
            decoded.append(Payload.FromString(cipher.decrypt(p.data)))
        return decoded


def data_converter(keys: Keyring | bytes) -> temporalio.converter.DataConverter:
    return dataclasses.replace(
        temporalio.converter.default(),
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=_EncodedFailureConverter,
    )


class _EncodedFailureConverter(temporalio.converter.DefaultFailureConverter):
    def __init__(self) -> None:
        super().__init__(encode_common_attributes=True)
