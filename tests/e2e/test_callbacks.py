"""Callbacks to the requesting module: one POST per operation (and per chained one), signed per
Standard Webhooks, retried by Temporal with the same webhook-id; refused URLs change nothing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.e2e.conftest import Stack, running_stack
from tests.e2e.helpers import credential, current_secret, policy, ssh_device
from tests.e2e.secrets_search import assert_no_secret
from tests.servers.sshd import Sshd, Users
from tests.servers.webhook_receiver import Delivery, WebhookReceiver
from workflows.contracts import callback_workflow_id

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
        assert delivery.headers["webhook-id"] == f"msg_{operation['operation_id']}"
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
    assert {d.headers["webhook-id"] for d in deliveries} == {f"msg_{operation['id']}"}
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
