"""Shared pytest fixtures. Each section belongs to one area; add new ones as their own section."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.mysql import MysqlServer, override_address, plain_server, running_server
from tests.servers.nginx import Nginx
from tests.servers.postgresql import PostgresCluster, running_cluster
from tests.servers.rabbitmq import boot_shared_node
from tests.servers.rsyslog import Rsyslog
from tests.servers.sshd import Sshd, Users
from tests.servers.system_services import refuse_connections


def pytest_configure(config: pytest.Config) -> None:
    # The suite starts every server it needs; the machine's own (PostgreSQL, MariaDB, RabbitMQ)
    # are never used, so a connect to one is a mistake worth failing loudly. A MariaDB named on
    # purpose (KEYTURN_TEST_MYSQL_HOST/PORT) is not a mistake.
    named = override_address()
    refuse_connections([named] if named else [])


def pytest_collection_finish(session: pytest.Session) -> None:
    # The RabbitMQ node takes the longest to start (an Erlang VM, ~10-30 s on two busy cores):
    # boot it while the tests before the first one that needs it run.
    if not session.config.option.collectonly and any(
        isinstance(item, pytest.Function) and "rabbitmq" in item.fixturenames
        for item in session.items
    ):
        boot_shared_node()


# ---------------------------------------------------------------------------------------------
# OpenSSH server and throwaway users (tests/servers/sshd.py). Needs root, /usr/sbin/sshd, sudo:
# scripts/setup-test-deps installs them on a fresh Debian machine.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sshd() -> Iterator[Sshd]:
    server = Sshd()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def ssh_users(sshd: Sshd) -> Iterator[Users]:
    users = Users(sshd)
    try:
        yield users
    finally:
        users.cleanup()
        # A test may stop the shared server (to see ConnectFailed); later tests need it back.
        sshd.start()


# --- end of the sshd section -------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# nginx on a loopback port (tests/servers/nginx.py), one per session: the TLS server certificates
# are published to. It runs as a throwaway account of the shared sshd, which Keyturn logs in as
# to install the certificate and reload it. scripts/setup-test-deps installs nginx.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def nginx(sshd: Sshd) -> Iterator[Nginx]:
    users = Users(sshd)
    server = Nginx(users)
    try:
        server.start()
        yield server
    finally:
        server.close()
        users.cleanup()


# --- end of the nginx section ------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# rsyslog on loopback ports of its own (tests/servers/rsyslog.py): the SIEM echo's receiver.
# scripts/setup-test-deps installs rsyslog and its OpenSSL driver.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rsyslog() -> Iterator[Rsyslog]:
    server = Rsyslog()
    server.start()
    try:
        yield server
    finally:
        server.close()


# --- end of the rsyslog section ----------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# A throwaway PostgreSQL cluster (tests/servers/postgresql.py), one per session: the sql
# executor's peer and the store's backend. scripts/setup-test-deps installs the server binaries.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    with running_cluster() as cluster:
        print(f"\nPostgreSQL answered {cluster.start_seconds:.3f}s after start")  # noqa: T201 (for -s)
        yield cluster


# --- end of the PostgreSQL section -------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# A throwaway MariaDB serving TLS (tests/servers/mysql.py), one per session, and the server of
# the cleartext path (the same one unless KEYTURN_TEST_MYSQL_* name another).
# scripts/setup-test-deps installs mariadb-server.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[MysqlServer]:
    with running_server() as server:
        print(f"\nMariaDB answered {server.start_seconds:.3f}s after start")  # noqa: T201 (for -s)
        yield server


@pytest.fixture(scope="session")
def plain_mysql_server(mysql_server: MysqlServer) -> MysqlServer:
    return plain_server(mysql_server)


# --- end of the MariaDB section ----------------------------------------------------------------
