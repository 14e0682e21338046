"""Activation, inactivation and just-in-time accounts on Linux over SSH, end to end: HTTP API →
Temporal → worker → a real sshd and real local accounts (usermod, useradd, userdel via sudo).

"Login refused" means every login: deactivate locks the password and expires the account, so a
key in the account's authorized_keys is refused too (a locked password alone would let it in).
"""

from __future__ import annotations

import time
from typing import Any

from sqlmodel import Session, select

from store.models import AuditEvent, Credential
from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, current_secret, policy, ssh_device
from tests.e2e.lifecycle_helpers import (
    credential_row,
    jit_removal_ended,
    operation_ended,
    session_event,
)
from tests.servers.sshd import Sshd, Users
from triggers.delayed import delayed_verdict
from workflows.contracts import DelayedOperation

OLD = "Old-pass w0rd;$#'\"\\x"
ADMIN_PASSWORD = "Adm1n pass'word\"$"
LIFECYCLE_COMMANDS = (
    "/usr/sbin/chpasswd",
    "/usr/sbin/usermod",
    "/usr/sbin/useradd",
    "/usr/sbin/userdel",
)


async def _admin(stack: Stack, sshd: Sshd, users: Users, **policy_fields: Any) -> dict[str, Any]:
    """A device, a policy and a sudo-capable admin credential on it: what every test needs."""
    admin = users.create(ADMIN_PASSWORD)
    users.make_admin(admin, LIFECYCLE_COMMANDS)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack, **policy_fields)
    cred = await credential(stack, device["id"], admin, ADMIN_PASSWORD, policy_id=pol["id"])
    return {"device": device, "policy": pol, "admin": cred}


