"""Look for a secret in what a test received, in the forms it could leak in."""

from __future__ import annotations

import base64
import json


def leaked_forms(secret: str) -> list[bytes]:
    """The secret raw, base64 (standard and URL-safe), and JSON-escaped."""
    raw = secret.encode()
    return [
        raw,
        base64.b64encode(raw),
        base64.urlsafe_b64encode(raw),
        json.dumps(secret).encode()[1:-1],
        json.dumps(secret, ensure_ascii=True).encode()[1:-1],
    ]


def assert_no_secret(received: bytes | str, *secrets: str) -> None:
    data = received.encode() if isinstance(received, str) else received
    for secret in secrets:
        for form in leaked_forms(secret):
            assert form not in data, f"a secret ({len(secret)} chars) leaked, as {form[:4]!r}…"
