"""A just-in-time account's secret, its placeholder and the admin account's password stay out
of every workflow history (the jit-create, its delayed removal, the jit-remove, a deactivate),
the logs, the API's answers and the database files, in every form they could leak in."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict
from temporalio.api.common.v1 import Payload

from keyturn.codec import EncryptionCodec
from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, current_secret, policy, ssh_device
from tests.e2e.leaks import store_bytes
from tests.e2e.lifecycle_helpers import operation_ended, session_event
from tests.e2e.secrets_search import assert_no_secret
from tests.servers.sshd import Sshd, Users
from workflows.contracts import delayed_operation_workflow_id

ADMIN_PASSWORD = "Zq8!admin-secret-that-must-not-leak"
PLACEHOLDER = "Zq8!placeholder-that-must-not-leak"
COMMANDS = ("/usr/sbin/chpasswd", "/usr/sbin/useradd", "/usr/sbin/userdel", "/usr/sbin/usermod")


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


async def test_no_jit_or_admin_secret_in_history_logs_api_or_database(
    stack: Stack, sshd: Sshd, ssh_users: Users, keyturn_logs: pytest.LogCaptureFixture
) -> None:
    admin = ssh_users.create(ADMIN_PASSWORD)
    ssh_users.make_admin(admin, COMMANDS)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack, lock_after_session=True)
    admin_cred = await credential(stack, device["id"], admin, ADMIN_PASSWORD, policy_id=pol["id"])
    user = ssh_users.new_name()
    cred = await credential(
        stack,
        device["id"],
        user,
        PLACEHOLDER,
        policy_id=pol["id"],
        auth_credential_id=admin_cred["id"],
    )
    created = await stack.post(
        f"/v1/credentials/{cred['id']}/operations",
        {"kind": "jit-create", "ttl_seconds": 3600},
        expect=202,
    )
    await operation_ended(stack, created["operation_id"])
    secret = current_secret(stack, cred["id"])
    assert await ssh_users.password_works(user, secret)
    await session_event(stack, cred["id"], "session-start", "s")
    ended = await session_event(stack, cred["id"], "session-end", "s")
    removed = await operation_ended(stack, ended["operation_id"])
    assert removed["status"] == "succeeded", removed
    secrets = (secret, PLACEHOLDER, ADMIN_PASSWORD)

    codec = EncryptionCodec(stack.settings.master_key_bytes)
    workflow_ids = [
        created["workflow_id"],
        removed["workflow_id"],
        delayed_operation_workflow_id("jit-remove", cred["id"]),
    ]
    for workflow_id in workflow_ids:
        history = await stack.client.get_workflow_handle(workflow_id).fetch_history()
        assert_no_secret(json.dumps(history.to_json_dict()), *secrets)
        encoded = [ParseDict(p, Payload()) for p in _payloads(history.to_json_dict())]
        assert encoded, f"{workflow_id} has payloads to check"
        decoded = await codec.decode(encoded)
        assert any(cred["id"].encode() in p.data for p in decoded)  # the decoding worked
        for payload in decoded:
            assert_no_secret(payload.data, *secrets)

    logged = "\n".join(r.getMessage() for r in keyturn_logs.records) + keyturn_logs.text
    assert keyturn_logs.records, "logging was captured"
    assert_no_secret(logged, *secrets)
    for operation_id in (created["operation_id"], ended["operation_id"]):
        shown = await stack.get(f"/v1/operations/{operation_id}")
        assert shown["attempts"], shown
        assert_no_secret(json.dumps(shown), *secrets)
    assert_no_secret(json.dumps(await stack.get(f"/v1/credentials/{cred['id']}")), *secrets)
    content = store_bytes(stack)
    assert cred["id"].encode() in content
    assert_no_secret(content, *secrets)
