"""Callbacks to the requesting modules: one POST per operation (and per chained one) to every
requester's URL, joins included, signed per Standard Webhooks, retried by Temporal with the same
webhook-id; canceled operations call back too; refused URLs change nothing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

import worker as worker_module
from activities.executor_steps import ExecutorActivities
from requesting.operations import OperationRequest, Requested, request_operation
from store import gate
from store.models import DeviceSlotClaim
from tests.e2e.conftest import Stack, running_stack
from tests.e2e.helpers import (
    credential,
    current_secret,
    policy,
    ssh_device,
    wait_for_step,
    workers_on,
)
from tests.e2e.secrets_search import assert_no_secret
from tests.servers.sshd import Sshd, Users
from tests.servers.webhook_receiver import Delivery, WebhookReceiver
from workflows.contracts import Departure, StepInput, callback_workflow_id

KEY = secrets.token_bytes(32)
WEBHOOK_SECRET = "whsec_" + base64.b64encode(KEY).decode()
OLD = "Cb!old-pw\"with'quotes"


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
async def hooked(
    temporal: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    async with running_stack(
        temporal,
        tmp_path_factory.mktemp("callbacks"),
        webhook_secret=WEBHOOK_SECRET,
        webhook_allow_http=True,
    ) as stack:
        yield stack


def _verified(delivery: Delivery) -> dict[str, Any]:
    """Check the signature as a receiver would, from the spec alone; the parsed body."""
    message_id = delivery.headers["webhook-id"]
    timestamp = delivery.headers["webhook-timestamp"]
    signed = f"{message_id}.{timestamp}.".encode() + delivery.body
    expected = base64.b64encode(hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
    versions = delivery.headers["webhook-signature"].split(" ")
    assert f"v1,{expected}" in versions, delivery.headers
    body: dict[str, Any] = json.loads(delivery.body)
    return body


async def _delivered(stack: Stack, operation_id: str) -> None:
    """Wait for the operation's callback workflow: its delivery has landed."""
    await stack.client.get_workflow_handle(callback_workflow_id(operation_id)).result()


async def _change_users(stack: Stack, sshd: Sshd, ssh_users: Users, count: int) -> list[str]:
    device = await ssh_device(stack, sshd)
    pol = await policy(stack)
    ids = []
    for _ in range(count):
        user = ssh_users.create(OLD)
        ids.append((await credential(stack, device["id"], user, OLD, policy_id=pol["id"]))["id"])
    return ids


async def test_one_signed_post_per_operation_even_when_requested_together(
    hooked: Stack, receiver: WebhookReceiver, sshd: Sshd, ssh_users: Users
) -> None:
    stack = hooked
    first, second = await _change_users(stack, sshd, ssh_users, 2)
    path = f"/hook/{secrets.token_hex(4)}"
    requests = [(first, "change"), (first, "verify"), (second, "change")]
    accepted = await asyncio.gather(
        *(
            stack.post(
                f"/v1/credentials/{cred}/operations",
                {"kind": kind, "callback_url": receiver.url(path)},
                expect=202,
            )
            for cred, kind in requests
        )
    )
    for operation in accepted:
        await stack.client.get_workflow_handle(operation["workflow_id"]).result()
        await _delivered(stack, operation["operation_id"])
    deliveries = receiver.to(path)
    assert len(deliveries) == 3
    bodies = {_verified(d)["data"]["operation_id"]: (d, _verified(d)) for d in deliveries}
    assert set(bodies) == {a["operation_id"] for a in accepted}
    for (cred, kind), operation in zip(requests, accepted, strict=True):
        delivery, body = bodies[operation["operation_id"]]
        assert delivery.headers["webhook-id"] == f"msg_{operation['operation_id']}_1"
        assert body["type"] == "operation.ended"
        data = body["data"]
        assert (data["credential_id"], data["kind"], data["trigger"]) == (cred, kind, "manual")
        row = await stack.get(f"/v1/operations/{operation['operation_id']}")
        assert data["status"] == row["status"] == "succeeded"
        assert data["resolution"] == row["resolution"] and data["error_type"] is None
    received = b"\n".join(d.body + json.dumps(d.headers).encode() for d in deliveries)
    assert_no_secret(received, OLD, current_secret(stack, first), current_secret(stack, second))


async def test_a_failing_receiver_gets_the_same_message_again(
    hooked: Stack, receiver: WebhookReceiver, sshd: Sshd, ssh_users: Users
) -> None:
    stack = hooked
    (cred,) = await _change_users(stack, sshd, ssh_users, 1)
    path = f"/hook/{secrets.token_hex(4)}"
    receiver.answer(path, 500, 500)
    operation = await stack.run_operation_with(
        cred, {"kind": "change", "callback_url": receiver.url(path)}
    )
    await _delivered(stack, operation["id"])
    deliveries = receiver.to(path)
    assert [d.answered for d in deliveries] == [500, 500, 200]
    assert {d.headers["webhook-id"] for d in deliveries} == {f"msg_{operation['id']}_1"}
    assert all(_verified(d)["data"]["operation_id"] == operation["id"] for d in deliveries)


