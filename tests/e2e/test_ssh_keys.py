"""SSH keys as secrets, end to end: HTTP API → workflow → worker → two real sshd hosts.

The credential's device and its key target are two sshd processes reading different
authorized_keys files (tests/e2e/key_helpers.py): a change must authorize the new key on both,
prove it logs in on both, and only then remove the old key from both.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict
from sqlmodel import Session, select
from temporalio.api.common.v1 import Payload

from keyturn.codec import EncryptionCodec
from store.models import Credential
from store.ssh_keys import generate_private_key, public_key_line
from tests.e2e.conftest import Stack
from tests.e2e.helpers import approve_template, current_secret, policy, versions
from tests.e2e.key_helpers import (
    UNRELATED,
    KeyAccount,
    key_account,
    key_device,
    key_leaks,
    second_host,
)
from tests.e2e.leaks import _payloads, store_bytes
from tests.servers.sshd import Sshd, Users

__all__ = ["second_host"]  # the fixture, imported for the tests of this module


async def _account(
    stack: Stack, users: Users, hosts: tuple[Sshd, Sshd], **policy_fields: Any
) -> KeyAccount:
    pol = await policy(stack, **policy_fields)
    return await key_account(stack.post, users, hosts, pol["id"])


async def _history_texts(stack: Stack, workflow_id: str) -> list[str]:
    history = (await stack.client.get_workflow_handle(workflow_id).fetch_history()).to_json_dict()
    decoded = await EncryptionCodec(stack.settings.master_key_bytes).decode(
        [ParseDict(p, Payload()) for p in _payloads(history)]
    )
    assert decoded, "the history has payloads to check"
    return [json.dumps(history), *(p.data.decode("utf-8", "replace") for p in decoded)]


@pytest.mark.parametrize("key_type", ["ed25519", "rsa"])
async def test_a_key_change_moves_both_hosts_to_the_new_key_and_nothing_else(
    stack: Stack,
    sshd: Sshd,
    second_host: Sshd,
    ssh_users: Users,
    key_type: str,
    keyturn_logs: pytest.LogCaptureFixture,
) -> None:
    hosts = (sshd, second_host)
    bits = {"key_bits": 2048} if key_type == "rsa" else {}
    account = await _account(stack, ssh_users, hosts, key_type=key_type, **bits)
    assert await account.logs_in_everywhere(ssh_users, account.old_key) == [True, True]

    accepted = await stack.post(
        f"/v1/credentials/{account.credential_id}/operations", {"kind": "change"}, expect=202
    )
    await stack.client.get_workflow_handle(accepted["workflow_id"]).result()
    op = await stack.get(f"/v1/operations/{accepted['operation_id']}")

    assert op["status"] == "succeeded", op
    new_key = current_secret(stack, account.credential_id)
    assert new_key != account.old_key
    assert public_key_line(new_key).startswith(
        "ssh-ed25519" if key_type == "ed25519" else "ssh-rsa"
    )
    assert await account.logs_in_everywhere(ssh_users, new_key) == [True, True]
    assert await account.logs_in_everywhere(ssh_users, account.old_key) == [False, False]
    new_line = public_key_line(new_key, f"keyturn:{account.credential_id}")
    assert account.files(ssh_users) == [UNRELATED + new_line + "\n"] * 2  # the rest untouched
    # The result names each device.
    results = {r["device_id"]: r for r in op["key_results"]}
    assert set(results) == set(account.device_ids)
    assert all(
        (r["new_key_installed"], r["new_key_logs_in"], r["old_key_removed"]) == (True, True, True)
        for r in results.values()
    ), results
    # The secret read answers the key pair; versions moved as for a password.
    secret = await stack.get(f"/v1/credentials/{account.credential_id}/secret")
    assert secret["private_key"] == new_key and secret["public_key"] == new_line
    assert "password" not in secret
    version = await stack.api.get(
        f"/v1/credentials/{account.credential_id}/versions/{secret['version_id']}/secret",
        params={"reason": "test"},
    )
    assert version.json()["secret"] == new_key and version.json()["public_key"] == new_line
    assert sorted(state for _, state in versions(stack, account.credential_id)) == [
        "current",
        "previous",
    ]

    # Neither key anywhere but in the secret read: history (stored and decrypted), logs, the
    # operation and audit answers, the store's files.
    texts = await _history_texts(stack, accepted["workflow_id"])
    texts.append("\n".join(r.getMessage() for r in keyturn_logs.records) + keyturn_logs.text)
    texts.append(json.dumps(op))
    texts.append(json.dumps(await stack.get(f"/v1/credentials/{account.credential_id}")))
    audit = await stack.api.get("/v1/audit", params={"credential_id": account.credential_id})
    texts.append(audit.text)
    stored = store_bytes(stack)
    assert account.credential_id.encode() in stored
    texts += [stored.decode("utf-8", "replace"), stored.decode("latin-1")]
    for text in texts:
        for key in (account.old_key, new_key):
            assert not key_leaks(text, key), key_leaks(text, key)


async def test_a_key_change_through_a_sudo_account_on_the_credentials_device(
    stack: Stack, sshd: Sshd, second_host: Sshd, ssh_users: Users
) -> None:
    """The credential's device is edited through its auth account (sudo -u the account); the
    key target, as always, by the account itself with its key."""
    admin_password = "Adm1n pass'word\"$"
    admin = ssh_users.create(admin_password)
    pol = await policy(stack)
    first = await key_device(stack.post, sshd)
    admin_cred = await stack.post(
        "/v1/credentials",
        {"device_id": first["id"], "username": admin, "password": admin_password},
    )
    account = await key_account(
        stack.post, ssh_users, (sshd, second_host), pol["id"], device=first,
        auth_credential_id=admin_cred["id"],
    )  # fmt: skip
    ssh_users.allow_shell_as(admin, account.username)
    cred = await stack.get(f"/v1/credentials/{account.credential_id}")
    assert cred["change_template"] == "ssh/authorized-keys-add-sudo"
    assert cred["key_remove_template"] == "ssh/authorized-keys-remove-sudo"

    op = await stack.run_operation(account.credential_id)

    assert op["status"] == "succeeded", op
    new_key = current_secret(stack, account.credential_id)
    assert await account.logs_in_everywhere(ssh_users, new_key) == [True, True]
    assert await account.logs_in_everywhere(ssh_users, account.old_key) == [False, False]
    line = public_key_line(new_key, f"keyturn:{account.credential_id}")
    assert account.files(ssh_users) == [UNRELATED + line + "\n"] * 2
    assert "keyturn-sudo-password:" in op["attempts"][0]["transcript"]
    assert admin_password not in json.dumps(op)


async def test_a_key_target_that_fails_leaves_the_old_key_working_everywhere(
    stack: Stack, sshd: Sshd, second_host: Sshd, ssh_users: Users
) -> None:
    """The key target refuses the current key (it drifted): the new key must not stay on the
    credential's own host either, and the vault keeps the old key, which still works there."""
    account = await _account(stack, ssh_users, (sshd, second_host))
    other = generate_private_key("ed25519", None)
    ssh_users.write_authorized_keys(
        account.username, UNRELATED + public_key_line(other) + "\n", second_host
    )

    op = await stack.run_operation(account.credential_id)

    assert op["status"] == "failed", op
    assert op["error_type"] == "AuthenticationFailed", op
    assert current_secret(stack, account.credential_id) == account.old_key
    assert await ssh_users.key_works(account.username, account.old_key, sshd)
    assert ssh_users.read_authorized_keys(account.username, sshd) == (
        UNRELATED + public_key_line(account.old_key) + "\n"
    ), "the new key was left on the first host"
    results = {r["device_id"]: r for r in op["key_results"]}
    assert not any(r["new_key_installed"] for r in results.values()), results
    assert all(r["old_key_removed"] is None for r in results.values()), results
    states = sorted(state for _, state in versions(stack, account.credential_id))
    assert states == ["current", "failed"]


