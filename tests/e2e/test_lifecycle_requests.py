"""Requests of activate, deactivate, jit-create and jit-remove: refused with a problem (and
nothing stored or started) when they cannot work, and, requested together with changes on the
same credential and device, run one writer at a time in request order, leaving vault, target and
the credential's state in agreement."""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select
from temporalio.client import WorkflowFailureError

from store.models import AuditEvent, Operation
from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, current_secret, policy, ssh_device, ssh_template
from tests.e2e.lifecycle_helpers import credential_row, operation_ended
from tests.servers.sshd import Sshd, Users

OLD = "L1fecycle-old"
ADMIN_PASSWORD = "L1fecycle-admin"
COMMANDS = ("/usr/sbin/chpasswd", "/usr/sbin/usermod")


async def _ssh_credential(
    stack: Stack, sshd: Sshd, users: Users, **extra: Any
) -> tuple[dict[str, Any], dict[str, Any], str]:
    admin = users.create(ADMIN_PASSWORD)
    users.make_admin(admin, COMMANDS)
    user = users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack, lockout_budget=50)
    admin_cred = await credential(stack, device["id"], admin, ADMIN_PASSWORD, policy_id=pol["id"])
    cred = await credential(
        stack,
        device["id"],
        user,
        OLD,
        policy_id=pol["id"],
        **({"auth_credential_id": admin_cred["id"]} | extra),
    )
    return device, cred, user


def _operations(stack: Stack, credential_id: str) -> list[Operation]:
    with Session(stack.engine) as session:
        return list(
            session.exec(select(Operation).where(Operation.credential_id == credential_id)).all()
        )


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"kind": "jit-create"}, "ttl_seconds", "needs the account's time to live"),
        ({"kind": "jit-create", "ttl_seconds": 1}, "ttl_seconds", "out of bounds"),
        ({"kind": "jit-create", "ttl_seconds": 10**9}, "ttl_seconds", "out of bounds"),
        ({"kind": "deactivate", "ttl_seconds": 60}, "ttl_seconds", "only a jit-create"),
        ({"kind": "change", "ttl_seconds": 60}, "ttl_seconds", "only a jit-create"),
    ],
    ids=["ttl-missing", "ttl-too-small", "ttl-too-large", "ttl-on-deactivate", "ttl-on-change"],
)
async def test_a_bad_time_to_live_is_a_problem_and_changes_nothing(
    stack: Stack, sshd: Sshd, ssh_users: Users, body: dict[str, Any], field: str, says: str
) -> None:
    _, cred, user = await _ssh_credential(stack, sshd, ssh_users)

    response = await stack.api.post(f"/v1/credentials/{cred['id']}/operations", json=body)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert says in problem["detail"] and field in str(problem), problem
    assert _operations(stack, cred["id"]) == []
    assert (await credential_row(stack, cred["id"]))["active"] is True
    assert await ssh_users.password_works(user, OLD)


