"""Payload codec: every workflow payload is AES-GCM encrypted before it reaches Temporal.

Payloads carry only ids by design (DESIGN.md invariant 1); this codec is defence in depth, and
failure messages are moved into encoded attributes so they are encrypted too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import temporalio.converter
from temporalio.api.common.v1 import Payload

from keyturn.crypto import Cipher

ENCODING = b"binary/keyturn-aesgcm"


class EncryptionCodec(temporalio.converter.PayloadCodec):
    def __init__(self, master_key: bytes) -> None:
        self._cipher = Cipher(master_key, "payloads")
        self._key_id = self._cipher.key_id.encode()

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [
            Payload(
                metadata={"encoding": ENCODING, "encryption-key-id": self._key_id},
                data=self._cipher.encrypt(p.SerializeToString()),
            )
            for p in payloads
        ]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        decoded = []
        for p in payloads:
            if p.metadata.get("encoding") != ENCODING:
                decoded.append(p)
                continue
            if p.metadata.get("encryption-key-id") != self._key_id:
                raise ValueError("payload was encrypted with another Keyturn master key")
            decoded.append(Payload.FromString(self._cipher.decrypt(p.data)))
        return decoded


def data_converter(master_key: bytes) -> temporalio.converter.DataConverter:
    return dataclasses.replace(
        temporalio.converter.default(),
        payload_codec=EncryptionCodec(master_key),
        failure_converter_class=_EncodedFailureConverter,
    )


class _EncodedFailureConverter(temporalio.converter.DefaultFailureConverter):
    def __init__(self) -> None:
        super().__init__(encode_common_attributes=True)
