"""Activation, inactivation and just-in-time accounts on PostgreSQL, MariaDB, OpenLDAP (the
ppolicy overlay) and RabbitMQ, end to end through the API, against the real servers. RabbitMQ has
no lock of its own: its accounts are only created and removed."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, current_secret, policy
from tests.e2e.lifecycle_helpers import credential_row, jit_removal_ended
from tests.servers.mysql import MysqlServer, MysqlUsers, running_server
from tests.servers.mysql import users_on as mysql_users_on
from tests.servers.postgresql import PostgresCluster, Roles, roles_on, running_cluster
from tests.servers.rabbitmq import BASE_URL, RabbitMQ, RabbitUsers, running_rabbitmq
from tests.servers.rabbitmq import users_on as rabbit_users_on
from tests.servers.slapd import ADMIN_DN, ADMIN_PASSWORD, SUFFIX, Slapd, running_slapd
from tests.servers.slapd import Users as LdapUsers
from tests.servers.slapd import users_on as ldap_users_on

OLD = "Old-pass w0rd;$'\"\\x é"
ADMIN_PW = "Adm1n pass'word\"$"
TTL = 5

Works = Callable[[str, str], Awaitable[bool]]


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PostgresCluster]:
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_roles(pg_cluster: PostgresCluster) -> Iterator[Roles]:
    with roles_on(pg_cluster) as roles:
        yield roles


@pytest.fixture(scope="module")
def mysql_server() -> Iterator[MysqlServer]:
    with running_server() as server:
        yield server


@pytest.fixture
def mysql_users(mysql_server: MysqlServer) -> Iterator[MysqlUsers]:
    with mysql_users_on(mysql_server) as users:
        yield users


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    with running_slapd() as server:
        yield server


@pytest.fixture
def ldap_users(slapd: Slapd) -> Iterator[LdapUsers]:
    with ldap_users_on(slapd) as users:
        yield users


@pytest.fixture(scope="module")
def rabbitmq() -> Iterator[RabbitMQ]:
    with running_rabbitmq() as server:
        yield server


@pytest.fixture
def rabbit_users(rabbitmq: RabbitMQ) -> Iterator[RabbitUsers]:
    with rabbit_users_on(rabbitmq) as users:
        yield users


async def _device(stack: Stack, executor: str, port: int, options: dict[str, Any]) -> str:
    device = await stack.post(
        "/v1/devices",
        {
            "name": f"{executor}-{secrets.token_hex(4)}",
            "address": "127.0.0.1",
            "port": port,
            "executor": executor,
            "options": options,
            **({"allow_insecure_transport": True} if executor == "http" else {}),
        },
    )
    return str(device["id"])


async def _managed(
    stack: Stack, device_id: str, admin: str, admin_pw: str, user: str, password: str
) -> dict[str, Any]:
    pol = await policy(stack)
    admin_cred = await credential(stack, device_id, admin, admin_pw, policy_id=pol["id"])
    return await credential(
        stack, device_id, user, password, auth_credential_id=admin_cred["id"], policy_id=pol["id"]
    )


async def _deactivate_then_activate(stack: Stack, cred: dict[str, Any], works: Works) -> None:
    """The login works, is refused once deactivated, and works again once activated; the
    credential's state follows and its secret never moves."""
    user = cred["username"]
    assert await works(user, OLD)

    off = await stack.run_operation(cred["id"], "deactivate")

    assert off["status"] == "succeeded", (off["resolution"], off["error"], off["attempts"])
    assert not await works(user, OLD)
    assert (await credential_row(stack, cred["id"]))["active"] is False

    on = await stack.run_operation(cred["id"], "activate")

    assert on["status"] == "succeeded", on
    assert await works(user, OLD)
    row = await credential_row(stack, cred["id"])
    assert row["active"] is True
    assert row["current_version_id"] == cred["current_version_id"]


async def _jit(
    stack: Stack, cred: dict[str, Any], works: Works, exists: Callable[[], bool]
) -> None:
    """A just-in-time account: created with a fresh secret that logs in, gone after its TTL."""
    created = await stack.run_operation_with(cred["id"], {"kind": "jit-create", "ttl_seconds": TTL})
    assert created["status"] == "succeeded", created
    secret = current_secret(stack, cred["id"])
    assert exists()
    assert await works(cred["username"], secret)
    assert secret not in str(created)

    removed = await jit_removal_ended(stack, cred["id"])

    assert removed["status"] == "succeeded", removed
    assert not exists()
    assert not await works(cred["username"], secret)


async def test_postgresql_nologin_then_login(
    stack: Stack, pg_cluster: PostgresCluster, pg_roles: Roles
) -> None:
    admin = pg_roles.create(ADMIN_PW, admin=True)
    user = pg_roles.create(OLD)
    device = await _device(
        stack,
        "postgresql",
        pg_cluster.port,
        {"database": "postgres", **pg_cluster.client_options()},
    )
    cred = await _managed(stack, device, admin, ADMIN_PW, user, OLD)

    await _deactivate_then_activate(stack, cred, pg_roles.password_works)


