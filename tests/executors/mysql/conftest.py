"""Fixtures: the machine's MariaDB and throwaway accounts on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.mysql import MysqlServer, MysqlUsers


@pytest.fixture(scope="session")
def mysql_server() -> MysqlServer:
    server = MysqlServer()
    server.wait_ready()
    return server


@pytest.fixture
def mysql_users(mysql_server: MysqlServer) -> Iterator[MysqlUsers]:
    users = MysqlUsers(mysql_server)
    try:
        yield users
    finally:
        users.cleanup()
