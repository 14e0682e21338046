"""Fixtures: throwaway accounts on the session's throwaway PostgreSQL cluster (scram-sha-256) and
MariaDB, both serving TLS (tests/conftest.py starts them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.mysql import MysqlServer, MysqlUsers, users_on
from tests.servers.postgresql import PostgresCluster, Roles, roles_on


@pytest.fixture
def pg_roles(pg_cluster: PostgresCluster) -> Iterator[Roles]:
    with roles_on(pg_cluster) as roles:
        try:
            yield roles
        finally:
            pg_cluster.start()  # a test may stop the cluster (to see ConnectFailed)


@pytest.fixture
def mysql_users(mysql_server: MysqlServer) -> Iterator[MysqlUsers]:
    with users_on(mysql_server) as users:
        yield users
