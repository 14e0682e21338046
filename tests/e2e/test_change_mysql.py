"""A password change on MariaDB, end to end: HTTP API → Temporal → worker → real MariaDB."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from secrets import token_hex
from typing import Any

import pytest
from sqlmodel import Session, select

from store.models import AuditEvent
from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, current_secret, policy
from tests.servers.mysql import MysqlServer, MysqlUsers, users_on

OLD = "Old-pass w0rd;$'\"\\x é"


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
            "options": mysql_server.client_options(),
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


async def test_cleartext_only_when_the_device_allows_it_and_audited(
    stack: Stack, plain_mysql_server: MysqlServer
) -> None:
    """A device that asks for no TLS ({"ssl": false}) is refused when saved unless it allows
    cleartext, and every operation on one that does is audited."""
    server = plain_mysql_server
    with users_on(server) as users:
        user = users.create(OLD)
        device: dict[str, Any] = {
            "address": server.host,
            "port": server.port,
            "executor": "mysql",
            "options": {"ssl": False},
        }
        pol = await policy(stack)
        refused = await stack.api.post("/v1/devices", json={**device, "name": "plain-refused"})
        assert refused.status_code == 422, refused.text
        assert "allow_insecure_transport" in refused.text and "'ssl' is false" in refused.text
        devices = (await stack.get("/v1/devices?limit=500"))["items"]
        assert "plain-refused" not in {d["name"] for d in devices}  # nothing was saved

        allowed = await stack.post(
            "/v1/devices",
            {**device, "name": f"plain-{token_hex(4)}", "allow_insecure_transport": True},
        )
        assert allowed["allow_insecure_transport"] is True
        cred = await credential(stack, allowed["id"], user, OLD, policy_id=pol["id"])
        op = await stack.run_operation(cred["id"])
        assert op["status"] == "succeeded", op
        assert await users.password_works(user, current_secret(stack, cred["id"]))
        with Session(stack.engine) as session:
            events = session.exec(
                select(AuditEvent).where(
                    AuditEvent.operation_id == op["id"],
                    AuditEvent.event == "transport.insecure_allowed",
                )
            ).all()
        # Once per operation, however many steps used the channel (change and verify here).
        assert len(events) == 1
        assert events[0].device_id == allowed["id"]
        assert "'ssl' is false" in events[0].detail["reason"]