async def test_a_chained_operation_calls_back_too(
    hooked: Stack, receiver: WebhookReceiver, sshd: Sshd, ssh_users: Users
) -> None:
    stack = hooked
    device = await ssh_device(stack, sshd)
    pol = await policy(stack)
    parent = await credential(stack, device["id"], ssh_users.create(OLD), OLD, policy_id=pol["id"])
    child = await credential(
        stack, device["id"], ssh_users.create(OLD), OLD, policy_id=pol["id"],
        parent_id=parent["id"],
    )  # fmt: skip
    path = f"/hook/{secrets.token_hex(4)}"
    operation = await stack.run_operation_with(
        parent["id"], {"kind": "change", "callback_url": receiver.url(path)}
    )
    (child_id,) = [c["operation_id"] for c in operation["children"]]
    await stack.client.get_workflow_handle(f"keyturn-change-{child['id']}").result()
    await _delivered(stack, operation["id"])
    await _delivered(stack, child_id)
    data = sorted(
        (_verified(d)["data"] for d in receiver.to(path)),
        key=lambda d: d["parent_operation_id"] or "",
    )
    assert [(d["operation_id"], d["trigger"]) for d in data] == [
        (operation["id"], "manual"),
        (child_id, "parent-changed"),
    ]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/hook",
        "http://192.0.2.10/hook",  # http only to loopback
        "https://user:pw@example.test/hook",
        "not a url",
    ],
)
async def test_a_refused_callback_url_changes_nothing(
    hooked: Stack, sshd: Sshd, ssh_users: Users, url: str
) -> None:
    stack = hooked
    (cred,) = await _change_users(stack, sshd, ssh_users, 1)
    response = await stack.api.post(
        f"/v1/credentials/{cred}/operations", json={"kind": "change", "callback_url": url}
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == "callback_url"
    assert (await stack.api.get(f"/v1/credentials/{cred}/operations")).json()["items"] == []


async def test_callbacks_need_a_webhook_secret(stack: Stack, sshd: Sshd, ssh_users: Users) -> None:
    (cred,) = await _change_users(stack, sshd, ssh_users, 1)
    response = await stack.api.post(
        f"/v1/credentials/{cred}/operations",
        json={"kind": "change", "callback_url": "https://hooks.example.test/k"},
    )
    assert response.status_code == 422 and "KEYTURN_WEBHOOK_SECRET" in response.text
    assert (await stack.api.get(f"/v1/credentials/{cred}/operations")).json()["items"] == []


async def _request(stack: Stack, queue: str, credential_id: str, kind: str, url: str) -> Requested:
    return await request_operation(
        stack.engine,
        stack.client,
        queue,
        OperationRequest(credential_id, kind, callback_url=url, requested_by="admin"),
    )


async def _ended(stack: Stack, requested: Requested) -> None:
    with contextlib.suppress(WorkflowFailureError):  # a canceled operation fails its workflow
        await stack.client.get_workflow_handle(requested.workflow_id).result()
    await _delivered(stack, requested.operation_id)


async def test_every_request_that_joins_an_operation_is_told_its_outcome(
    hooked: Stack, receiver: WebhookReceiver, sshd: Sshd, ssh_users: Users
) -> None:
    """Four changes of one credential requested together join one operation; a verify of the
    same credential queues behind it and a change of another credential on the same device runs
    beside it. Nothing runs until every request is answered (no worker serves their queue yet),
    so the joins are certain: each requester's URL gets one signed POST of the operation its
    request was answered with."""
    stack = hooked
    first, second = await _change_users(stack, sshd, ssh_users, 2)
    queue = f"{stack.settings.task_queue}-joins-{secrets.token_hex(4)}"
    asked = [(first, "change")] * 4 + [(first, "verify"), (second, "change")]
    paths = [f"/hook/{secrets.token_hex(4)}" for _ in asked]
    answers = await asyncio.gather(
        *(
            _request(stack, queue, cred, kind, receiver.url(path))
            for (cred, kind), path in zip(asked, paths, strict=True)
        )
    )
    changes = answers[:4]
    assert len({a.operation_id for a in changes}) == 1
    assert sorted(a.joined for a in changes) == [False, True, True, True]

    async with workers_on(stack, queue):
        for answer in {a.operation_id: a for a in answers}.values():
            await _ended(stack, answer)

    ids = set()
    for answer, path in zip(answers, paths, strict=True):
        (delivery,) = receiver.to(path)
        data = _verified(delivery)["data"]
        assert data["operation_id"] == answer.operation_id and data["status"] == "succeeded"
        assert delivery.headers["webhook-id"].startswith(f"msg_{answer.operation_id}_")
        ids.add(delivery.headers["webhook-id"])
    assert len(ids) == len(answers)  # one stable id per operation and URL
    received = b"\n".join(d.body for p in paths for d in receiver.to(p))
    assert_no_secret(received, OLD, current_secret(stack, first), current_secret(stack, second))


class _HeldClose(ExecutorActivities):
    """The real change step, which leaves the gate and closes the callbacks with its commit,
    after which the operation waits for the test: a request can join just as it ends."""

    closed = threading.Event()
    proceed = threading.Event()

    async def _tell(
        self, step: StepInput, handed: list[DeviceSlotClaim] | None, departure: Departure | None
    ) -> None:
        await super()._tell(step, handed, departure)
        if departure is not None:
            type(self).closed.set()
            assert await asyncio.to_thread(type(self).proceed.wait, 60)


async def test_a_request_that_comes_as_the_operation_ends_starts_its_own(
    hooked: Stack,
    receiver: WebhookReceiver,
    sshd: Sshd,
    ssh_users: Users,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The operation has closed its callbacks but its workflow still runs: a request of the same
    kind cannot join it unseen. It waits for that workflow to end and starts an operation of
    its own, whose outcome it is told."""
    stack = hooked
    (cred,) = await _change_users(stack, sshd, ssh_users, 1)
    queue = f"{stack.settings.task_queue}-ending-{secrets.token_hex(4)}"
    monkeypatch.setattr(worker_module, "ExecutorActivities", _HeldClose)
    refused = asyncio.Event()
    loop = asyncio.get_running_loop()
    join_callback = gate.join_callback

    def noticed(*args: Any) -> bool:  # the real registration, observed
        joined = join_callback(*args)
        if not joined:
            loop.call_soon_threadsafe(refused.set)
        return joined

    monkeypatch.setattr(gate, "join_callback", noticed)
    early, late = f"/hook/{secrets.token_hex(4)}", f"/hook/{secrets.token_hex(4)}"
    try:
        async with workers_on(stack, queue):
            ending = await _request(stack, queue, cred, "change", receiver.url(early))
            assert await asyncio.to_thread(_HeldClose.closed.wait, 60)
            arriving = asyncio.create_task(
                _request(stack, queue, cred, "change", receiver.url(late))
            )
            await asyncio.wait_for(refused.wait(), 30)  # it found the operation ending
            assert not arriving.done()  # and waits for its workflow to end
            _HeldClose.proceed.set()
            own = await arriving
            await _ended(stack, ending)
            await _ended(stack, own)
    finally:
        _HeldClose.proceed.set()

    assert not own.joined and own.operation_id != ending.operation_id
    for path, operation_id in ((early, ending.operation_id), (late, own.operation_id)):
        (delivery,) = receiver.to(path)
        assert _verified(delivery)["data"]["operation_id"] == operation_id


async def test_an_operation_canceled_while_queued_at_the_gate_calls_back(
    hooked: Stack, receiver: WebhookReceiver, sshd: Sshd, ssh_users: Users
) -> None:
    """A verify holds the credential's gate (its queue has no worker); a change queued behind
    it is canceled: its requester is told, outcome canceled."""
    stack = hooked
    (cred,) = await _change_users(stack, sshd, ssh_users, 1)
    idle = f"{stack.settings.task_queue}-idle-{secrets.token_hex(4)}"
    holder = await _request(stack, idle, cred, "verify", receiver.url("/hook/never"))
    path = f"/hook/{secrets.token_hex(4)}"
    try:
        queued = await stack.post(
            f"/v1/credentials/{cred}/operations",
            {"kind": "change", "callback_url": receiver.url(path)},
            expect=202,
        )
        assert queued["status"] == "queued"
        await wait_for_step(
            stack, queued["workflow_id"], f"queued behind operation {holder.operation_id}"
        )
        canceled = await stack.post(f"/v1/operations/{queued['operation_id']}/cancel", {}, 202)
        await _ended(stack, Requested(canceled["id"], queued["workflow_id"], "", False))
    finally:
        await stack.client.get_workflow_handle(holder.workflow_id).terminate("test over")

    (delivery,) = receiver.to(path)
    data = _verified(delivery)["data"]
    assert (data["operation_id"], data["status"]) == (queued["operation_id"], "canceled")
    assert data["resolution"].startswith("canceled while queued behind operation")


async def test_an_operation_canceled_before_it_started_calls_back(
    hooked: Stack, receiver: WebhookReceiver, sshd: Sshd, ssh_users: Users
) -> None:
    """Canceled before any worker ran its first step (it is canceled while it registers): its
    requester is told all the same, outcome canceled, and the credential is untouched."""
    stack = hooked
    (cred,) = await _change_users(stack, sshd, ssh_users, 1)
    queue = f"{stack.settings.task_queue}-unstarted-{secrets.token_hex(4)}"
    path = f"/hook/{secrets.token_hex(4)}"
    requested = await _request(stack, queue, cred, "change", receiver.url(path))
    await stack.post(f"/v1/operations/{requested.operation_id}/cancel", {}, 202)

    async with workers_on(stack, queue):
        await _ended(stack, requested)

    (delivery,) = receiver.to(path)
    data = _verified(delivery)["data"]
    assert (data["operation_id"], data["status"]) == (requested.operation_id, "canceled")
    row = await stack.get(f"/v1/operations/{requested.operation_id}")
    assert row["status"] == "canceled" and row["resolution"] == "canceled before it started"
    assert row["attempts"] == []
    assert current_secret(stack, cred) == OLD