async def test_an_old_key_that_cannot_be_removed_is_named_and_the_new_key_committed(
    stack: Stack, sshd: Sshd, second_host: Sshd, ssh_users: Users
) -> None:
    """Step 3 fails on the credential's own device (its remove template fails): the new key
    works everywhere, so it is current; the old key stays authorized there, and the result
    says so, device by device."""
    pol = await policy(stack)
    template = f"remove-fails-{secrets.token_hex(3)}"
    body = "# kind: key-remove\nexec: sh -c 'echo cannot; exit 3'\nexit: 0\n"
    saved = await stack.post(
        "/v1/templates", {"name": template, "executor": "ssh", "kind": "key-remove", "body": body}
    )
    await approve_template(stack.api, template, saved["version"])
    account = await key_account(
        stack.post, ssh_users, (sshd, second_host), pol["id"], key_remove_template=template
    )

    op = await stack.run_operation(account.credential_id)

    assert op["status"] == "succeeded", op
    new_key = current_secret(stack, account.credential_id)
    assert await account.logs_in_everywhere(ssh_users, new_key) == [True, True]
    assert await account.logs_in_everywhere(ssh_users, account.old_key) == [True, False]
    first, second = (
        next(r for r in op["key_results"] if r["device_id"] == d) for d in account.device_ids
    )
    assert (first["old_key_removed"], second["old_key_removed"]) == (False, True), op
    assert "the old key is still authorized" in first["detail"], first


