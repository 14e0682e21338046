"""Fixtures for the http executor: RabbitMQ's management API (a running service) and its users,
and a local API on loopback for OAuth 2.0, TLS and failure modes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.executors.http.local_api import LocalApi
from tests.servers.rabbitmq import RabbitMQ, RabbitUsers


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQ]:
    server = RabbitMQ()
    server.wait_ready()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def rabbit_users(rabbitmq: RabbitMQ) -> Iterator[RabbitUsers]:
    users = RabbitUsers(rabbitmq)
    try:
        yield users
    finally:
        users.cleanup()


@pytest.fixture
def local_api() -> Iterator[LocalApi]:
    api = LocalApi().start()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def tls_api(tmp_path: Path) -> Iterator[LocalApi]:
    api = LocalApi(tls_dir=tmp_path).start()
    try:
        yield api
    finally:
        api.close()
