"""``GET /metrics``: Prometheus text that prometheus_client's parser reads, answered without a
token, whose counters move by exactly the operations run; and the SDK's worker metrics."""

from __future__ import annotations

import asyncio
import base64
import secrets

import httpx
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from keyturn.settings import Settings
from keyturn.temporal import connect
from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, policy, ssh_device
from tests.e2e.metrics_scraping import parse, scrape, value
from tests.servers.ports import free_port
from tests.servers.sshd import Sshd, Users
from workflows.device_slots import DeviceSlotsWorkflow


async def test_counters_match_the_operations_run(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    device = await ssh_device(stack, sshd)
    pol = await policy(stack)
    good = []
    for _ in range(2):
        password = f"Met-{secrets.token_hex(6)}"
        good.append(
            await credential(
                stack, device["id"], ssh_users.create(password), password, policy_id=pol["id"]
            )
        )
    refused = await credential(
        stack,
        device["id"],
        ssh_users.create("the-real-one"),
        "not-the-password",
        policy_id=pol["id"],
    )
    before = await scrape(stack)

    results = await asyncio.gather(
        *(stack.run_operation(c["id"]) for c in good),
        stack.run_operation(refused["id"]),
        stack.run_operation(good[0]["id"], "verify"),
    )
    assert [r["status"] for r in results] == ["succeeded", "succeeded", "failed", "succeeded"]
    after = await scrape(stack)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ssh = {"trigger": "manual", "executor": "ssh"}
    total = "keyturn_operations_total"
    assert moved(total, kind="change", status="succeeded", **ssh) == 2
    assert moved(total, kind="change", status="failed", **ssh) == 1
    assert moved(total, kind="verify", status="succeeded", **ssh) == 1
    assert moved("keyturn_operation_duration_seconds_count", kind="change") == 3
    assert moved("keyturn_operation_duration_seconds_count", kind="verify") == 1
    assert moved("keyturn_operation_duration_seconds_bucket", kind="change", le="+Inf") == 3
    assert moved("keyturn_attempt_duration_seconds_count", step="change") >= 3
    assert moved("keyturn_operation_duration_seconds_sum", kind="change") > 0
    assert value(after, "keyturn_operations_queued") == 0
    assert ("keyturn_credentials_out_of_sync", frozenset()) in after
    assert ("keyturn_lockout_waits_total", frozenset()) in after


async def test_a_worker_serves_the_sdk_metrics(temporal: WorkflowEnvironment) -> None:
    address = f"127.0.0.1:{free_port()}"
    settings = Settings(
        temporal_address=temporal.client.service_client.config.target_host,
        master_key=base64.b64encode(temporal.master_key).decode(),  # type: ignore[attr-defined]
        worker_metrics_address=address,
    )
    client = await connect(settings, worker=True)
    async with Worker(
        client, task_queue=f"metrics-{secrets.token_hex(4)}", workflows=[DeviceSlotsWorkflow]
    ):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        async with httpx.AsyncClient() as http:
            while True:
                text = (await http.get(f"http://{address}/metrics")).text
                names = {name for name, _ in parse(text)}
                if any(n.startswith("temporal_") for n in names):
                    break
                assert loop.time() < deadline, text[:500]
                await asyncio.sleep(0.2)
    assert any(n.startswith("temporal_worker") or n.startswith("temporal_request") for n in names)
