"""Fixtures: a throwaway PostgreSQL cluster (scram-sha-256) and roles on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.postgresql import PostgresCluster, Roles


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_roles(pg_cluster: PostgresCluster) -> Iterator[Roles]:
    roles = Roles(pg_cluster)
    try:
        yield roles
    finally:
        pg_cluster.start()  # a test may stop the cluster (to see ConnectFailed)
        roles.cleanup()