async def test_a_kind_the_credential_cannot_run_is_a_problem_and_changes_nothing(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    # No auth credential: an account cannot lock, unlock, create or remove itself.
    device = await ssh_device(stack, sshd)
    user = ssh_users.create(OLD)
    alone = await credential(stack, device["id"], user, OLD)
    # An executor without such templates (the http executor locks nothing): refused too.
    web = await stack.post(
        "/v1/devices",
        {
            "name": f"web-{secrets.token_hex(4)}",
            "address": "127.0.0.1",
            "executor": "http",
            "options": {"base_url": "https://127.0.0.1:1"},
        },
    )
    rabbit = await credential(stack, web["id"], "someone", OLD)

    _, managed, managed_user = await _ssh_credential(stack, sshd, ssh_users)
    for cred, kind, says in [
        # An account Keyturn only manages is never removed: no jit-create made it.
        (managed, "jit-remove", "has had no jit-create"),
        (alone, "deactivate", "auth_credential_id"),
        (alone, "jit-remove", "auth_credential_id"),
        (rabbit, "activate", "ships no activate template"),
        (rabbit, "deactivate", "ships no deactivate template"),
    ]:
        response = await stack.api.post(
            f"/v1/credentials/{cred['id']}/operations", json={"kind": kind}
        )
        assert response.status_code == 422, response.text
        assert says in response.json()["detail"], response.json()
        assert _operations(stack, cred["id"]) == []
    assert await ssh_users.password_works(user, OLD)
    assert await ssh_users.password_works(managed_user, OLD)


async def test_lifecycle_templates_must_be_of_their_kind_and_executor(
    stack: Stack, sshd: Sshd
) -> None:
    device = await ssh_device(stack, sshd)
    for templates, says in [
        ({"deactivate": "ssh/linux-unlock"}, "is a activate template, not a deactivate"),
        ({"activate": "postgresql/role-login"}, "is a postgresql template"),
        ({"deactivate": "ssh/no-such"}, "no template named"),
    ]:
        response = await stack.api.post(
            "/v1/credentials",
            json={
                "device_id": device["id"],
                "username": "nobody",
                "password": OLD,
                "lifecycle_templates": templates,
            },
        )
        assert response.status_code == 422, response.text
        assert says in response.json()["detail"], response.json()


async def test_a_change_of_an_inactive_credential_sends_nothing(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    _, cred, user = await _ssh_credential(stack, sshd, ssh_users)
    assert (await stack.run_operation(cred["id"], "deactivate"))["status"] == "succeeded"

    change = await stack.run_operation(cred["id"], "change")

    assert change["status"] == "failed", change
    assert change["resolution"] == "nothing was sent to the target"
    assert "is inactive" in change["error"] and change["attempts"] == []
    assert current_secret(stack, cred["id"]) == OLD
    assert (await stack.run_operation(cred["id"], "activate"))["status"] == "succeeded"
    assert await ssh_users.password_works(user, OLD)


def _span(stack: Stack, operation_id: str) -> tuple[datetime, datetime] | None:
    """When the operation started acting and when it ended (None: it never started acting,
    refused by prepare)."""
    with Session(stack.engine) as session:
        events = session.exec(
            select(AuditEvent)
            .where(AuditEvent.operation_id == operation_id)
            .order_by(col(AuditEvent.id))
        ).all()
    started = [e.at for e in events if e.event == "operation.started"]
    ended = [e.at for e in events if e.event in ("operation.succeeded", "operation.failed")]
    assert ended, [e.event for e in events]
    return (started[0], ended[-1]) if started else None


def _gate_order(stack: Stack, operation_id: str) -> int:
    with Session(stack.engine) as session:
        row = session.get(Operation, operation_id)
        assert row is not None
        return row.gate_seq


async def test_activate_and_deactivate_with_changes_on_one_credential_and_device(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    device, cred, user = await _ssh_credential(stack, sshd, ssh_users)
    # A neighbour on the same device, changed meanwhile through the same admin account.
    neighbour_user = ssh_users.create(OLD)
    neighbour = await credential(
        stack,
        device["id"],
        neighbour_user,
        OLD,
        policy_id=cred["policy_id"],
        auth_credential_id=cred["auth_credential_id"],
    )
    rounds = [
        ("deactivate", "change", "activate"),
        ("change", "activate", "deactivate"),
        ("activate", "deactivate", "change"),
    ]

    async def request(credential_id: str, kind: str) -> dict[str, Any]:
        response = await stack.api.post(
            f"/v1/credentials/{credential_id}/operations", json={"kind": kind}
        )
        assert response.status_code in (200, 202), response.text
        return dict(response.json())

    done: list[dict[str, Any]] = []
    for kinds in rounds:
        # Sent together: the credential's gate orders them, the device's slots are shared.
        answers = await asyncio.gather(
            *(request(cred["id"], kind) for kind in kinds), request(neighbour["id"], "change")
        )
        done += [await operation_ended(stack, a["operation_id"]) for a in answers]

    ours = sorted(
        {d["id"]: d for d in done if d["credential_id"] == cred["id"]}.values(),
        key=lambda d: _gate_order(stack, d["id"]),
    )
    assert len(ours) == 9, [(d["kind"], d["status"]) for d in ours]
    spans = [span for span in (_span(stack, d["id"]) for d in ours) if span is not None]
    # In request order, each one after the one ahead of it ended: one writer at a time.
    for (_, ended), (started, _) in zip(spans, spans[1:], strict=False):
        assert ended <= started, "two operations acted on the credential at once"
    switches = [d for d in ours if d["kind"] in ("activate", "deactivate")]
    assert all(d["status"] == "succeeded" for d in switches), switches
    for change in (d for d in ours if d["kind"] == "change"):
        # A change behind a deactivate finds the account locked and sends nothing.
        assert change["status"] == "succeeded" or (
            change["resolution"] == "nothing was sent to the target"
            and "is inactive" in change["error"]
        ), change
    # The credential's state is the last switch's, and the target agrees with the vault.
    active = switches[-1]["kind"] == "activate"
    row = await credential_row(stack, cred["id"])
    assert row["active"] is active and row["sync_state"] == "in_sync"
    secret = current_secret(stack, cred["id"])
    assert await ssh_users.password_works(user, secret) is active
    if not active:
        assert (await stack.run_operation(cred["id"], "activate"))["status"] == "succeeded"
        assert await ssh_users.password_works(user, secret)
    assert all(d["status"] == "succeeded" for d in done if d["credential_id"] == neighbour["id"])
    assert await ssh_users.password_works(neighbour_user, current_secret(stack, neighbour["id"]))


async def test_executors_list_the_kinds_their_templates_cover(stack: Stack) -> None:
    response = await stack.api.get("/v1/executors")
    assert response.status_code == 200, response.text
    executors = {e["name"]: e for e in response.json()["items"]}
    lifecycle = ["activate", "change", "deactivate", "jit-create", "jit-remove", "verify"]
    # ssh also covers the two steps of an ssh-key change (key-install, key-remove); ssh,
    # postgresql and ldap ship task templates.
    assert executors["ssh"]["operation_kinds"] == sorted(
        [*lifecycle, "key-install", "key-remove", "task"]
    )
    assert executors["postgresql"]["operation_kinds"] == sorted([*lifecycle, "task"])
    assert executors["mysql"]["operation_kinds"] == lifecycle
    assert executors["ldap"]["operation_kinds"] == [
        "activate", "change", "deactivate", "task", "verify",
    ]  # fmt: skip
    assert executors["http"]["operation_kinds"] == ["change", "jit-create", "jit-remove", "verify"]
    assert executors["winrm"]["operation_kinds"] == ["change", "verify"]
    assert executors["ssh"]["default_templates"]["deactivate"] == "ssh/linux-lock"
    assert "ldap/ad-disable" in executors["ldap"]["templates"]


async def test_a_session_end_whose_lock_cannot_be_requested_is_a_problem_and_changes_nothing(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    # The policy locks after sessions, but the credential has no auth credential to do it with.
    device = await ssh_device(stack, sshd)
    user = ssh_users.create(OLD)
    pol = await policy(stack, lock_after_session=True)
    cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
    events = f"/v1/credentials/{cred['id']}/events"
    await stack.post(events, {"event": "session-start", "session_id": "s"}, expect=200)

    response = await stack.api.post(events, json={"event": "session-end", "session_id": "s"})

    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "the session asks for deactivate" in response.json()["detail"]
    assert "auth_credential_id" in response.json()["detail"]
    assert _operations(stack, cred["id"]) == []
    # The session is open again: its end can be reported once the credential is fixed.
    again = await stack.api.post(events, json={"event": "session-start", "session_id": "s"})
    assert again.status_code == 409 and "is open" in again.json()["detail"], again.text
    assert (await credential_row(stack, cred["id"]))["active"] is True


async def test_a_deactivate_canceled_after_the_lock_landed_says_so(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    # The shipped lock, then a command that never answers: canceled while it hangs, the lock
    # has landed; the login after the cancel shows it, and the credential says inactive.
    hold = f"keyturn-held-{secrets.token_hex(4)}"
    lock = (Path(__file__).parents[2] / "executors/templates/ssh/linux-lock.tpl").read_text()
    held = await ssh_template(
        stack,
        lock + f"exec: exec -a {hold} sleep 300\nexpect: keyturn-never-appears\n",
        "deactivate",
    )
    _, cred, user = await _ssh_credential(
        stack, sshd, ssh_users, lifecycle_templates={"deactivate": held}
    )
    accepted = await stack.post(
        f"/v1/credentials/{cred['id']}/operations", {"kind": "deactivate"}, expect=202
    )
    try:
        await _until_running(hold)
        response = await stack.api.post(f"/v1/operations/{accepted['operation_id']}/cancel")
        assert response.status_code == 202, response.text
        with pytest.raises(WorkflowFailureError):  # the workflow ends canceled
            await stack.client.get_workflow_handle(accepted["workflow_id"]).result()
    finally:
        await (await asyncio.create_subprocess_exec("pkill", "-f", hold)).wait()

    done = await stack.get(f"/v1/operations/{accepted['operation_id']}")
    assert done["status"] == "canceled", done
    assert done["resolution"].endswith("probe: the login is refused"), done["resolution"]
    row = await credential_row(stack, cred["id"])
    assert row["active"] is False and row["sync_state"] == "in_sync"
    assert not await ssh_users.password_works(user, OLD)
    assert (await stack.run_operation(cred["id"], "activate"))["status"] == "succeeded"
    assert await ssh_users.password_works(user, OLD)


async def _until_running(name: str, within: float = 30) -> None:
    """Wait until a process named ``name`` runs on the target (polls pgrep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        pgrep = await asyncio.create_subprocess_exec(
            "pgrep", "-f", name, stdout=asyncio.subprocess.DEVNULL
        )
        if await pgrep.wait() == 0:
            return
        assert loop.time() < deadline, f"no process matched {name}"
        await asyncio.sleep(0.05)
