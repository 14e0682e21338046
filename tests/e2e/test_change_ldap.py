"""A password change on a directory, end to end: HTTP API → Temporal → worker → real slapd."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, current_secret, policy
from tests.servers.slapd import SUFFIX, Slapd, Users, running_slapd, users_on

OLD = "Old-pass w0rd;$#'\"\\x é"


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    with running_slapd() as server:
        yield server


@pytest.fixture
def ldap_users(slapd: Slapd) -> Iterator[Users]:
    with users_on(slapd) as users:
        yield users


async def test_change_through_the_api(stack: Stack, slapd: Slapd, ldap_users: Users) -> None:
    user = ldap_users.create(OLD)
    device = await stack.post(
        "/v1/devices",
        {
            "name": f"dir-{secrets.token_hex(4)}",
            "address": "127.0.0.1",
            "port": slapd.port,
            "executor": "ldap",
            "options": {"base_dn": SUFFIX, **slapd.client_options()},
        },
    )
    pol = await policy(stack)
    cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
    assert cred["change_template"] == "ldap/passwd-modify-self"

    op = await stack.run_operation(cred["id"])

    assert op["status"] == "succeeded", op
    new = current_secret(stack, cred["id"])
    assert new != OLD
    assert ldap_users.password_works(user, new)
    assert not ldap_users.password_works(user, OLD)
    steps = [(a["step"], a["outcome"]) for a in op["attempts"]]
    assert steps == [("change", "succeeded"), ("verify", "succeeded")]
    assert "passwd_modify" in op["attempts"][0]["transcript"]
    assert new not in str(op) and OLD not in str(op)
