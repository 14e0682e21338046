"""Fixtures: a throwaway PostgreSQL cluster (scram-sha-256) and a throwaway MariaDB, both serving
TLS, the machine's MariaDB (no TLS, for the insecure path), and throwaway accounts on each."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.mysql import MysqlServer, MysqlUsers, ready_server, running_server, users_on
from tests.servers.postgresql import PostgresCluster, Roles, roles_on, running_cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_roles(pg_cluster: PostgresCluster) -> Iterator[Roles]:
    with roles_on(pg_cluster) as roles:
        try:
            yield roles
        finally:
            pg_cluster.start()  # a test may stop the cluster (to see ConnectFailed)


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[MysqlServer]:
    with running_server() as server:
        yield server


@pytest.fixture(scope="session")
def plain_mysql_server() -> MysqlServer:
    return ready_server()


@pytest.fixture
def mysql_users(mysql_server: MysqlServer) -> Iterator[MysqlUsers]:
    with users_on(mysql_server) as users:
        yield users
