"""One writer per credential: operations on one credential run one at a time, in request order,
whatever their kind; device slots are FIFO and cheap to wait for; cancel leaves vault and target
in agreement. Real sshd, real Temporal dev server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowFailureError

from store.models import AuditEvent, DeviceSlotClaim, LoginCharge, Operation
from tests.e2e.conftest import Stack
from tests.e2e.helpers import (
    credential,
    current_secret,
    policy,
    ssh_device,
    ssh_template,
    wait_for_step,
)
from tests.servers.sshd import Sshd, Users
from worker import build_workers
from workflows.contracts import WORKFLOW_NAME, OperationInput, OperationResult

OLD = "0ne-writer-old"
ADMIN_PASSWORD = "0ne-writer-admin"


async def _request(stack: Stack, credential_id: str, kind: str) -> dict[str, Any]:
    response = await stack.api.post(
        f"/v1/credentials/{credential_id}/operations", json={"kind": kind}
    )
    assert response.status_code in (200, 202), response.text
    body: dict[str, Any] = response.json()
    return body


async def _finished(stack: Stack, accepted: dict[str, Any], within: float = 60) -> dict[str, Any]:
    """Wait for the operation's own workflow run to end, then read it through the API."""
    run_id = _run_id(stack, accepted["operation_id"])
    handle = stack.client.get_workflow_handle(accepted["workflow_id"], run_id=run_id)
    with contextlib.suppress(WorkflowFailureError):  # canceled operations end that way
        await asyncio.wait_for(handle.result(), within)
    return await stack.get(f"/v1/operations/{accepted['operation_id']}")


def _run_id(stack: Stack, operation_id: str) -> str | None:
    with Session(stack.engine) as session:
        row = session.get(Operation, operation_id)
        assert row is not None
        return row.run_id


def _failed_charges(stack: Stack, username: str) -> int:
    with Session(stack.engine) as session:
        return len(
            session.exec(
                select(LoginCharge).where(
                    LoginCharge.username == username, LoginCharge.state == "failed"
                )
            ).all()
        )


