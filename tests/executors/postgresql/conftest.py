"""Fixtures: a throwaway PostgreSQL cluster (scram-sha-256) and roles on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
