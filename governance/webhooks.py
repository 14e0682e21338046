"""Callbacks signed per the Standard Webhooks specification.

Headers ``webhook-id`` (the same for every attempt of one message), ``webhook-timestamp`` (Unix
seconds of the attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``;
the key is the decoded part of a ``whsec_<base64>`` secret (KEYTURN_WEBHOOK_SECRET,
``Settings.webhook_key``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

EVENT_TYPE = "operation.ended"


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, message_id, timestamp, body),
    }


def message_id(operation_id: str, position: int = 0) -> str:
    """Stable per operation and callback URL (its position on the operation's list): a receiver
    drops a repeated delivery by this id. Position 0, an older release's single delivery, keeps
    the id it had."""
    return f"msg_{operation_id}_{position}" if position else f"msg_{operation_id}"


def body(timestamp: str, data: dict[str, Any]) -> bytes:
    return json.dumps(
        {"type": EVENT_TYPE, "timestamp": timestamp, "data": data}, separators=(",", ":")
    ).encode()


def refusal(url: str, allow_http: bool) -> str | None:
    """Why a callback URL is refused, or None: https://, or http:// to a loopback address when
    KEYTURN_WEBHOOK_ALLOW_HTTP=1 (development)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return "give an absolute URL, https://host/path"
    if parts.username or parts.password:
        return "a callback URL may not carry credentials; the signature authenticates Keyturn"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and allow_http and _loopback(parts.hostname):
        return None
    if parts.scheme == "http":
        return (
            "use https:// (http:// is allowed only to a loopback address, with "
            "KEYTURN_WEBHOOK_ALLOW_HTTP=1)"
        )
    return "use an https:// URL"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
