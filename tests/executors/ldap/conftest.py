"""Fixtures for the ldap executor tests: one throwaway slapd per session, users per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.slapd import Slapd, Users, running_slapd, users_on


@pytest.fixture(scope="session")
def slapd() -> Iterator[Slapd]:
    with running_slapd() as server:
        print(f"\nslapd answered {server.start_seconds:.3f}s after start")  # noqa: T201 (for -s)
        yield server


@pytest.fixture
def ldap_users(slapd: Slapd) -> Iterator[Users]:
    with users_on(slapd) as users:
        yield users
