"""Registering things through the API, and reading the vault back, for end-to-end tests."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from sqlmodel import Session, select
from temporalio.client import WorkflowHandle

from store.models import Attempt, SecretVersion
from store.vault import Vault
from tests.e2e.conftest import Stack
from tests.servers.sshd import Sshd
from worker import build_workers, run_workers
from workflows.contracts import WORKFLOW_NAME, OperationInput, OperationResult

FAST_RETRIES = {"max_attempts": 3, "retry_interval_seconds": 0.3, "backoff": 1.0}


async def ssh_device(stack: Stack, sshd: Sshd, **overrides: Any) -> dict[str, Any]:
    body = {
        "name": f"host-{secrets.token_hex(4)}",
        "address": "127.0.0.1",
        "port": sshd.port,
        "executor": "ssh",
        "host_keys": [sshd.host_key_line],
        **overrides,
    }
    return await stack.post("/v1/devices", body)


async def policy(stack: Stack, **overrides: Any) -> dict[str, Any]:
    body = {"name": f"policy-{secrets.token_hex(4)}", **FAST_RETRIES, **overrides}
    return await stack.post("/v1/policies", body)


async def credential(
    stack: Stack, device_id: str, username: str, password: str, **extra: Any
) -> dict[str, Any]:
    body = {"device_id": device_id, "username": username, "password": password, **extra}
    return await stack.post("/v1/credentials", body)


def current_secret(stack: Stack, credential_id: str) -> str:
    """The vault's current secret, decrypted the way an activity does."""
    vault = Vault(stack.settings.master_key_bytes)
    with Session(stack.engine) as session:
        version = Vault.current(session, credential_id)
        assert version is not None
        return vault.reveal(version)


def versions(stack: Stack, credential_id: str) -> list[tuple[str, str]]:
    with Session(stack.engine) as session:
        rows = session.exec(
            select(SecretVersion).where(SecretVersion.credential_id == credential_id)
        )
        return sorted((v.id, v.state) for v in rows)


async def wait_for_attempts(stack: Stack, operation_id: str, count: int, within: float) -> None:
    """Wait until the store has recorded ``count`` finished change attempts (polls the store)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        with Session(stack.engine) as session:
            finished = session.exec(
                select(Attempt).where(
                    Attempt.operation_id == operation_id,
                    Attempt.step == "change",
                    Attempt.outcome != "running",
                )
            ).all()
        if len(finished) >= count:
            return
        assert loop.time() < deadline, f"only {len(finished)} attempts after {within}s"
        await asyncio.sleep(0.05)


async def wait_for_step(stack: Stack, workflow_id: str, step: str, within: float = 30) -> None:
    """Wait until the operation's workflow reports ``step`` (its status query; polls)."""
    handle = stack.client.get_workflow_handle(workflow_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (await handle.query("status"))["step"] != step:
        assert loop.time() < deadline, await handle.query("status")
        await asyncio.sleep(0.05)


async def cancel_requested(stack: Stack, workflow_id: str, within: float = 20) -> None:
    """Return once the workflow's history records the cancel request."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        async for event in stack.client.get_workflow_handle(workflow_id).fetch_history_events():
            if event.HasField("workflow_execution_cancel_requested_event_attributes"):
                return
        assert loop.time() < deadline, "the cancel was not recorded"
        await asyncio.sleep(0.05)


async def start_change(
    stack: Stack, cred: dict[str, Any], device: dict[str, Any], revision: int, name: str
) -> WorkflowHandle[Any, OperationResult]:
    """A change's workflow started with the Temporal client alone (not the API), naming the
    revision of its steps; its id begins with ``name``."""
    return await stack.client.start_workflow(
        WORKFLOW_NAME,
        OperationInput(
            credential_id=cred["id"], kind="change", device_id=device["id"], revision=revision
        ),
        id=f"{name}-{secrets.token_hex(4)}",
        task_queue=stack.settings.task_queue,
        result_type=OperationResult,
    )


async def ssh_template(stack: Stack, body: str, kind: str = "change", name: str = "") -> str:
    """Save an ssh template (a new version if ``name`` exists); its name."""
    name = name or f"ssh/test-{secrets.token_hex(4)}"
    saved = await stack.post(
        "/v1/templates", {"name": name, "executor": "ssh", "kind": kind, "body": body}
    )
    await approve_template(stack.api, name, saved["version"])
    return name


async def approve_template(api: httpx.AsyncClient, name: str, version: int) -> None:
    """Approve a template version the admin proposed, as an approver of the test's own: a
    version runs only once someone other than its author approved it."""
    made = await api.post(
        "/v1/principals", json={"name": f"approver-{secrets.token_hex(4)}", "role": "approver"}
    )
    assert made.status_code == 201, made.text
    approved = await api.post(
        f"/v1/templates/{name}/versions/{version}/approve",
        json={},
        headers={"Authorization": f"Bearer {made.json()['token']}"},
    )
    assert approved.status_code == 200, approved.text


@asynccontextmanager
async def workers_on(stack: Stack, queue: str) -> AsyncIterator[None]:
    """Workers of the stack's (same store, same dev server) serving a task queue of the test's
    own, from the moment the test chooses: until then, what is requested there waits."""
    settings = stack.settings.model_copy(update={"task_queue": queue})
    stop = asyncio.Event()
    running = asyncio.create_task(
        run_workers(build_workers(stack.client, settings, stack.engine), stop)
    )
    try:
        yield
    finally:
        stop.set()
        await running
