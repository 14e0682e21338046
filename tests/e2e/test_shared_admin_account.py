"""Many changes through ONE privileged account at once, end to end, for each shipped "as admin"
change template (ssh, postgresql, mysql, ldap, http/RabbitMQ): 40 target accounts on one device,
each changed through the same auth credential, the device letting 10 operations run at once.
Nothing one session of the admin does may break another's: the ssh template once began with
``sudo -K``, which erased the cached ticket another session's ``sudo -n chpasswd`` relied on, and
about half of the 40 changes failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from temporalio.service import RPCError

from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, current_secret, policy
from tests.servers.mysql import MysqlServer, MysqlUsers, running_server, users_on
from tests.servers.postgresql import PostgresCluster, Roles, roles_on, running_cluster
from tests.servers.rabbitmq import BASE_URL, RabbitMQ, RabbitUsers, running_rabbitmq
from tests.servers.rabbitmq import users_on as rabbit_users_on
from tests.servers.slapd import ADMIN_DN, ADMIN_PASSWORD, SUFFIX, Slapd, running_slapd
from tests.servers.slapd import Users as LdapUsers
from tests.servers.slapd import users_on as ldap_users_on
from tests.servers.sshd import Sshd, Users

ACCOUNTS = 40
CONCURRENCY = 10
# The policy's default lockout budget (3) though 10 changes log in as the admin at once: logins
# in flight wait for each other to settle rather than for the lockout window. A shared
# privileged account must not turn one failure into a retry that hides it: one attempt each.
STRICT = {"max_attempts": 1}
CHECKS_AT_ONCE = 20  # logins the test itself makes at once to check the results
WITHIN = 120.0  # seconds for all operations of one target to finish: a hang fails, not blocks


@dataclass
class Setup:
    """One kind of target: how to register it and its accounts, and check a password there."""

    template: str
    device: dict[str, Any]
    admin: tuple[str, str]  # username, password of the privileged account
    create: Callable[[str], str]  # password -> a new target account's username
    works: Callable[[str, str], Awaitable[bool]]  # username, password -> logs in?


def old_password(index: int) -> str:
    # Characters a shell, SQL, LDAP or the template language would trip over; distinct per account.
    return f"Old pw;$#'\"\\:{index:02d}-{secrets.token_hex(3)}"


# -- the servers (module-scoped, as in the other e2e files; sshd is the session's) --------------


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PostgresCluster]:
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def mysql_server() -> Iterator[MysqlServer]:
    with running_server() as server:
        yield server


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    with running_slapd() as server:
        yield server


@pytest.fixture
def pg_roles(pg_cluster: PostgresCluster) -> Iterator[Roles]:
    with roles_on(pg_cluster) as roles:
        yield roles


@pytest.fixture
def mysql_users(mysql_server: MysqlServer) -> Iterator[MysqlUsers]:
    with users_on(mysql_server) as users:
        yield users


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


# -- one Setup per shipped "as admin" change template ---------------------------------------------


def ssh_setup(request: pytest.FixtureRequest) -> Setup:
    sshd: Sshd = request.getfixturevalue("sshd")
    users: Users = request.getfixturevalue("ssh_users")
    admin_password = "Adm1n pw;$#'\"\\:"
    admin = users.create(admin_password)
    users.make_admin(admin)
    return Setup(
        "ssh/linux-chpasswd",
        {"address": "127.0.0.1", "port": sshd.port, "host_keys": [sshd.host_key_line]},
        (admin, admin_password),
        users.create,
        users.password_works,
    )


def postgresql_setup(request: pytest.FixtureRequest) -> Setup:
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    roles: Roles = request.getfixturevalue("pg_roles")
    admin_password = "Adm1n pw;$#'\"\\:"
    return Setup(
        "postgresql/alter-role-admin",
        {
            "address": "127.0.0.1",
            "port": cluster.port,
            "executor": "postgresql",
            "options": {"database": "postgres", **cluster.client_options()},
        },
        (roles.create(admin_password, admin=True), admin_password),
        roles.create,
        roles.password_works,
    )


def mysql_setup(request: pytest.FixtureRequest) -> Setup:
    server: MysqlServer = request.getfixturevalue("mysql_server")
    users: MysqlUsers = request.getfixturevalue("mysql_users")
    admin_password = "Adm1n pw;$#'\"\\:"
    return Setup(
        "mysql/alter-user-admin",
        {
            "address": server.host,
            "port": server.port,
            "executor": "mysql",
            "options": server.client_options(),
        },
        (users.create(admin_password, admin=True), admin_password),
        users.create,
        users.password_works,
    )


def ldap_setup(request: pytest.FixtureRequest) -> Setup:
    server: Slapd = request.getfixturevalue("slapd")
    users: LdapUsers = request.getfixturevalue("ldap_users")

    async def works(username: str, password: str) -> bool:
        bind_dn = username if username == ADMIN_DN else users.dn(username)
        return await asyncio.to_thread(users.bind_works, bind_dn, password)

    return Setup(
        "ldap/passwd-modify-admin",
        {
            "address": "127.0.0.1",
            "port": server.port,
            "executor": "ldap",
            "options": {"base_dn": SUFFIX, **server.client_options()},
        },
        (ADMIN_DN, ADMIN_PASSWORD),  # the rootdn: the only account the directory lets reset others
        users.create,
        works,
    )


def rabbitmq_setup(request: pytest.FixtureRequest) -> Setup:
    server: RabbitMQ = request.getfixturevalue("rabbitmq")
    users: RabbitUsers = request.getfixturevalue("rabbit_users")
    admin_password = "Adm1n pw;$#'\"\\:%/"

    async def works(username: str, password: str) -> bool:
        return await asyncio.to_thread(server.password_works, username, password)

    return Setup(
        "http/rabbitmq-change-admin",
        {
            "address": "127.0.0.1",
            "executor": "http",
            "options": {"base_url": BASE_URL},
            "allow_insecure_transport": True,  # the test RabbitMQ serves plain http
        },
        (users.create(admin_password, tags=("administrator",)), admin_password),
        users.create,
        works,
    )


SETUPS: dict[str, Callable[[pytest.FixtureRequest], Setup]] = {
    "ssh": ssh_setup,
    "postgresql": postgresql_setup,
    "mysql": mysql_setup,
    "ldap": ldap_setup,
    "rabbitmq": rabbitmq_setup,
}


# -- the test -------------------------------------------------------------------------------------


async def request_all(stack: Stack, creds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A change for every credential, all requested at once."""

    async def change(cred: dict[str, Any]) -> dict[str, Any]:
        return await stack.post(
            f"/v1/credentials/{cred['id']}/operations", {"kind": "change"}, expect=202
        )

    return await asyncio.gather(*(change(cred) for cred in creds))


