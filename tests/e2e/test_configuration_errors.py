"""A configuration that cannot work fails the operation at once, touching nothing.

An unknown template or a bad device option is found before any connection: the change fails
with ConfigurationError after one recorded attempt, the pending secret is marked failed, nothing
is probed, the credential stays in sync with its current secret, and no login is charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlmodel import Session, col, delete, select

from store.models import Credential, Device, LoginCharge, Template
from tests.e2e.conftest import Stack
from tests.e2e.helpers import (
    approve_template,
    credential,
    current_secret,
    policy,
    ssh_device,
    versions,
)
from tests.servers.sshd import Sshd, Users

OLD = "C0nfig-old-pass"
QUICKLY = 15.0  # seconds: one attempt, no retry, no probe (the policy would retry for longer)


@contextlib.asynccontextmanager
async def listener() -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP port that counts the connections it gets: where a misconfigured device points."""
    accepted: list[int] = []

    async def count(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        server.close()
        await server.wait_closed()


async def timed_change(stack: Stack, credential_id: str) -> tuple[dict[str, Any], float]:
    began = time.monotonic()
    op = await stack.run_operation(credential_id)
    return op, time.monotonic() - began


def charges(stack: Stack, device_id: str) -> list[LoginCharge]:
    with Session(stack.engine) as session:
        return list(session.exec(select(LoginCharge).where(LoginCharge.device_id == device_id)))


async def assert_failed_cleanly(
    stack: Stack, op: dict[str, Any], elapsed: float, cred: dict[str, Any]
) -> None:
    assert op["status"] == "failed", op
    assert op["error_type"] == "ConfigurationError", op
    assert op["resolution"] == "nothing was sent to the target"
    assert [(a["step"], a["outcome"]) for a in op["attempts"]] == [("change", "ConfigurationError")]
    assert elapsed < QUICKLY, f"took {elapsed:.1f}s"
    after = await stack.get(f"/v1/credentials/{cred['id']}")
    assert after["sync_state"] == "in_sync"
    assert after["current_version_id"] == cred["current_version_id"]
    assert current_secret(stack, cred["id"]) == OLD
    assert sorted(state for _, state in versions(stack, cred["id"])) == ["current", "failed"]
    assert charges(stack, cred["device_id"]) == []


def _failed_or_accepted(sshd: Sshd, user: str) -> int:
    log = sshd.log_path.read_text(errors="replace")
    return log.count(f"password for {user} ")  # "Accepted password for" / "Failed password for"


async def test_a_deleted_template_fails_at_once(stack: Stack, sshd: Sshd, ssh_users: Users) -> None:
    user = ssh_users.create(OLD)
    name = f"test/short-lived-{secrets.token_hex(4)}"
    body = "# kind: change\nexec: true\nexit: 0\n"
    saved = await stack.post(
        "/v1/templates", {"name": name, "executor": "ssh", "kind": "change", "body": body}
    )
    await approve_template(stack.api, name, saved["version"])
    device = await ssh_device(stack, sshd)
    pol = await policy(stack, max_attempts=5, retry_interval_seconds=2.0)
    cred = await credential(
        stack, device["id"], user, OLD, policy_id=pol["id"], change_template=name
    )
    with Session(stack.engine) as session:  # the template is deleted from the store
        session.exec(delete(Template).where(col(Template.name) == name))
        session.commit()

    op, elapsed = await timed_change(stack, cred["id"])

    await assert_failed_cleanly(stack, op, elapsed, cred)
    # The message says what is wrong and where: the credential, its field, the name.
    assert name in op["error"] and cred["id"] in op["error"] and "change_template" in op["error"]
    assert "ssh/linux-passwd" in op["error"]  # and what would be accepted
    assert _failed_or_accepted(sshd, user) == 0  # the target never saw a login
    assert await ssh_users.password_works(user, OLD)


async def test_a_template_of_another_executor_fails_at_once(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack, max_attempts=5, retry_interval_seconds=2.0)
    cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
    with Session(stack.engine) as session:  # edited behind the API's back
        row = session.get(Credential, cred["id"])
        assert row is not None
        row.change_template = "postgresql/alter-role-self"
        session.add(row)
        session.commit()

    op, elapsed = await timed_change(stack, cred["id"])

    await assert_failed_cleanly(stack, op, elapsed, cred)
    assert "a postgresql change template" in op["error"], op["error"]
    assert _failed_or_accepted(sshd, user) == 0


BAD_OPTIONS = [
    pytest.param("postgresql", {"sslmode": "sometimes"}, "sslmode", id="postgresql-sslmode"),
    pytest.param("mysql", {"ssl": "yes"}, "'ssl'", id="mysql-ssl"),
    pytest.param("ldap", {"use_ssl": True}, "base_dn", id="ldap-no-base-dn"),
    pytest.param("http", {"auth": "kerberos"}, "'auth'", id="http-auth"),
    pytest.param("winrm", {"transport": "digest"}, "transport", id="winrm-transport"),
    pytest.param("ssh", {"shell": "zsh"}, "takes only the option", id="ssh-options"),
]
GOOD_OPTIONS: dict[str, dict[str, Any]] = {  # encrypted and verified: saved without exemption
    "postgresql": {"sslmode": "verify-full"},
    "mysql": {"ssl": True},
    "ldap": {"base_dn": "dc=example,dc=org", "start_tls": True},
    "http": {"scheme": "https"},
    "winrm": {"transport": "basic", "scheme": "https"},
    "ssh": {},
}


@pytest.mark.parametrize(("executor", "options", "field"), BAD_OPTIONS)
async def test_the_executor_refuses_a_bad_device_option_when_the_device_is_saved(
    stack: Stack, executor: str, options: dict[str, Any], field: str
) -> None:
    name = f"{executor}-{secrets.token_hex(4)}"
    body = {"name": name, "address": "127.0.0.1", "executor": executor, "options": options}
    refused = await stack.api.post("/v1/devices", json={**body, "trust_on_first_use": True})

    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert problem["errors"][0]["field"] == "options" and field in problem["detail"], problem
    assert name not in [d["name"] for d in (await stack.api.get("/v1/devices")).json()["items"]]


@pytest.mark.parametrize(("executor", "options", "field"), BAD_OPTIONS)
async def test_a_bad_device_option_stored_behind_the_api_fails_at_once_without_connecting(
    stack: Stack, executor: str, options: dict[str, Any], field: str
) -> None:
    async with listener() as (port, accepted):
        device = await stack.post(
            "/v1/devices",
            {
                "name": f"{executor}-{secrets.token_hex(4)}",
                "address": "127.0.0.1",
                "port": port,
                "executor": executor,
                "trust_on_first_use": True,
                "options": GOOD_OPTIONS[executor],
            },
        )
        with Session(stack.engine) as session:  # edited behind the API's back
            row = session.get(Device, device["id"])
            assert row is not None
            row.options = options
            session.add(row)
            session.commit()
        pol = await policy(stack, max_attempts=5, retry_interval_seconds=2.0)
        cred = await credential(stack, device["id"], "app", OLD, policy_id=pol["id"])

        op, elapsed = await timed_change(stack, cred["id"])

    await assert_failed_cleanly(stack, op, elapsed, cred)
    assert device["name"] in op["error"] and field in op["error"], op["error"]
    assert accepted == []  # nothing even opened a connection
