"""The suite starts its own servers: no test names, or connects to, the loopback port of a service
the machine may run for itself (PostgreSQL 5432, MariaDB 3306, RabbitMQ 5672 and 15672)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pymysql
import pytest

from tests.servers.rabbitmq import ADMIN, running_rabbitmq, shared_node
from tests.servers.system_services import SYSTEM_PORTS, findings, refused

TESTS = Path(__file__).parent
# The modules that have to name the ports: the one that refuses them, and this one's samples.
NAMING_THE_PORTS = {TESTS / "servers" / "system_services.py", Path(__file__)}


def test_no_test_names_a_system_service() -> None:
    found = {
        str(path.relative_to(TESTS)): hits
        for path in sorted(TESTS.rglob("*.py"))
        if path not in NAMING_THE_PORTS and (hits := findings(path.read_text()))
    }
    assert found == {}, f"tests that name a system service's address: {found}"


@pytest.mark.parametrize(
    "source",
    [
        'PG = "postgresql://postgres@127.0.0.1:5432/postgres"',
        'psycopg.connect("postgresql://postgres@127.0.0.1/postgres")',  # libpq's default: 5432
        "engine = 'postgresql+psycopg://localhost/db'",
        'make_target("rabbit", "127.0.0.1", 15672)',
        'make_target(\n    "rabbit",\n    "127.0.0.1",\n    15672,\n)',
        'BASE_URL = "http://127.0.0.1:15672"',
        'url = "amqp://guest:guest@localhost"',
    ],
)
def test_the_check_finds_a_system_service(source: str) -> None:
    assert findings(source)


@pytest.mark.parametrize(
    "source",
    [
        'Device(address="10.0.0.6", port=5432)',  # a device nothing connects to
        'cluster.url(name, driver="postgresql+psycopg")',
        'f"postgresql://postgres:{password}@127.0.0.1:{self.port}/{database}"',
        'TemplateContext("u", "old", "new", "h", "127.0.0.1", 25432)',
    ],
)
def test_the_check_leaves_other_addresses_alone(source: str) -> None:
    assert findings(source) == []


@pytest.mark.parametrize("port", sorted(SYSTEM_PORTS))
def test_a_connection_to_a_system_service_is_refused(port: int) -> None:
    with pytest.raises(RuntimeError, match=rf"127\.0\.0\.1:{port}.*throwaway server"):
        socket.create_connection(("127.0.0.1", port), timeout=5)


async def test_asyncio_connections_are_refused_too() -> None:
    with pytest.raises(RuntimeError, match="RabbitMQ"):
        await asyncio.open_connection("127.0.0.1", 15672)


def test_a_client_library_connection_is_refused() -> None:
    # PyMySQL defaults to 127.0.0.1:3306 when no port is given.
    with pytest.raises(RuntimeError, match="MariaDB"):
        pymysql.connect(host="127.0.0.1", user="root", connect_timeout=5)


def test_other_loopback_ports_are_not_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        assert refused(("127.0.0.1", port)) is None
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert refused(("10.0.0.6", 5432)) is None  # not loopback: a device's address


def test_rabbitmq_is_a_node_of_its_own() -> None:
    with running_rabbitmq() as server:
        node = shared_node()
        with httpx.Client(base_url=server.base_url, auth=ADMIN, trust_env=False) as client:
            overview = client.get("/api/overview").json()
    assert overview["node"] == node.name != "rabbit@localhost"
    listeners = {(entry["protocol"], entry["port"]) for entry in overview["listeners"]}
    assert ("amqp", node.amqp_port) in listeners
    assert ("http", node.management_port) in listeners
    assert ("clustering", node.dist_port) in listeners
    assert not {port for _, port in listeners} & set(SYSTEM_PORTS)
