"""Fixtures for the http executor: RabbitMQ's management API (a throwaway node) and its users,
and a local API on loopback for OAuth 2.0, TLS and failure modes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.executors.http.local_api import LocalApi
from tests.servers.rabbitmq import RabbitMQ, RabbitUsers, running_rabbitmq, users_on


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQ]:
    with running_rabbitmq() as server:
        yield server


@pytest.fixture
def rabbit_users(rabbitmq: RabbitMQ) -> Iterator[RabbitUsers]:
    with users_on(rabbitmq) as users:
        yield users


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
