"""A password change on PostgreSQL, end to end: HTTP API → Temporal → worker → real PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, current_secret, policy
from tests.servers.postgresql import PostgresCluster, Roles, roles_on, running_cluster

OLD = "Old-pass w0rd;$'\"\\x é"


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PostgresCluster]:
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_roles(pg_cluster: PostgresCluster) -> Iterator[Roles]:
    with roles_on(pg_cluster) as roles:
        yield roles


async def test_change_through_the_api(
    stack: Stack, pg_cluster: PostgresCluster, pg_roles: Roles
) -> None:
    user = pg_roles.create(OLD)
    device = await stack.post(
        "/v1/devices",
        {
            "name": f"pg-{secrets.token_hex(4)}",
            "address": "127.0.0.1",
            "port": pg_cluster.port,
            "executor": "postgresql",
            "options": {"database": "postgres", **pg_cluster.client_options()},
        },
    )
    pol = await policy(stack)
    cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
    assert cred["change_template"] == "postgresql/alter-role-self"

    op = await stack.run_operation(cred["id"])

    assert op["status"] == "succeeded", op
    new = current_secret(stack, cred["id"])
    assert new != OLD
    assert await pg_roles.password_works(user, new)
    assert not await pg_roles.password_works(user, OLD)
    steps = [(a["step"], a["outcome"]) for a in op["attempts"]]
    assert steps == [("change", "succeeded"), ("verify", "succeeded")]
    assert "ALTER ROLE" in op["attempts"][0]["transcript"]
    assert new not in str(op) and OLD not in str(op)
