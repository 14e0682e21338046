"""Neither the old nor the new password appears in workflow history, logs or the database file."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowFailureError

from keyturn.codec import EncryptionCodec
from tests.e2e.conftest import Stack
from tests.e2e.helpers import approve_template, credential, current_secret, policy, ssh_device
from tests.e2e.leaks import store_bytes
from tests.executors.encodings import encodings_present
from tests.servers.postgresql import PostgresCluster, roles_on, running_cluster
from tests.servers.sshd import Sshd, Users

OLD = "Zq8!old-secret-that-must-not-leak"


def _payloads(node: Any) -> list[dict[str, Any]]:
    """Every Payload message inside a history event, found by its shape."""
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


async def test_no_secret_in_history_logs_or_database(
    stack: Stack, sshd: Sshd, ssh_users: Users, keyturn_logs: pytest.LogCaptureFixture
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack)
    cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
    accepted = await stack.post(
        f"/v1/credentials/{cred['id']}/operations", {"kind": "change"}, expect=202
    )
    handle = stack.client.get_workflow_handle(accepted["workflow_id"])
    await handle.result()
    new = current_secret(stack, cred["id"])
    assert new != OLD and await ssh_users.password_works(user, new)
    secrets = [OLD.encode(), new.encode()]

    # History as Temporal stores it (encrypted payloads) ...
    history = await handle.fetch_history()
    raw = json.dumps(history.to_json_dict()).encode()
    assert all(s not in raw for s in secrets)
    # ... and decrypted, which proves the payloads themselves carry ids only.
    codec = EncryptionCodec(stack.settings.master_key_bytes)
    encoded = [ParseDict(p, Payload()) for p in _payloads(history.to_json_dict())]
    assert encoded, "the history has payloads to check"
    decoded = await codec.decode(encoded)
    assert any(cred["id"].encode() in p.data for p in decoded)  # the decoding worked
    assert all(s not in p.data for p in decoded for s in secrets)

    # Logs of the whole run, at DEBUG.
    logged = "\n".join(r.getMessage() for r in keyturn_logs.records) + keyturn_logs.text
    assert keyturn_logs.records, "logging was captured"
    assert OLD not in logged and new not in logged

    # The API's view of the operation (transcripts included).
    op = await stack.get(f"/v1/operations/{accepted['operation_id']}")
    assert OLD not in json.dumps(op) and new not in json.dumps(op)

    # The database files, byte for byte (the WAL holds recent writes).
    content = store_bytes(stack)  # not read here: see store_bytes
    assert cred["id"].encode() in content  # the file really holds this credential
    assert all(s not in content for s in secrets)


# -- a target that echoes the secret back, in every encoding ---------------------------------

NASTY = "Ol\\d-\"pw' $HOME 100% é字"
# Change templates whose statement makes PostgreSQL echo the current password: in an error, and
# as a base64 value that the expect: line refuses (its error quotes the value).
ECHOES = {
    "echo-raw": "SELECT {{ current_password }}::int;",
    "echo-base64": (
        "SELECT encode(convert_to({{ current_password }}, 'UTF8'), 'base64');\n-- expect: no"
    ),
    "echo-json": "SELECT to_json({{ current_password }}::text)::text;\n-- expect: no",
}


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PostgresCluster]:
    with running_cluster() as cluster:
        yield cluster


async def test_a_secret_the_target_echoes_is_nowhere_in_any_encoding(
    stack: Stack, pg_cluster: PostgresCluster, keyturn_logs: pytest.LogCaptureFixture
) -> None:
    with roles_on(pg_cluster) as roles:
        user = roles.create(NASTY)
        device = await stack.post(
            "/v1/devices",
            {
                "name": f"pg-echo-{secrets.token_hex(4)}",
                "address": "127.0.0.1",
                "port": pg_cluster.port,
                "executor": "postgresql",
                "options": pg_cluster.client_options(),
            },
        )
        pol = await policy(stack, max_attempts=1)
        texts: list[str] = []
        for name, body in ECHOES.items():
            template = f"{name}-{secrets.token_hex(3)}"
            saved = await stack.post(
                "/v1/templates",
                {"name": template, "executor": "postgresql", "kind": "change", "body": body},
            )
            await approve_template(stack.api, template, saved["version"])
            cred = await credential(
                stack, device["id"], user, NASTY, policy_id=pol["id"], change_template=template
            )
            accepted = await stack.post(
                f"/v1/credentials/{cred['id']}/operations", {"kind": "change"}, expect=202
            )
            handle = stack.client.get_workflow_handle(accepted["workflow_id"])
            with contextlib.suppress(WorkflowFailureError):
                await handle.result()
            op = await stack.get(f"/v1/operations/{accepted['operation_id']}")
            assert op["status"] == "failed" and "***" in json.dumps(op), op  # it was echoed
            texts.append(json.dumps(op, ensure_ascii=False))  # the API's answer
            history = (await handle.fetch_history()).to_json_dict()
            texts.append(json.dumps(history))
            decoded = await EncryptionCodec(stack.settings.master_key_bytes).decode(
                [ParseDict(p, Payload()) for p in _payloads(history)]
            )
            texts += [p.data.decode("utf-8", "replace") for p in decoded]
        assert await roles.password_works(user, NASTY)  # nothing changed on the target

    texts.append("\n".join(r.getMessage() for r in keyturn_logs.records) + keyturn_logs.text)
    stored = store_bytes(stack)  # read by a child process: see store_bytes
    texts += [stored.decode("utf-8", "replace"), stored.decode("latin-1")]
    for text in texts:
        assert not encodings_present(text, NASTY), encodings_present(text, NASTY)
