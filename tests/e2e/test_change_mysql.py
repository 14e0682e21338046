"""A password change on MariaDB, end to end: HTTP API → Temporal → worker → real MariaDB."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, current_secret, policy
from tests.servers.mysql import MysqlServer, MysqlUsers, ready_server, users_on

OLD = "Old-pass w0rd;$'\"\\x é"


@pytest.fixture(scope="module")
def mysql_server() -> MysqlServer:
    return ready_server()


@pytest.fixture
def mysql_users(mysql_server: MysqlServer) -> Iterator[MysqlUsers]:
    with users_on(mysql_server) as users:
        yield users


async def test_change_through_the_api(
    stack: Stack, mysql_server: MysqlServer, mysql_users: MysqlUsers
) -> None:
    user = mysql_users.create(OLD)
    device = await stack.post(
        "/v1/devices",
        {
            "name": f"mariadb-{secrets.token_hex(4)}",
            "address": mysql_server.host,
            "port": mysql_server.port,
            "executor": "mysql",
            "options": {"ssl": False},
        },
    )
    pol = await policy(stack)
    cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
    assert cred["change_template"] == "mysql/set-password-self"

    op = await stack.run_operation(cred["id"])

    assert op["status"] == "succeeded", op
    new = current_secret(stack, cred["id"])
    assert new != OLD
    assert await mysql_users.password_works(user, new)
    assert not await mysql_users.password_works(user, OLD)
    steps = [(a["step"], a["outcome"]) for a in op["attempts"]]
    assert steps == [("change", "succeeded"), ("verify", "succeeded")]
    assert "SET PASSWORD" in op["attempts"][0]["transcript"]
    assert new not in str(op) and OLD not in str(op)
