"""Fixtures for the ldap executor tests: one throwaway slapd per session, users per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.slapd import Slapd, Users


@pytest.fixture(scope="session")
def slapd() -> Iterator[Slapd]:
    server = Slapd()
    server.start()
    print(f"\nslapd answered {server.start_seconds:.3f}s after start")  # noqa: T201 (for -s)
    yield server
    server.close()


@pytest.fixture
def ldap_users(slapd: Slapd) -> Iterator[Users]:
    users = Users(slapd)
    yield users
    users.cleanup()
