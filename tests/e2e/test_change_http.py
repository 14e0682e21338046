"""A password change over HTTP, end to end: HTTP API → Temporal workflow → worker → RabbitMQ's
real management API (a throwaway node's)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, current_secret
from tests.servers.rabbitmq import BASE_URL, RabbitMQ, RabbitUsers, running_rabbitmq, users_on

OLD = "Old-pass w0rd;$#'\"\\x%/é"


@pytest.fixture(scope="module")
def rabbitmq() -> Iterator[RabbitMQ]:
    with running_rabbitmq() as server:
        yield server


@pytest.fixture
def rabbit_users(rabbitmq: RabbitMQ) -> Iterator[RabbitUsers]:
    with users_on(rabbitmq) as users:
        yield users


async def http_device(stack: Stack) -> dict[str, Any]:
    body = {
        "name": f"rabbit-{secrets.token_hex(4)}",
        "address": "127.0.0.1",
        "executor": "http",
        "options": {"base_url": BASE_URL},
        "allow_insecure_transport": True,  # the test RabbitMQ serves plain http
    }
    return await stack.post("/v1/devices", body)


async def test_self_change_of_an_administrator(
    stack: Stack, rabbitmq: RabbitMQ, rabbit_users: RabbitUsers
) -> None:
    # RabbitMQ lets only administrators change a password, their own included.
    user = rabbit_users.create(OLD, tags=("administrator",))
    device = await http_device(stack)
    cred = await credential(stack, device["id"], user, OLD)
    assert cred["change_template"] == "http/rabbitmq-change-self"

    op = await stack.run_operation(cred["id"])

    assert op["status"] == "succeeded", op
    new = current_secret(stack, cred["id"])
    assert new != OLD
    assert rabbitmq.password_works(user, new)
    assert not rabbitmq.password_works(user, OLD)
    assert rabbitmq.user(user)["tags"] == ["administrator"]
    steps = [(a["step"], a["outcome"]) for a in op["attempts"]]
    assert steps == [("change", "succeeded"), ("verify", "succeeded")]
    transcript = op["attempts"][0]["transcript"]
    assert "PUT /api/users/" in transcript and "***" in transcript
    assert new not in transcript and OLD not in transcript


async def test_change_through_an_administrator(
    stack: Stack, rabbitmq: RabbitMQ, rabbit_users: RabbitUsers
) -> None:
    admin_password = "Adm1n pass'word\"$"
    admin = rabbit_users.create(admin_password, tags=("administrator",))
    user = rabbit_users.create(OLD, tags=("management",))
    device = await http_device(stack)
    admin_cred = await credential(stack, device["id"], admin, admin_password)
    cred = await credential(stack, device["id"], user, OLD, auth_credential_id=admin_cred["id"])
    assert cred["change_template"] == "http/rabbitmq-change-admin"

    op = await stack.run_operation(cred["id"])

    assert op["status"] == "succeeded", op
    assert rabbitmq.password_works(user, current_secret(stack, cred["id"]))
    assert not rabbitmq.password_works(user, OLD)
    assert rabbitmq.user(user)["tags"] == ["management"]
    assert rabbitmq.password_works(admin, admin_password)  # the admin is untouched