async def _registered(stack: Stack, handle: Any, within: float = 30) -> str:
    """The id of an operation started with the SDK, once its row exists (polls the API)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        operation_id = (await handle.query("status")).get("operation_id")
        if operation_id:
            response = await stack.api.get(f"/v1/operations/{operation_id}")
            if response.status_code == 200:
                return str(operation_id)
        assert loop.time() < deadline, "the workflow never registered its operation"
        await asyncio.sleep(0.05)


def _shipped(relative: str) -> str:
    return _read(Path(__file__).parents[2] / "executors/templates" / relative)


def _read(path: Path) -> str:
    return path.read_text()


def _span(stack: Stack, operation_id: str) -> tuple[datetime, datetime]:
    """When the operation started acting and when it ended, from its audit events."""
    with Session(stack.engine) as session:
        events = session.exec(
            select(AuditEvent)
            .where(AuditEvent.operation_id == operation_id)
            .order_by(col(AuditEvent.id))
        ).all()
    started = [e.at for e in events if e.event == "operation.started"]
    ended = [
        e.at
        for e in events
        if e.event in ("operation.succeeded", "operation.failed", "operation.canceled")
    ]
    assert started and ended, [e.event for e in events]
    return started[0], ended[-1]


async def _admin_and_user(
    stack: Stack, sshd: Sshd, ssh_users: Users, **device: Any
) -> tuple[dict[str, Any], dict[str, Any], str]:
    admin = ssh_users.create(ADMIN_PASSWORD)
    ssh_users.make_admin(admin)
    user = ssh_users.create(OLD)
    dev = await ssh_device(stack, sshd, **device)
    admin_cred = await credential(stack, dev["id"], admin, ADMIN_PASSWORD)
    pol = await policy(stack)
    cred = await credential(
        stack,
        dev["id"],
        user,
        OLD,
        policy_id=pol["id"],
        reconcile_credential_id=admin_cred["id"],
    )
    return dev, cred, user


async def test_change_and_reconcile_together_never_race(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    _, cred, user = await _admin_and_user(stack, sshd, ssh_users)
    loop = asyncio.get_running_loop()
    for _ in range(10):
        began = loop.time()
        change, reconcile = await asyncio.gather(
            _request(stack, cred["id"], "change"), _request(stack, cred["id"], "reconcile")
        )
        # One of the two waits for the other: never two writers on one credential.
        assert sorted([change["status"], reconcile["status"]]) == ["queued", "scheduled"]
        done = await asyncio.gather(_finished(stack, change), _finished(stack, reconcile))
        assert [d["status"] for d in done] == ["succeeded", "succeeded"], done
        verify = await _finished(stack, await _request(stack, cred["id"], "verify"))
        assert verify["status"] == "succeeded", verify
        assert loop.time() - began < 30
    assert _failed_charges(stack, user) == 0
    assert await ssh_users.password_works(user, current_secret(stack, cred["id"]))


async def test_a_burst_of_kinds_on_one_credential_runs_one_at_a_time_in_order(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    _, cred, user = await _admin_and_user(stack, sshd, ssh_users)
    answers = [
        await _request(stack, cred["id"], kind) for kind in ["change", "verify", "reconcile"] * 10
    ]
    # Distinct operations in the order they were requested; the rest joined one of them.
    order: list[dict[str, Any]] = []
    for answer in answers:
        if not answer["joined"]:
            order.append(answer)
        else:
            assert answer["operation_id"] in {o["operation_id"] for o in order}
    assert len(order) >= 3
    queued = [o for o in order if o["status"] == "queued"]
    assert queued, "later kinds must queue behind the first"
    shown = await stack.get(f"/v1/operations/{queued[-1]['operation_id']}")
    assert shown["status"] in ("queued", "running", "succeeded")
    if shown["status"] == "queued":
        assert shown["waiting_for"] in {o["operation_id"] for o in order}

    done = [await _finished(stack, o, within=120) for o in order]

    assert all(d["status"] == "succeeded" for d in done), done
    spans = [_span(stack, o["operation_id"]) for o in order]
    for (_, ended), (started, _) in zip(spans, spans[1:], strict=False):
        assert ended <= started, "an operation started before the one ahead of it ended"
    assert await ssh_users.password_works(user, current_secret(stack, cred["id"]))
    assert _failed_charges(stack, user) == 0


async def test_a_change_started_with_the_temporal_client_alone_is_an_operation(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    """The SDK is a front door too: no API call, no row made beforehand."""
    _, cred, user = await _admin_and_user(stack, sshd, ssh_users)
    handle = await stack.client.start_workflow(
        WORKFLOW_NAME,
        OperationInput(credential_id=cred["id"], kind="change"),
        id=f"sdk-change-{secrets.token_hex(4)}",
        task_queue=stack.settings.task_queue,
        result_type=OperationResult,
    )
    # Once the workflow has registered itself, a request through the API queues behind it.
    operation_id = await _registered(stack, handle)
    behind = await _request(stack, cred["id"], "verify")

    result = await handle.result()

    assert result.status == "succeeded" and result.operation_id == operation_id
    # Its starter named no revision: the workflow found out with one patch marker, and took
    # its first steps one at a time, as every release before did.
    events = (await handle.fetch_history()).events
    assert [e for e in events if e.marker_recorded_event_attributes.marker_name == "core_patch"]
    local_steps = _local_steps(events)
    assert _steps_named(local_steps, "begin") == 0
    assert _steps_named(local_steps, "register") == _steps_named(local_steps, "prepare") == 1
    assert _steps_named(local_steps, "depart") == 1  # its change step left the gate to it
    operation = await stack.get(f"/v1/operations/{result.operation_id}")
    assert operation["status"] == "succeeded" and operation["kind"] == "change"
    assert [(a["step"], a["outcome"]) for a in operation["attempts"]] == [
        ("change", "succeeded"),
        ("verify", "succeeded"),
    ]
    assert behind["status"] == "queued"
    verify = await _finished(stack, behind)
    assert verify["status"] == "succeeded"
    assert _span(stack, result.operation_id)[1] <= _span(stack, behind["operation_id"])[0]
    assert await ssh_users.password_works(user, current_secret(stack, cred["id"]))


async def test_device_slots_are_fifo_and_waiting_costs_no_history(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    """40 operations on 40 credentials of a device with a cap of 1."""
    # A directory every throwaway account may write to (not sticky: each appends one file).
    log_dir = Path(tempfile.mkdtemp(prefix="keyturn-cap-", dir="/tmp"))
    os.chmod(log_dir, 0o777)
    log = log_dir / "log"
    os.close(os.open(log, os.O_CREAT | os.O_WRONLY, 0o666))
    os.chmod(log, 0o666)
    try:
        body = _shipped("ssh/linux-passwd.tpl")
        # The target itself records when each change begins and ends.
        body = (
            f'exec: echo "{{{{ username }}}} start $(date +%s.%N)" >> {log_dir}/log\nexit: 0\n'
            + body.split("\n", 1)[1]
            + f'exec: echo "{{{{ username }}}} end $(date +%s.%N)" >> {log_dir}/log\nexit: 0\n'
        )
        name = await ssh_template(stack, body)
        device = await ssh_device(stack, sshd, max_concurrent_operations=1)
        pol = await policy(stack)
        users = [ssh_users.create(OLD) for _ in range(40)]
        creds = [
            await credential(stack, device["id"], u, OLD, policy_id=pol["id"], change_template=name)
            for u in users
        ]

        # The first holds the slot before the others are requested: a claim that finds the slot
        # free takes it at once, so request order is the grant order only among those waiting.
        accepted = [await _request(stack, creds[0]["id"], "change")]
        await wait_for_step(stack, accepted[0]["workflow_id"], "change")
        accepted += [await _request(stack, c["id"], "change") for c in creds[1:]]
        done = await asyncio.gather(*(_finished(stack, a, within=300) for a in accepted))

        assert all(d["status"] == "succeeded" for d in done), [d["error"] for d in done]
        lines = [line.split() for line in _read(log).splitlines()]
        events = sorted((float(at), who, what) for who, what, at in lines)
        running = 0
        starts = []
        for _, who, what in events:
            running += 1 if what == "start" else -1
            assert running <= 1, "two operations acted on the device at once"
            if what == "start":
                starts.append(who)
        assert starts == users, "slots were not granted in request order"
        first, last = accepted[1], accepted[-1]
        sizes = []
        for waiter in (first, last):
            run_id = _run_id(stack, waiter["operation_id"])
            handle = stack.client.get_workflow_handle(waiter["workflow_id"], run_id=run_id)
            sizes.append(len((await handle.fetch_history()).events))
        assert sizes[0] == sizes[1], f"waiting grew the history: {sizes}"
        print(f"\n[cap 1] first and last of 39 waiters: {sizes[0]} history events each")
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


async def test_an_operation_the_api_starts_begins_in_one_step_with_no_patch_marker(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    """Three changes, two of them on a device with a cap of 1. The API starts each at the
    newest revision: its history records no patch marker (each costs a marker and a
    search-attribute upsert), and it registers, prepares and claims its first slot in one step.
    A device slot that is free is taken with no signal, one waited for comes by one; a change
    that verifies gives its slot back itself, and leaves the credential's gate with its
    commit."""
    capped = await ssh_device(stack, sshd, max_concurrent_operations=1)
    alone = await ssh_device(stack, sshd)
    pol = await policy(stack)
    creds = [
        await credential(stack, device["id"], ssh_users.create(OLD), OLD, policy_id=pol["id"])
        for device in (capped, capped, alone)
    ]
    accepted = await asyncio.gather(*(_request(stack, c["id"], "change") for c in creds))
    done = await asyncio.gather(*(_finished(stack, a) for a in accepted))
    assert [d["status"] for d in done] == ["succeeded"] * 3, [d["error"] for d in done]

    grants_seen = []
    for waiter in accepted:
        run_id = _run_id(stack, waiter["operation_id"])
        handle = stack.client.get_workflow_handle(waiter["workflow_id"], run_id=run_id)
        events = (await handle.fetch_history()).events
        markers = [
            e for e in events if e.marker_recorded_event_attributes.marker_name == "core_patch"
        ]
        assert markers == [], markers
        grants = [
            e
            for e in events
            if e.workflow_execution_signaled_event_attributes.signal_name == "slot_granted"
        ]
        grants_seen.append(len(grants))
        # Each change verified and gave its slot back itself: no step of the workflow's did.
        local_steps = _local_steps(events)
        assert local_steps and not [d for d in local_steps if b"release_device_slot" in d]
        assert _steps_named(local_steps, "begin") == 1
        # The change step left the credential's gate with its commit.
        for apart in ("register", "prepare", "request_device_slot", "depart"):
            assert _steps_named(local_steps, apart) == 0, apart
    # The second on the capped device waited for a signal only if the first still held the
    # slot when it asked; the first never waits.
    assert grants_seen[2] == 0 and sum(grants_seen[:2]) <= 1, grants_seen


async def test_a_change_hands_the_gate_on_with_its_commit(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    """A verify requested while a change runs on its credential queues behind it; the change
    step leaves the gate with its commit and tells the verify its turn (a signal from the
    step), so the change's workflow neither departs nor signals."""
    _, cred, user = await _admin_and_user(stack, sshd, ssh_users)
    change = await _request(stack, cred["id"], "change")
    verify = await _request(stack, cred["id"], "verify")
    assert verify["status"] == "queued" and not verify["joined"]

    done = [await _finished(stack, change), await _finished(stack, verify)]

    assert [d["status"] for d in done] == ["succeeded", "succeeded"], done
    assert _span(stack, change["operation_id"])[1] <= _span(stack, verify["operation_id"])[0]
    histories = []
    for accepted in (change, verify):
        run_id = _run_id(stack, accepted["operation_id"])
        handle = stack.client.get_workflow_handle(accepted["workflow_id"], run_id=run_id)
        histories.append((await handle.fetch_history()).events)
    changed, verified = histories
    local_steps = _local_steps(changed)
    assert _steps_named(local_steps, "depart") == 0
    assert not [
        e
        for e in changed
        if e.HasField("signal_external_workflow_execution_initiated_event_attributes")
    ]
    told = [
        e
        for e in verified
        if e.workflow_execution_signaled_event_attributes.signal_name == "gate_open"
    ]
    assert len(told) == 1
    assert await ssh_users.password_works(user, current_secret(stack, cred["id"]))


