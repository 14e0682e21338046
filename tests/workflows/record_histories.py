"""Record operation histories for tests/workflows/test_replay.py.

Run it from a checkout of the release whose workflows must keep replaying (as root, like the
tests: it starts sshd and creates a throwaway user), then commit the files it writes:

    python -m tests.workflows.record_histories v2 tests/workflows/histories

It starts a Temporal dev server, a worker, the API, sshd and a callback receiver, runs a change,
a change whose requester is told its outcome (and the delivery's own workflow), a verify, a
change with a chained child (and the child's change), a verify that finds drift and a change
whose current secret is refused, and saves each history
with payloads encrypted by the key in ``histories/master_key.hex``. With a third argument
``lifecycle`` it records instead a deactivate, an activate, a jit-create and a jit-remove, through
a sudo-capable admin account (``<prefix>_lifecycle_*.json``); with ``paths``, a reconcile, a
verify retried against an unreachable device, one waiting out the lockout window and an
operation canceled while queued
(``<prefix>_paths_*.json``), and changes that give back and wait for the one slot of a
device; with ``tasks``, a task's run on two credentials and its two
children (``<prefix>_tasks_*.json``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from pydantic import SecretStr
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from keyturn.codec import data_converter
from keyturn.settings import Settings
from starter.app import create_app
from starter.devstack import temporal_cli
from store.engine import make_engine
from tests.servers.ports import free_port
from tests.servers.sshd import Sshd, Users
from tests.servers.webhook_receiver import WebhookReceiver
from worker import build_workers, run_workers
from workflows.contracts import (
    SEARCH_ATTRIBUTES,
    callback_workflow_id,
    operation_workflow_id,
    task_target_workflow_id,
)

OLD = "Rec0rd-old-pass"


async def record(prefix: str, out: Path, mode: str = "operations") -> None:
    key = bytes.fromhex((out / "master_key.hex").read_text().strip())
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=data_converter(key),
        ui=False,
    )
    sshd = Sshd()
    sshd.start()
    users = Users(sshd)
    receiver = WebhookReceiver()
    receiver.start()
    stop = asyncio.Event()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            master_key=base64.b64encode(key).decode(),
            admin_token="record",
            task_queue="keyturn-record",
            webhook_secret=SecretStr("whsec_" + base64.b64encode(b"record-webhook-key").decode()),
            webhook_allow_http=True,
        )
        engine = make_engine(settings.resolved_database_url)
        workers = asyncio.create_task(
            run_workers(build_workers(env.client, settings, engine), stop)
        )
        app = create_app(settings, engine, env.client)
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://record.test",
                headers={"Authorization": "Bearer record"},
            ) as api:

                async def post(path: str, body: dict[str, object]) -> dict[str, str]:
                    response = await api.post(path, json=body)
                    assert response.status_code in (200, 201, 202), response.text
                    result: dict[str, str] = response.json()
                    return result

                async def save(name: str, workflow_id: str) -> None:
                    handle = env.client.get_workflow_handle(workflow_id)
                    # A canceled operation's workflow ends canceled: its history is what counts.
                    with contextlib.suppress(WorkflowFailureError):
                        await handle.result()
                    history = await handle.fetch_history()
                    (out / f"{prefix}_{name}.json").write_text(history.to_json())

                async def run(
                    name: str, credential_id: str, kind: str, **extra: object
                ) -> dict[str, str]:
                    accepted = await post(
                        f"/v1/credentials/{credential_id}/operations", {"kind": kind, **extra}
                    )
                    await save(name, accepted["workflow_id"])
                    return accepted

                user = users.create(OLD)
                device = await post(
                    "/v1/devices",
                    {
                        "name": "record",
                        "address": "127.0.0.1",
                        "port": sshd.port,
                        "host_keys": [sshd.host_key_line],
                    },
                )
                policy = await post(
                    "/v1/policies",
                    {"name": "record", "max_attempts": 1, "retry_interval_seconds": 0.2},
                )
                if mode == "lifecycle":
                    await record_lifecycle(post, run, users, device["id"], policy["id"])
                    return
                if mode == "paths":
                    await record_paths(post, run, save, users, device["id"], policy["id"])
                    await record_slot_wait(post, save, users, sshd, policy["id"])
                    if "slot_granted" not in (out / f"{prefix}_{SLOT_WAIT}.json").read_text():
                        raise SystemExit("the last change did not wait for its slot: run again")
                    return
                if mode == "tasks":
                    await record_tasks(post, save, users, device["id"], policy["id"])
                    return
                cred = await post(
                    "/v1/credentials",
                    {
                        "device_id": device["id"],
                        "username": user,
                        "password": OLD,
                        "policy_id": policy["id"],
                    },
                )
                await run("change", cred["id"], "change")
                # Its requester is told the outcome (the delivery workflow is recorded too).
                told = await run(
                    "change_told", cred["id"], "change", callback_url=receiver.url("/a")
                )
                await save("callback", callback_workflow_id(told["operation_id"]))
                await run("verify", cred["id"], "verify")
                # A chained credential: its change starts once the parent's is committed.
                child = await post(
                    "/v1/credentials",
                    {
                        "device_id": device["id"],
                        "username": users.create(OLD),
                        "password": OLD,
                        "policy_id": policy["id"],
                        "parent_id": cred["id"],
                    },
                )
                await run("change_with_child", cred["id"], "change")
                await save("change_child", operation_workflow_id("change", child["id"]))
                users.set_password(user, "Drifted-behind-its-back-1")
                await run("verify_out_of_sync", cred["id"], "verify")
                await run("change_refused", cred["id"], "change")
        finally:
            stop.set()
            await workers
            users.cleanup()
            sshd.close()
            receiver.close()
            await env.shutdown()


async def record_lifecycle(
    post: Callable[[str, dict[str, object]], Awaitable[dict[str, str]]],
    run: Callable[..., Awaitable[dict[str, str]]],
    users: Users,
    device_id: str,
    policy_id: str,
) -> None:
    admin = users.create(OLD)
    users.make_admin(
        admin,
        ("/usr/sbin/chpasswd", "/usr/sbin/usermod", "/usr/sbin/useradd", "/usr/sbin/userdel"),
    )
    admin_cred = await post(
        "/v1/credentials",
        {"device_id": device_id, "username": admin, "password": OLD, "policy_id": policy_id},
    )
    for name, kinds in [
        (users.create(OLD), ("deactivate", "activate")),
        (users.new_name(), ("jit-create", "jit-remove")),
    ]:
        cred = await post(
            "/v1/credentials",
            {
                "device_id": device_id,
                "username": name,
                "password": OLD,
                "policy_id": policy_id,
                "auth_credential_id": admin_cred["id"],
            },
        )
        for kind in kinds:
            ttl = {"ttl_seconds": 3600} if kind == "jit-create" else {}
            await run(f"lifecycle_{kind.replace('-', '_')}", cred["id"], kind, **ttl)


async def record_paths(
    post: Callable[[str, dict[str, object]], Awaitable[dict[str, str]]],
    run: Callable[..., Awaitable[dict[str, str]]],
    save: Callable[[str, str], Awaitable[None]],
    users: Users,
    device_id: str,
    policy_id: str,
) -> None:
    """The paths the plain operations do not take: a reconcile through a privileged account,
    retries of an unreachable device, a wait for the lockout window, and an operation canceled
    while queued at its gate."""
    admin = users.create(OLD)
    users.make_admin(admin, ("/usr/sbin/chpasswd",))
    admin_cred = await post(
        "/v1/credentials",
        {"device_id": device_id, "username": admin, "password": OLD, "policy_id": policy_id},
    )
    drifted = users.create(OLD)
    cred = await post(
        "/v1/credentials",
        {
            "device_id": device_id,
            "username": drifted,
            "password": OLD,
            "policy_id": policy_id,
            "reconcile_credential_id": admin_cred["id"],
        },
    )
    users.set_password(drifted, "Drifted-behind-its-back-1")
    await run("paths_reconcile", cred["id"], "reconcile")

    retrying = await post(
        "/v1/policies",
        {"name": "record-retries", "max_attempts": 3, "retry_interval_seconds": 0.2},
    )
    closed = await post(
        "/v1/devices",
        {"name": "record-closed", "address": "127.0.0.1", "port": free_port(),
         "trust_on_first_use": True},
    )  # fmt: skip
    unreachable = await post(
        "/v1/credentials",
        {"device_id": closed["id"], "username": "nobody", "password": OLD,
         "policy_id": retrying["id"]},
    )  # fmt: skip
    await run("paths_verify_retried", unreachable["id"], "verify")

    # A verify that finds its lockout budget spent by the one before, waits out the window and
    # then logs in (and finds the drift).
    budget = await post(
        "/v1/policies",
        {"name": "record-lockout", "max_attempts": 3, "retry_interval_seconds": 0.2,
         "lockout_budget": 1, "lockout_window_seconds": 3},
    )  # fmt: skip
    locked = await post(
        "/v1/credentials",
        {"device_id": device_id, "username": users.create(OLD), "password": "drifted",
         "policy_id": budget["id"]},
    )  # fmt: skip
    await run("paths_verify_spends_the_budget", locked["id"], "verify")
    await run("paths_verify_waits_for_the_lockout_window", locked["id"], "verify")

    busy = users.create(OLD)
    gated = await post(
        "/v1/credentials",
        {"device_id": device_id, "username": busy, "password": OLD, "policy_id": policy_id},
    )
    holding = await post(f"/v1/credentials/{gated['id']}/operations", {"kind": "change"})
    queued = await post(f"/v1/credentials/{gated['id']}/operations", {"kind": "verify"})
    await post(f"/v1/operations/{queued['operation_id']}/cancel", {})
    await save("paths_canceled_while_queued", queued["workflow_id"])
    await save("paths_change_ahead_of_a_cancel", holding["workflow_id"])


SLOT_WAIT = "paths_waited_for_a_device_slot"


async def record_slot_wait(
    post: Callable[[str, dict[str, object]], Awaitable[dict[str, str]]],
    save: Callable[[str, str], Awaitable[None]],
    users: Users,
    sshd: Sshd,
    policy_id: str,
) -> None:
    """Four changes requested at once on a device with one slot: the first holds it, the last
    waits for it and is signalled its turn by the change that gives it back."""
    capped = await post(
        "/v1/devices",
        {"name": "record-capped", "address": "127.0.0.1", "port": sshd.port,
         "host_keys": [sshd.host_key_line], "max_concurrent_operations": 1},
    )  # fmt: skip
    creds = await _new_credentials(post, users, capped["id"], policy_id, 4)
    accepted = await asyncio.gather(
        *(post(f"/v1/credentials/{c['id']}/operations", {"kind": "change"}) for c in creds)
    )
    await save("paths_gave_a_device_slot_back", accepted[0]["workflow_id"])
    await save(SLOT_WAIT, accepted[-1]["workflow_id"])


async def record_tasks(
    post: Callable[[str, dict[str, object]], Awaitable[dict[str, str]]],
    save: Callable[[str, str], Awaitable[None]],
    users: Users,
    device_id: str,
    policy_id: str,
) -> None:
    """A task's run (ssh/uptime) on two credentials of one device: the run and each child."""
    credentials = await _new_credentials(post, users, device_id, policy_id, 2)
    task = await post(
        "/v1/tasks",
        {"name": "record-uptime", "template": "ssh/uptime",
         "credential_ids": [c["id"] for c in credentials]},
    )  # fmt: skip
    accepted = await post(f"/v1/tasks/{task['id']}/runs", {})
    await save("tasks_run", accepted["workflow_id"])
    for number, cred in enumerate(credentials, start=1):
        await save(
            f"tasks_target_{number}", task_target_workflow_id(accepted["run_id"], cred["id"])
        )


async def _new_credentials(
    post: Callable[[str, dict[str, object]], Awaitable[dict[str, str]]],
    users: Users,
    device_id: str,
    policy_id: str,
    count: int,
) -> list[dict[str, str]]:
    """``count`` credentials of new users (password OLD) on the device."""
    return [
        await post(
            "/v1/credentials",
            {
                "device_id": device_id,
                "username": users.create(OLD),
                "password": OLD,
                "policy_id": policy_id,
            },
        )  # fmt: skip
        for _ in range(count)
    ]


if __name__ == "__main__":
    asyncio.run(record(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:4]))