async def test_postgresql_just_in_time_role(
    stack: Stack, pg_cluster: PostgresCluster, pg_roles: Roles
) -> None:
    admin = pg_roles.create(ADMIN_PW, admin=True)
    user = f"kt_jit_{secrets.token_hex(4)}"
    pg_roles._roles.append(user)  # dropped at cleanup if a failure left it behind
    device = await _device(
        stack,
        "postgresql",
        pg_cluster.port,
        {"database": "postgres", **pg_cluster.client_options()},
    )
    cred = await _managed(stack, device, admin, ADMIN_PW, user, "placeholder")

    async def check_valid_until(name: str, password: str) -> bool:
        attributes = pg_roles.attributes(name)
        # The role's password stops working at the end of its TTL even without the removal.
        assert attributes is None or attributes[4] is not None, attributes
        return await pg_roles.password_works(name, password)

    await _jit(stack, cred, check_valid_until, lambda: user in pg_roles.role_names())


async def test_mariadb_account_lock_then_unlock(
    stack: Stack, mysql_server: MysqlServer, mysql_users: MysqlUsers
) -> None:
    admin = mysql_users.create(ADMIN_PW, admin=True)
    user = mysql_users.create(OLD)
    device = await _device(stack, "mysql", mysql_server.port, mysql_server.client_options())
    cred = await _managed(stack, device, admin, ADMIN_PW, user, OLD)

    await _deactivate_then_activate(stack, cred, mysql_users.password_works)


async def test_mariadb_just_in_time_account(
    stack: Stack, mysql_server: MysqlServer, mysql_users: MysqlUsers
) -> None:
    admin = mysql_users.create(ADMIN_PW, admin=True)
    user = f"kt_jit_{secrets.token_hex(4)}"
    mysql_users._accounts.append((user, "%"))  # dropped at cleanup if a failure left it
    device = await _device(stack, "mysql", mysql_server.port, mysql_server.client_options())
    cred = await _managed(stack, device, admin, ADMIN_PW, user, "placeholder")

    await _jit(
        stack, cred, mysql_users.password_works, lambda: (user, "%") in mysql_users.accounts()
    )


async def test_openldap_ppolicy_lock_then_unlock(
    stack: Stack, slapd: Slapd, ldap_users: LdapUsers
) -> None:
    user = ldap_users.create(OLD)
    device = await _device(stack, "ldap", slapd.port, {"base_dn": SUFFIX, **slapd.client_options()})
    cred = await _managed(stack, device, ADMIN_DN, ADMIN_PASSWORD, user, OLD)

    async def binds(name: str, password: str) -> bool:
        return ldap_users.password_works(name, password)

    await _deactivate_then_activate(stack, cred, binds)
    assert ldap_users.attribute(LdapUsers.dn(user), "pwdAccountLockedTime") == b""


async def test_rabbitmq_user_created_and_deleted_only(
    stack: Stack, rabbitmq: RabbitMQ, rabbit_users: RabbitUsers
) -> None:
    admin = rabbit_users.create(ADMIN_PW, tags=("administrator",))
    user = f"kt-jit-{secrets.token_hex(4)}"
    rabbit_users._created.append(user)  # deleted at cleanup if a failure left it
    device = await _device(stack, "http", 15672, {"base_url": BASE_URL})
    cred = await _managed(stack, device, admin, ADMIN_PW, user, "placeholder")

    async def logs_in(name: str, password: str) -> bool:
        return rabbitmq.password_works(name, password)

    await _jit(stack, cred, logs_in, lambda: user in rabbitmq.user_names())
    # No lock of its own: deactivate is refused before anything is stored or started.
    response = await stack.api.post(
        f"/v1/credentials/{cred['id']}/operations", json={"kind": "deactivate"}
    )
    assert response.status_code == 422, response.text
    assert "ships no deactivate template" in response.json()["detail"]


async def test_rabbitmq_jit_create_leaves_an_existing_user_alone(
    stack: Stack, rabbitmq: RabbitMQ, rabbit_users: RabbitUsers
) -> None:
    admin = rabbit_users.create(ADMIN_PW, tags=("administrator",))
    existing = rabbit_users.create(OLD, tags=("monitoring",))
    device = await _device(stack, "http", 15672, {"base_url": BASE_URL})
    cred = await _managed(stack, device, admin, ADMIN_PW, existing, "placeholder")

    created = await stack.run_operation_with(cred["id"], {"kind": "jit-create", "ttl_seconds": 60})

    assert created["status"] == "failed", created
    assert rabbitmq.password_works(existing, OLD)
    assert rabbitmq.user(existing)["tags"] == ["monitoring"]
    row = await credential_row(stack, cred["id"])
    assert row["jit_until"] is None and row["current_version_id"] == cred["current_version_id"]
