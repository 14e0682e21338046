"""Waiting for what automatic triggers do, for end-to-end tests: operations by trigger, sweeps
that have run, delayed workflows, the Temporal CLI's view of schedules. Every wait polls with a
deadline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlmodel import Session, select
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from starter.devstack import temporal_cli
from store.models import AuditEvent, Credential
from tests.e2e.conftest import Stack
from workflows.contracts import schedule_id

_T = TypeVar("_T")


async def eventually(check: Callable[[], Awaitable[_T | None]], within: float, what: str) -> _T:
    """The first truthy result of ``check``, polled until ``within`` seconds have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await check()
        if result:
            return result
        assert loop.time() < deadline, f"not within {within:g}s: {what}"
        await asyncio.sleep(0.1)


def age(
    stack: Stack, credential_id: str, seconds: float, column: str = "secret_changed_at"
) -> None:
    """Make the credential's secret (or last verification) ``seconds`` old, as if time had
    passed: what a sweep reads."""
    with Session(stack.engine) as session:
        row = session.get(Credential, credential_id)
        assert row is not None
        setattr(row, column, datetime.now(UTC) - timedelta(seconds=seconds))
        session.add(row)
        session.commit()


async def operations(stack: Stack, **filters: str) -> list[dict[str, Any]]:
    response = await stack.api.get("/v1/operations", params={**filters, "limit": "500"})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def operation_ended(stack: Stack, within: float = 60, **filters: str) -> dict[str, Any]:
    """The first operation matching ``filters`` that has ended (polls the API)."""

    async def ended() -> dict[str, Any] | None:
        for item in await operations(stack, **filters):
            if item["status"] in ("succeeded", "failed", "canceled"):
                return item
        return None

    return await eventually(ended, within, f"an operation with {filters} ended")


async def sweep_finished(
    stack: Stack, purpose: str, policy_id: str, after: datetime, within: float = 60
) -> str:
    """The result of a run of the policy's schedule started after ``after``, once it ended."""
    handle = stack.client.get_schedule_handle(schedule_id(purpose, policy_id))

    async def finished() -> str | None:
        for action in (await handle.describe()).info.recent_actions:
            if action.started_at <= after:
                continue
            run = stack.client.get_workflow_handle(action.action.workflow_id)  # type: ignore[attr-defined]
            if (await run.describe()).status == WorkflowExecutionStatus.COMPLETED:
                result: str = await run.result()
                return result
        return None

    return await eventually(finished, within, f"a {purpose} sweep of {policy_id} after {after}")


async def schedule_exists(stack: Stack, purpose: str, policy_id: str) -> bool:
    try:
        await stack.client.get_schedule_handle(schedule_id(purpose, policy_id)).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def temporal_cli_json(stack: Stack, *args: str) -> Any:
    """What ``temporal <args> -o json`` says about the test server, as an operator would see it."""
    process = await asyncio.create_subprocess_exec(
        temporal_cli(),
        *args,
        "--address",
        stack.client.service_client.config.target_host,
        "-o",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return json.loads(out)


def audit_events(stack: Stack, event: str, credential_id: str) -> list[AuditEvent]:
    with Session(stack.engine) as session:
        return list(
            session.exec(
                select(AuditEvent).where(
                    AuditEvent.event == event, AuditEvent.credential_id == credential_id
                )
            )
        )


async def listed_by_temporal_cli(
    stack: Stack, schedule: str, paused: bool | None, within: float = 60
) -> None:
    """Wait until ``temporal schedule list`` shows the schedule paused or not (None: absent).
    The list is read from Temporal's visibility store, which follows changes shortly after."""

    async def agrees() -> bool:
        listed = {
            entry["scheduleId"]: bool(entry["info"].get("paused"))
            for entry in await temporal_cli_json(stack, "schedule", "list")
        }
        return listed.get(schedule) == paused if paused is not None else schedule not in listed

    await eventually(agrees, within, f"temporal schedule list shows {schedule} paused={paused}")
