"""Bad input is refused with a problem naming the field, and changes nothing.

Ids that are empty, addresses that are not a host name or an IP, passwords with a NUL and
usernames an executor's protocol cannot carry: each answers 422 before anything is stored.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import Session, func, select

from store.models import Credential, Device
from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, policy, ssh_device
from tests.servers.sshd import Sshd


def counts(stack: Stack) -> tuple[int, int]:
    with Session(stack.engine) as session:
        devices = session.exec(select(func.count()).select_from(Device)).one()
        credentials = session.exec(select(func.count()).select_from(Credential)).one()
        return devices, credentials


async def refused(stack: Stack, method: str, path: str, body: dict[str, Any], field: str) -> str:
    before = counts(stack)
    answer = await stack.api.request(method, path, json=body)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert (
        field in [error["field"] for error in problem.get("errors", [])]
        or field in problem["detail"]
    ), problem
    assert counts(stack) == before
    return str(problem["detail"])


@pytest.mark.parametrize(
    "field", ["auth_credential_id", "policy_id", "parent_id", "reconcile_credential_id"]
)
async def test_an_empty_id_is_refused_naming_the_field(
    stack: Stack, sshd: Sshd, field: str
) -> None:
    device = await ssh_device(stack, sshd)
    body = {"device_id": device["id"], "username": "someone", "password": "Pw-123456", field: ""}
    await refused(stack, "POST", "/v1/credentials", body, field)
    await refused(stack, "POST", "/v1/credentials", {**body, "device_id": ""}, "device_id")


async def test_an_empty_id_in_a_patch_is_refused(stack: Stack, sshd: Sshd) -> None:
    device = await ssh_device(stack, sshd)
    cred = await credential(stack, device["id"], "patched", "Pw-123456")
    path = f"/v1/credentials/{cred['id']}"
    for field in ("reconcile_credential_id", "parent_id", "policy_id"):
        await refused(stack, "PATCH", path, {field: ""}, field)
        await refused(stack, "PATCH", path, {field: "no-such-id"}, field)
    # An unknown link beside a good one: checked before the store sees either (it answered 500,
    # the foreign key refusing a flush made by the check of the good one).
    pol = await policy(stack)
    await refused(stack, "PATCH", path, {"policy_id": pol["id"], "parent_id": "0"}, "parent_id")
    assert await stack.get(path) == cred


@pytest.mark.parametrize(
    "address",
    ["host:22", "user@host", "-oProxyCommand=sh", "http://host", "a b", "host/x", "-host", ""],
)
async def test_an_address_is_a_host_name_or_an_ip(stack: Stack, address: str) -> None:
    body = {"name": "bad-address", "address": address, "executor": "ssh"}
    await refused(stack, "POST", "/v1/devices", body, "address")


async def test_host_names_and_ip_literals_are_accepted(stack: Stack, sshd: Sshd) -> None:
    for address in ("localhost", "web-1.example.org.", "10.0.0.5", "::1"):
        device = await ssh_device(stack, sshd, address=address)
        assert device["address"] == address


async def test_a_password_with_a_nul_is_refused(stack: Stack, sshd: Sshd) -> None:
    device = await ssh_device(stack, sshd)
    body = {"device_id": device["id"], "username": "nul", "password": "before\0after"}
    detail = await refused(stack, "POST", "/v1/credentials", body, "password")
    assert "before" not in detail and "after" not in detail
    cred = await credential(stack, device["id"], "nul-ok", "Pw-123456")
    path = f"/v1/credentials/{cred['id']}/operations"
    await refused(stack, "POST", path, {"kind": "set-in-vault", "password": "a\0b"}, "password")
    await refused(stack, "POST", path, {"kind": "change", "next_password": "a\0b"}, "next_password")
    await refused(stack, "POST", path, {"kind": "adopt", "version_id": ""}, "version_id")


async def test_a_username_the_protocol_cannot_carry_is_refused(stack: Stack) -> None:
    # HTTP Basic joins user and password with ":", so an http credential cannot have one in its
    # username; an SSH username may not hold a newline either (no executor carries one).
    device = await stack.post(
        "/v1/devices",
        {
            "name": "api-basic",
            "address": "127.0.0.1",
            "executor": "http",
            "allow_insecure_transport": True,
            "options": {"base_url": "http://127.0.0.1:1"},
        },
    )
    body = {"device_id": device["id"], "username": "svc:admin", "password": "Pw-123456"}
    detail = await refused(stack, "POST", "/v1/credentials", body, "username")
    assert "':'" in detail
    body["username"] = "svc\nadmin"
    await refused(stack, "POST", "/v1/credentials", body, "username")