async def test_an_operation_runs_the_template_versions_current_when_it_was_requested(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    device = await ssh_device(stack, sshd, max_concurrent_operations=1)
    pol = await policy(stack, read_timeout_seconds=120)
    # Another account's change holds the device's only slot (passwd waits at a prompt).
    held_body = (
        "# kind: change\nspawn: passwd\nexpect: (?i)current password:\n"
        "send: {{ current_password }}\nexpect: keyturn-never-appears\n"
    )
    held = await ssh_template(stack, held_body)
    holder_user = ssh_users.create(OLD)
    holder = await credential(
        stack, device["id"], holder_user, OLD, policy_id=pol["id"], change_template=held
    )
    holding = await _request(stack, holder["id"], "change")
    user = ssh_users.create(OLD)
    name = await ssh_template(stack, _shipped("ssh/linux-passwd.tpl"))
    cred = await credential(
        stack, device["id"], user, OLD, policy_id=pol["id"], change_template=name
    )
    waiting = await _request(stack, cred["id"], "change")
    await wait_for_step(stack, waiting["workflow_id"], "waiting for a device slot")
    # Saved while the change waits: a version that would change nothing.
    await ssh_template(stack, "# kind: change\nexec: echo not this version\nexit: 3\n", name=name)
    canceled = await stack.api.post(f"/v1/operations/{holding['operation_id']}/cancel")
    assert canceled.status_code == 202

    done = await _finished(stack, waiting, within=120)

    assert done["status"] == "succeeded", done
    assert "passwd" in done["attempts"][0]["transcript"]
    assert await ssh_users.password_works(user, current_secret(stack, cred["id"]))


async def test_a_slot_whose_holder_was_terminated_goes_to_the_operation_waiting(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    """A holder terminated from the Web UI never gives its slot back: the waiter's check (every
    slot_holder_check_seconds; 1 s on this test's own worker, 300 by default) finds its workflow
    ended, frees the slot and takes it."""
    settings = stack.settings.model_copy(
        update={
            "task_queue": f"{stack.settings.task_queue}-slots-{secrets.token_hex(3)}",
            "slot_holder_check_seconds": 1,
        }
    )
    device = await ssh_device(stack, sshd, max_concurrent_operations=1)
    pol = await policy(stack, read_timeout_seconds=120)
    held = await ssh_template(
        stack,
        "# kind: change\nspawn: passwd\nexpect: (?i)current password:\n"
        "send: {{ current_password }}\nexpect: keyturn-never-appears\n",
    )
    holder = await credential(
        stack, device["id"], ssh_users.create(OLD), OLD, policy_id=pol["id"], change_template=held
    )
    user = ssh_users.create(OLD)
    waiter = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
    async with contextlib.AsyncExitStack() as workers:
        for worker in build_workers(stack.client, settings, stack.engine):
            await workers.enter_async_context(worker)
        holding = await stack.client.start_workflow(
            WORKFLOW_NAME,
            OperationInput(holder["id"]),
            id=f"slot-holder-{secrets.token_hex(4)}",
            task_queue=settings.task_queue,
        )
        await wait_for_step(stack, holding.id, "change")
        waiting = await stack.client.start_workflow(
            WORKFLOW_NAME,
            OperationInput(waiter["id"]),
            id=f"slot-waiter-{secrets.token_hex(4)}",
            task_queue=settings.task_queue,
            result_type=OperationResult,
        )
        await wait_for_step(stack, waiting.id, "waiting for a device slot")

        await holding.terminate("lost from the Web UI")
        result = await asyncio.wait_for(waiting.result(), 60)

    assert result.status == "succeeded", result
    assert await ssh_users.password_works(user, current_secret(stack, waiter["id"]))
    with Session(stack.engine) as session:  # nothing of either is left holding the device
        claims = session.exec(
            select(DeviceSlotClaim).where(DeviceSlotClaim.device_id == device["id"])
        ).all()
        assert claims == []


def _local_steps(events: Sequence[HistoryEvent]) -> list[bytes]:
    """The payloads of a history's local-activity markers (each names its step)."""
    return [
        p.data
        for e in events
        if e.marker_recorded_event_attributes.marker_name == "core_local_activity"
        for p in e.marker_recorded_event_attributes.details["data"].payloads
    ]


def _steps_named(local_steps: list[bytes], name: str) -> int:
    """How many of a history's local-activity markers are of the step ``keyturn.<name>``."""
    return sum(f'"keyturn.{name}"'.encode() in data for data in local_steps)
