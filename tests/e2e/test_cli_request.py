"""``keyturn request``: the CLI takes the same request path as the HTTP API (package
``requesting``), so a CLI request and an API request on one credential queue at its gate."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys
from pathlib import Path

from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, current_secret, ssh_device
from tests.servers.sshd import Sshd, Users

OLD = "Cli-0ld-pass"
KEYTURN = str(Path(sys.executable).with_name("keyturn"))


def _env(stack: Stack) -> dict[str, str]:
    settings = stack.settings
    return {
        **os.environ,
        "KEYTURN_TEMPORAL_ADDRESS": stack.client.service_client.config.target_host,
        "KEYTURN_DATABASE_URL": settings.resolved_database_url,
        "KEYTURN_DATA_DIR": str(settings.data_dir),
        "KEYTURN_MASTER_KEY": settings.master_key or "",
        "KEYTURN_TASK_QUEUE": settings.task_queue,
    }


async def _keyturn(stack: Stack, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        KEYTURN,
        *args,
        env=_env(stack),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_request_queues_with_an_api_request_on_the_same_credential(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    cred = await credential(stack, device["id"], user, OLD)
    api_request = stack.post(
        f"/v1/credentials/{cred['id']}/operations", {"kind": "verify"}, expect=202
    )
    (code, out, err), api = await asyncio.gather(
        _keyturn(stack, "request", cred["id"], "--kind", "change"), api_request
    )
    assert code == 0, err
    printed = json.loads(out)
    assert printed["workflow_id"] == f"keyturn-change-{cred['id']}"
    assert printed["status"] in ("scheduled", "queued") and printed["joined"] is False

    for workflow_id in (printed["workflow_id"], api["workflow_id"]):
        await stack.client.get_workflow_handle(workflow_id).result()
    change = await stack.get(f"/v1/operations/{printed['operation_id']}")
    verify = await stack.get(f"/v1/operations/{api['operation_id']}")
    assert change["status"] == "succeeded" and change["trigger"] == "manual"
    assert verify["status"] == "succeeded"
    assert current_secret(stack, cred["id"]) != OLD
    assert OLD not in out + err
    # The audit trail names who asked: the shell's user through the CLI, the token's holder.
    by_cli = (await stack.get(f"/v1/audit?operation_id={printed['operation_id']}"))["items"]
    by_api = (await stack.get(f"/v1/audit?operation_id={api['operation_id']}"))["items"]
    assert {e["principal"] for e in by_cli} == {f"cli:{getpass.getuser()}"}
    assert {e["principal"] for e in by_api} == {"admin"}


async def test_cli_request_for_an_unknown_credential_says_so_and_starts_nothing(
    stack: Stack,
) -> None:
    code, out, err = await _keyturn(stack, "request", "no-such-credential")
    assert code == 1 and out == ""
    assert "no credential with id 'no-such-credential'" in err
    found = [
        w.id
        async for w in stack.client.list_workflows("KeyturnCredentialId = 'no-such-credential'")
    ]
    assert found == []


async def test_cli_request_refuses_an_unknown_trigger(stack: Stack) -> None:
    code, _, err = await _keyturn(stack, "request", "any", "--trigger", "whenever")
    assert code == 2 and "invalid choice: 'whenever'" in err


async def test_cli_jit_create_needs_a_time_to_live_and_starts_nothing_without(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    device = await ssh_device(stack, sshd)
    admin = await credential(stack, device["id"], ssh_users.create("Adm1n-cli"), "Adm1n-cli")
    cred = await credential(
        stack, device["id"], "kt_not_yet", "placeholder", auth_credential_id=admin["id"]
    )

    code, out, err = await _keyturn(stack, "request", cred["id"], "--kind", "jit-create")
    assert code == 1 and out == ""
    assert "ttl_seconds: a jit-create needs the account's time to live" in err
    code, _, err = await _keyturn(
        stack, "request", cred["id"], "--kind", "jit-create", "--ttl-seconds", "2"
    )
    assert code == 1 and "out of bounds" in err
    found = [
        w.id async for w in stack.client.list_workflows(f"KeyturnCredentialId = '{cred['id']}'")
    ]
    assert found == []
