"""Fixtures: the machine's MariaDB and throwaway accounts on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.mysql import MysqlServer, MysqlUsers, ready_server, users_on


@pytest.fixture(scope="session")
def mysql_server() -> MysqlServer:
    return ready_server()


@pytest.fixture
def mysql_users(mysql_server: MysqlServer) -> Iterator[MysqlUsers]:
    with users_on(mysql_server) as users:
        yield users