async def test_a_new_key_that_does_not_log_in_everywhere_is_taken_back_everywhere(
    stack: Stack, sshd: Sshd, second_host: Sshd, ssh_users: Users
) -> None:
    """Step 2 fails: the credential's own device 'installs' the key without authorizing it (its
    install template does nothing), the key target really authorizes it. The new key is removed
    again from both, the vault keeps the old key, which works on both."""
    pol = await policy(stack)
    template = f"install-nothing-{secrets.token_hex(3)}"
    body = "# kind: key-install\nexec: echo keyturn-keys-ok\nexit: 0\n"
    saved = await stack.post(
        "/v1/templates", {"name": template, "executor": "ssh", "kind": "key-install", "body": body}
    )
    await approve_template(stack.api, template, saved["version"])
    account = await key_account(
        stack.post, ssh_users, (sshd, second_host), pol["id"], change_template=template
    )

    op = await stack.run_operation(account.credential_id)

    assert op["status"] == "failed", op
    assert op["error_type"] == "ChangeRejected", op
    assert "removed again" in op["error"], op
    assert current_secret(stack, account.credential_id) == account.old_key
    assert await account.logs_in_everywhere(ssh_users, account.old_key) == [True, True]
    old_line = public_key_line(account.old_key)
    assert account.files(ssh_users) == [UNRELATED + old_line + "\n"] * 2
    assert sorted(state for _, state in versions(stack, account.credential_id)) == [
        "current",
        "failed",
    ]


async def test_changes_and_verifies_requested_together_keep_one_key_working(
    stack: Stack, sshd: Sshd, second_host: Sshd, ssh_users: Users
) -> None:
    """One writer: a change and verifies on the same credential and devices, all at once."""
    account = await _account(stack, ssh_users, (sshd, second_host))
    path = f"/v1/credentials/{account.credential_id}/operations"
    bodies = [{"kind": "change"}, {"kind": "verify"}, {"kind": "change"}, {"kind": "verify"}]
    answers = await asyncio.gather(*(stack.api.post(path, json=b) for b in bodies))
    assert all(a.status_code in (200, 202) for a in answers), [a.text for a in answers]
    accepted = {a.json()["workflow_id"]: a.json()["operation_id"] for a in answers}
    for workflow_id in accepted:
        await stack.client.get_workflow_handle(workflow_id).result()
    ops = [await stack.get(f"/v1/operations/{o}") for o in accepted.values()]

    assert all(op["status"] == "succeeded" for op in ops), ops
    current = current_secret(stack, account.credential_id)
    assert current != account.old_key
    assert await account.logs_in_everywhere(ssh_users, current) == [True, True]
    assert await account.logs_in_everywhere(ssh_users, account.old_key) == [False, False]
    line = public_key_line(current, f"keyturn:{account.credential_id}")
    assert account.files(ssh_users) == [UNRELATED + line + "\n"] * 2


async def test_set_in_vault_takes_a_key_that_logs_in_everywhere(
    stack: Stack, sshd: Sshd, second_host: Sshd, ssh_users: Users
) -> None:
    account = await _account(stack, ssh_users, (sshd, second_host))
    by_hand = generate_private_key("ed25519", None)
    for host in account.hosts:
        ssh_users.write_authorized_keys(account.username, public_key_line(by_hand) + "\n", host)

    op = await stack.run_operation_with(
        account.credential_id, {"kind": "set-in-vault", "private_key": by_hand}
    )

    assert op["status"] == "succeeded", op
    assert current_secret(stack, account.credential_id) == by_hand
    assert by_hand not in json.dumps(op)