async def test_deactivate_refuses_every_login_and_activate_lets_them_in_again(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    setup = await _admin(stack, sshd, ssh_users)
    user = ssh_users.create(OLD)
    key = ssh_users.authorize_key(user)
    cred = await credential(
        stack,
        setup["device"]["id"],
        user,
        OLD,
        auth_credential_id=setup["admin"]["id"],
        policy_id=setup["policy"]["id"],
    )
    assert cred["active"] is True
    assert await ssh_users.key_works(user, key)

    off = await stack.run_operation(cred["id"], "deactivate")

    assert off["status"] == "succeeded", off
    assert off["resolution"] == "verified: the login is refused"
    assert [(a["step"], a["outcome"]) for a in off["attempts"]] == [
        ("change", "succeeded"),
        ("verify", "succeeded"),
    ]
    assert "usermod" in off["attempts"][0]["transcript"]
    assert not await ssh_users.password_works(user, OLD)
    assert not await ssh_users.key_works(user, key)
    assert (await credential_row(stack, cred["id"]))["active"] is False

    on = await stack.run_operation(cred["id"], "activate")

    assert on["status"] == "succeeded", on
    assert on["resolution"] == "verified: the login works"
    assert await ssh_users.password_works(user, OLD)
    assert await ssh_users.key_works(user, key)
    row = await credential_row(stack, cred["id"])
    assert row["active"] is True
    # The secret never moved: activation and inactivation leave the vault alone.
    assert row["current_version_id"] == cred["current_version_id"]
    assert current_secret(stack, cred["id"]) == OLD


async def test_activating_an_active_account_succeeds_on_what_the_login_shows(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    setup = await _admin(stack, sshd, ssh_users)
    user = ssh_users.create(OLD)
    cred = await credential(
        stack, setup["device"]["id"], user, OLD, auth_credential_id=setup["admin"]["id"]
    )

    on = await stack.run_operation(cred["id"], "activate")

    assert on["status"] == "succeeded", on
    assert await ssh_users.password_works(user, OLD)


async def test_a_just_in_time_account_is_created_logs_in_and_is_gone_after_its_ttl(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    setup = await _admin(stack, sshd, ssh_users)
    user = ssh_users.new_name()
    # Registered before it exists: its password is a placeholder until jit-create.
    cred = await credential(
        stack,
        setup["device"]["id"],
        user,
        "placeholder",
        auth_credential_id=setup["admin"]["id"],
        policy_id=setup["policy"]["id"],
    )
    ttl = 6

    created = await stack.run_operation_with(cred["id"], {"kind": "jit-create", "ttl_seconds": ttl})
    created_at = time.monotonic()

    assert created["status"] == "succeeded", created
    secret = current_secret(stack, cred["id"])
    assert secret != "placeholder"
    assert ssh_users.exists(user)
    assert await ssh_users.password_works(user, secret)
    row = await credential_row(stack, cred["id"])
    assert row["jit_until"] is not None and row["active"] is True
    assert "useradd" in created["attempts"][0]["transcript"]
    assert secret not in str(created)
    # One account at a time: a second jit-create while it lives is refused.
    again = await stack.api.post(
        f"/v1/credentials/{cred['id']}/operations", json={"kind": "jit-create", "ttl_seconds": 60}
    )
    assert again.status_code == 422 and "request a jit-remove first" in again.text, again.text

    removed = await jit_removal_ended(stack, cred["id"])

    assert removed["status"] == "succeeded", removed
    assert removed["trigger"] == "expiry"
    assert time.monotonic() - created_at >= ttl - 1  # not before its time (commit came first)
    assert not ssh_users.exists(user)
    assert not await ssh_users.password_works(user, secret)
    row = await credential_row(stack, cred["id"])
    assert row["jit_until"] is None and row["active"] is False


async def test_the_end_of_the_session_removes_a_just_in_time_account_before_its_ttl(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    setup = await _admin(stack, sshd, ssh_users)
    user = ssh_users.new_name()
    cred = await credential(
        stack, setup["device"]["id"], user, "placeholder", auth_credential_id=setup["admin"]["id"]
    )
    created = await stack.run_operation_with(
        cred["id"], {"kind": "jit-create", "ttl_seconds": 3600}
    )
    assert created["status"] == "succeeded", created
    secret = current_secret(stack, cred["id"])
    started = await session_event(stack, cred["id"], "session-start", "s1")
    assert started["operation_id"] is None  # active: nothing to do first

    ended = await session_event(stack, cred["id"], "session-end", "s1")

    assert ended["operation_id"] is not None
    removed = await operation_ended(stack, ended["operation_id"])
    assert removed["kind"] == "jit-remove" and removed["trigger"] == "session-end"
    assert removed["status"] == "succeeded", removed
    assert not ssh_users.exists(user)
    assert not await ssh_users.password_works(user, secret)
    # The timer still waiting for the TTL finds nothing left to remove when it fires.
    with Session(stack.engine) as db:
        stored = db.get(Credential, cred["id"])
        assert stored is not None and stored.jit_until is None
        verdict = delayed_verdict(
            db, DelayedOperation(cred["id"], "jit-remove", "expiry", ""), stored.created_at
        )
    assert verdict is not None and verdict.outcome.startswith("satisfied"), verdict


async def test_lock_after_session_locks_at_the_end_and_the_next_start_unlocks_first(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    setup = await _admin(stack, sshd, ssh_users, lock_after_session=True)
    user = ssh_users.create(OLD)
    cred = await credential(
        stack,
        setup["device"]["id"],
        user,
        OLD,
        auth_credential_id=setup["admin"]["id"],
        policy_id=setup["policy"]["id"],
    )
    await session_event(stack, cred["id"], "session-start", "a")
    await session_event(stack, cred["id"], "session-start", "b")

    first_end = await session_event(stack, cred["id"], "session-end", "a")
    assert first_end["operation_id"] is None  # b is still open
    last_end = await session_event(stack, cred["id"], "session-end", "b")

    locked = await operation_ended(stack, last_end["operation_id"])
    assert (locked["kind"], locked["trigger"], locked["status"]) == (
        "deactivate",
        "session-end",
        "succeeded",
    ), locked
    assert not await ssh_users.password_works(user, OLD)

    restarted = await session_event(stack, cred["id"], "session-start", "c")

    unlocked = await operation_ended(stack, restarted["operation_id"])
    assert (unlocked["kind"], unlocked["trigger"], unlocked["status"]) == (
        "activate",
        "session-start",
        "succeeded",
    ), unlocked
    assert await ssh_users.password_works(user, OLD)
    assert (await credential_row(stack, cred["id"]))["active"] is True


async def test_jit_create_of_an_existing_account_fails_and_leaves_it_alone(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    setup = await _admin(stack, sshd, ssh_users)
    existing = ssh_users.create(OLD)
    cred = await credential(
        stack,
        setup["device"]["id"],
        existing,
        "placeholder",
        auth_credential_id=setup["admin"]["id"],
        policy_id=setup["policy"]["id"],
    )

    created = await stack.run_operation_with(cred["id"], {"kind": "jit-create", "ttl_seconds": 60})

    assert created["status"] == "failed", created
    assert "useradd" in created["error"] and "already exists" in created["error"], created
    assert await ssh_users.password_works(existing, OLD)  # chpasswd never ran
    row = await credential_row(stack, cred["id"])
    assert row["jit_until"] is None


async def test_only_the_granted_principal_reads_a_just_in_time_accounts_secret(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    setup = await _admin(stack, sshd, ssh_users)
    user = ssh_users.new_name()
    cred = await credential(
        stack, setup["device"]["id"], user, "placeholder", auth_credential_id=setup["admin"]["id"]
    )
    created = await stack.run_operation_with(cred["id"], {"kind": "jit-create", "ttl_seconds": 600})
    assert created["status"] == "succeeded", created
    app = await stack.post(
        "/v1/principals",
        {"name": f"jit-user-{user}", "role": "app", "credential_ids": [cred["id"]]},
    )

    refused = await stack.api.get(f"/v1/credentials/{cred['id']}/secret")  # the admin's token
    as_app = await stack.api.get(
        f"/v1/credentials/{cred['id']}/secret",
        headers={"Authorization": f"Bearer {app['token']}"},
    )

    assert refused.status_code == 403, refused.text
    assert "just-in-time" in refused.json()["detail"] and "password" not in refused.json()
    assert as_app.status_code == 200, as_app.text
    assert await ssh_users.password_works(user, as_app.json()["password"])
    with Session(stack.engine) as db:
        reads = db.exec(
            select(AuditEvent)
            .where(AuditEvent.credential_id == cred["id"])
            .where(AuditEvent.event == "secret.viewed")
        ).all()
    assert [event.principal for event in reads] == [app["name"]]
