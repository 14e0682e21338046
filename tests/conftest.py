"""Shared pytest fixtures. Each section belongs to one area; add new ones as their own section."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.rsyslog import Rsyslog
from tests.servers.sshd import Sshd, Users

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