# -- refusals: a clear 422 naming the field, and nothing stored ----------------------------------


BROKEN_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"


def _encrypted_key(path: Path) -> str:
    """A key as ssh-keygen writes it with a passphrase."""
    passphrase = ["-N", "a passphrase"]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", *passphrase, "-f", str(path)], check=True)
    return path.read_text()


def _credential_count(stack: Stack) -> int:
    with Session(stack.engine) as session:
        return len(session.exec(select(Credential)).all())


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"private_key": "not a key"}, "private_key", "not an OpenSSH private key"),
        (
            {"private_key": BROKEN_KEY},
            "private_key",
            "does not parse",
        ),
        ({"private_key": "encrypted"}, "private_key", "encrypted with a passphrase"),
        ({"private_key": None, "password": "a-password"}, "password", "takes private_key"),
        ({"private_key": None}, "private_key", "needs its current private key"),
        ({"key_targets": ["no-such-device"]}, "key_targets.0", "no device"),
        ({"key_targets": ["own"]}, "key_targets.0", "own device"),
        ({"secret_type": "password", "password": "pw"}, "private_key", "takes password"),
    ],
)
async def test_a_key_credential_that_cannot_work_is_refused(
    stack: Stack, sshd: Sshd, change: dict[str, Any], field: str, says: str, tmp_path: Path
) -> None:
    device = await key_device(stack.post, sshd)
    body: dict[str, Any] = {
        "device_id": device["id"],
        "username": f"u{secrets.token_hex(3)}",
        "secret_type": "ssh-key",
        "private_key": generate_private_key("ed25519", None),
        **change,
    }
    if body.get("private_key") == "encrypted":
        body["private_key"] = await asyncio.to_thread(_encrypted_key, tmp_path / "k")
    if body.get("key_targets") == ["own"]:
        body["key_targets"] = [device["id"]]
    body = {k: v for k, v in body.items() if v is not None}
    before = _credential_count(stack)

    answer = await stack.api.post("/v1/credentials", json=body)

    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert says in problem["detail"], problem
    assert [e["field"] for e in problem.get("errors", [])] == [field], problem
    if "private_key" in body:
        assert body["private_key"] not in answer.text
    assert _credential_count(stack) == before


@pytest.mark.parametrize(
    ("fields", "says"),
    [({"key_type": "dsa"}, "key_type"), ({"key_type": "rsa", "key_bits": 1024}, "between"),
     ({"key_type": "ed25519", "key_bits": 4096}, "fixed size")],
)  # fmt: skip
async def test_a_policy_with_a_key_size_that_cannot_be_made_is_refused(
    stack: Stack, fields: dict[str, Any], says: str
) -> None:
    answer = await stack.api.post(
        "/v1/policies", json={"name": f"p-{secrets.token_hex(4)}", **fields}
    )
    assert answer.status_code == 422, answer.text
    assert says in answer.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "set-in-vault", "password": "pw"}, "password"),
        ({"kind": "set-in-vault"}, "private_key"),
        ({"kind": "set-in-vault", "private_key": "garbage"}, "private_key"),
        ({"kind": "change", "next_password": "Abcdefgh-12345678"}, "next_password"),
        ({"kind": "change", "private_key": "garbage"}, "private_key"),
    ],
)
async def test_recovery_requests_that_do_not_fit_a_key_credential_are_refused(
    stack: Stack, sshd: Sshd, second_host: Sshd, ssh_users: Users, body: dict[str, Any], field: str
) -> None:
    account = await _account(stack, ssh_users, (sshd, second_host))
    answer = await stack.api.post(f"/v1/credentials/{account.credential_id}/operations", json=body)
    assert answer.status_code == 422, answer.text
    assert [e["field"] for e in answer.json().get("errors", [])] == [field], answer.text
    assert current_secret(stack, account.credential_id) == account.old_key
    assert sorted(state for _, state in versions(stack, account.credential_id)) == ["current"]
