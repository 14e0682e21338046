"""Searching everywhere a secret could leak: workflow histories (as stored, and decrypted),
logs, and the store's files, for the secret itself and its base64 encodings."""

from __future__ import annotations

import base64
import json
import subprocess
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict
from temporalio.api.common.v1 import Payload

from keyturn.codec import EncryptionCodec
from tests.e2e.conftest import Stack


def forms(secret: str) -> list[bytes]:
    """The secret as bytes and base64 (standard and URL-safe), the way it could leak."""
    raw = secret.encode()
    return [raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"=")]


def _payloads(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if "metadata" in node and "data" in node:
            found.append(node)
        for value in node.values():
            found += _payloads(value)
    elif isinstance(node, list):
        for value in node:
            found += _payloads(value)
    return found


async def assert_not_in_histories(stack: Stack, workflow_ids: list[str], secret: str) -> None:
    codec = EncryptionCodec(stack.settings.master_key_bytes)
    for workflow_id in workflow_ids:
        history = (
            await stack.client.get_workflow_handle(workflow_id).fetch_history()
        ).to_json_dict()
        stored = json.dumps(history).encode()
        decoded = await codec.decode([ParseDict(p, Payload()) for p in _payloads(history)])
        assert decoded, f"{workflow_id} has payloads to check"
        content = stored + b"".join(p.data for p in decoded)
        assert not any(form in content for form in forms(secret)), workflow_id


def assert_not_in_logs(logs: pytest.LogCaptureFixture, secret: str) -> None:
    assert logs.records, "logging was captured"
    logged = ("\n".join(r.getMessage() for r in logs.records) + logs.text).encode()
    assert not any(form in logged for form in forms(secret))


def store_bytes(stack: Stack) -> bytes:
    """The SQLite files as they are on disk (the WAL holds recent writes), read by a child
    process: closing a descriptor of the database file in this process would drop every POSIX
    lock SQLite holds on it here, and another process closing the store (the CLI, say) could
    then take itself for the last user and delete the WAL under this one's connections."""
    files = [stack.db_path, stack.db_path.with_name(stack.db_path.name + "-wal")]
    existing = [str(f) for f in files if f.exists()]
    return subprocess.run(["cat", *existing], capture_output=True, check=True).stdout


def assert_not_in_store(stack: Stack, secret: str, present: str) -> None:
    """``present``: an id the files must hold (proof they were read)."""
    content = store_bytes(stack)
    assert present.encode() in content
    assert not any(form in content for form in forms(secret))