async def finish_all(stack: Stack, accepted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Wait for every workflow; the operations as the API reports them. Workflows still running
    after WITHIN are terminated, so a hang fails this test instead of the session's teardown."""
    handles = [stack.client.get_workflow_handle(a["workflow_id"]) for a in accepted]
    results = [asyncio.ensure_future(handle.result()) for handle in handles]
    _, running = await asyncio.wait(results, timeout=WITHIN)
    for future in running:
        future.cancel()
    ops = [await stack.get(f"/v1/operations/{a['operation_id']}") for a in accepted]
    stuck = [(handle, op) for handle, op in zip(handles, ops, strict=True) if not finished(op)]
    for handle, _ in stuck:
        with contextlib.suppress(RPCError):  # it may have finished since
            await handle.terminate("did not finish in time")
    assert not stuck, f"{len(stuck)} of {len(ops)} still running after {WITHIN:g}s: " + repr(
        [attempts(op, detail=True) for _, op in stuck[:3]]
    )
    return ops


def finished(op: dict[str, Any]) -> bool:
    return op["status"] in ("succeeded", "failed", "canceled")


def attempts(op: dict[str, Any], detail: bool = False) -> list[tuple[str, ...]]:
    return [
        (a["step"], a["outcome"], *([a["detail"] or ""] if detail else [])) for a in op["attempts"]
    ]


async def logging_in(setup: Setup, users: list[str], passwords: list[str]) -> list[str]:
    """The users whose password logs in, checked CHECKS_AT_ONCE at a time."""
    limit = asyncio.Semaphore(CHECKS_AT_ONCE)

    async def works(user: str, password: str) -> bool:
        async with limit:
            return await setup.works(user, password)

    pairs = list(zip(users, passwords, strict=True))
    results = await asyncio.gather(*(works(user, password) for user, password in pairs))
    return [user for (user, _), ok in zip(pairs, results, strict=True) if ok]


@pytest.mark.parametrize("kind", list(SETUPS))
async def test_forty_changes_through_one_admin_account(
    stack: Stack, request: pytest.FixtureRequest, kind: str
) -> None:
    setup = SETUPS[kind](request)
    admin, admin_password = setup.admin
    device = await stack.post(
        "/v1/devices",
        {
            "name": f"shared-admin-{kind}-{secrets.token_hex(4)}",
            "max_concurrent_operations": CONCURRENCY,
            **setup.device,
        },
    )
    pol = await policy(stack, **STRICT)
    admin_cred = await credential(stack, device["id"], admin, admin_password, policy_id=pol["id"])
    olds = [old_password(index) for index in range(ACCOUNTS)]
    users = [setup.create(old) for old in olds]
    creds = [
        await credential(
            stack, device["id"], user, old, policy_id=pol["id"], auth_credential_id=admin_cred["id"]
        )
        for user, old in zip(users, olds, strict=True)
    ]
    assert {cred["change_template"] for cred in creds} == {setup.template}

    ops = await finish_all(stack, await request_all(stack, creds))

    failed = [op for op in ops if op["status"] != "succeeded"]
    kinds = Counter(op["error_type"] for op in failed)
    assert not failed, f"{len(failed)} of {ACCOUNTS} changes failed ({dict(kinds)}): " + repr(
        [(op["error"], attempts(op)) for op in failed[:3]]
    )
    for op in ops:  # each in one go: nothing was retried, or probed into success
        assert attempts(op) == [("change", "succeeded"), ("verify", "succeeded")], op
    news = [current_secret(stack, cred["id"]) for cred in creds]
    assert len(set(news)) == ACCOUNTS and not set(news) & set(olds)
    assert await logging_in(setup, users, news) == users
    assert await logging_in(setup, users, olds) == []
    assert await setup.works(admin, admin_password)  # the admin's own password is untouched
    assert current_secret(stack, admin_cred["id"]) == admin_password
