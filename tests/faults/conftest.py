"""The stack for fault tests: a real Temporal dev server, the HTTP API in this process, a SQLite
store in a temp dir, and the worker as a *subprocess* (``python worker.py``) that a test can
SIGKILL, or arm with failpoints (keyturn/failpoints.py) so it SIGKILLs itself, and restart."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from keyturn.codec import data_converter
from keyturn.settings import Settings
from starter.app import create_app
from starter.devstack import temporal_cli
from store.engine import make_engine
from workflows.contracts import SEARCH_ATTRIBUTES, OperationResult

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "fault-test-admin-token"
READY_LINE = "worker serving"  # worker.py logs it once connected, just before it polls
START_WITHIN = 60.0  # seconds for a worker to import, connect and log READY_LINE (2 busy cores)
STOP_GRACE = 20.0  # SIGTERM, then SIGKILL after this long (teardown only)
# A killed worker's steps are noticed by Temporal's timeouts alone: a workflow task it held by
# the workflow task timeout, an executor step by its heartbeat timeout (10 s each by default).
# Shorter here, so each kill costs seconds, not tens: the server's default workflow task timeout
# and Keyturn's lost_worker_seconds, the settings an operator would shorten for the same.
LOST_WORKER_SECONDS = 4


@dataclass(frozen=True)
class TemporalServer:
    env: WorkflowEnvironment
    master_key: bytes

    @property
    def address(self) -> str:
        """host:port of the dev server, for the worker subprocess."""
        return self.env.client.service_client.config.target_host


@dataclass(frozen=True)
class Accepted:
    operation_id: str
    workflow_id: str


@dataclass
class FaultStack:
    settings: Settings
    engine: Engine
    client: Client
    api: httpx.AsyncClient
    temporal_address: str
    started: list[str] = field(default_factory=list)  # workflow ids, to clean up after a test

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

    async def request_change(self, credential_id: str) -> Accepted:
        """Request a change through the API; it must start a new operation (not join one)."""
        body = await self.post(
            f"/v1/credentials/{credential_id}/operations", {"kind": "change"}, expect=202
        )
        assert not body["joined"], body
        self.started.append(body["workflow_id"])
        return Accepted(body["operation_id"], body["workflow_id"])

    async def result(self, accepted: Accepted, within: float) -> OperationResult:
        """The workflow's result, waiting at most ``within`` seconds."""
        handle = self.client.get_workflow_handle(accepted.workflow_id, result_type=OperationResult)
        try:
            return await asyncio.wait_for(handle.result(), within)
        except TimeoutError:
            status = await handle.query("status")
            raise AssertionError(
                f"operation {accepted.operation_id} not finished after {within:g}s: {status}"
            ) from None

    async def operation(self, operation_id: str) -> dict[str, Any]:
        return await self.get(f"/v1/operations/{operation_id}")

    def worker_environment(self, failpoints_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYTURN_", "TEMPORAL_"))}
        env.update(
            KEYTURN_TEMPORAL_ADDRESS=self.temporal_address,
            KEYTURN_DATABASE_URL=self.settings.resolved_database_url,
            KEYTURN_MASTER_KEY=str(self.settings.master_key),
            KEYTURN_TASK_QUEUE=self.settings.task_queue,
            KEYTURN_SWEEP_INTERVAL_SECONDS=str(self.settings.sweep_interval_seconds),
            KEYTURN_SWEEP_PAGE_SIZE=str(self.settings.sweep_page_size),
            KEYTURN_LOST_WORKER_SECONDS=str(self.settings.lost_worker_seconds),
            KEYTURN_DATA_DIR=str(self.settings.data_dir),
            KEYTURN_FAILPOINTS_DIR=str(failpoints_dir),
            KEYTURN_TEST_MODE="1",  # failpoints are compiled out otherwise
            PYTHONUNBUFFERED="1",
        )
        return env

    async def terminate_started(self) -> None:
        """Terminate the workflows a test started that still run (a failed test's leftovers)."""
        for workflow_id in self.started:
            handle = self.client.get_workflow_handle(workflow_id)
            try:
                if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                    await handle.terminate(reason="fault test teardown")
            except RPCError:
                pass  # already gone
        self.started.clear()


class WorkerProcess:
    """``python worker.py`` in the repo root, its output appended to one log file per test."""

    def __init__(self, env: dict[str, str], log_path: Path, failpoints_dir: Path) -> None:
        self._env = env
        self.log_path = log_path
        self.failpoints_dir = failpoints_dir
        failpoints_dir.mkdir(parents=True, exist_ok=True)
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0
        self.kills = 0

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int:
        assert self._process is not None, "the worker was never started"
        return self._process.pid

    async def start(self, failpoints: Iterable[str] = ()) -> None:
        """Start the worker and wait until it logs READY_LINE (it polls right after)."""
        assert not self.alive, "the worker is already running"
        self._close_log()
        armed = ",".join(failpoints)
        env = dict(self._env)
        if armed:
            env["KEYTURN_FAILPOINTS"] = armed
        self.starts += 1
        self._log = self.log_path.open("ab")
        self._log.write(f"\n--- fault test: start #{self.starts}, failpoints [{armed}]\n".encode())
        self._log.flush()
        offset = self._log.tell()
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "worker.py",
            cwd=REPO,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )
        await self._until_ready(offset)

    async def _until_ready(self, offset: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_WITHIN
        while True:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                if READY_LINE.encode() in log.read():
                    return
            if not self.alive:
                raise RuntimeError(f"the worker exited at start:\n{self.log_tail()}")
            if loop.time() > deadline:
                raise RuntimeError(
                    f"no {READY_LINE!r} within {START_WITHIN:g}s:\n{self.log_tail()}"
                )
            await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL, like a crash or an OOM kill: no cleanup, no graceful shutdown."""
        assert self.alive, "the worker is not running"
        os.kill(self.pid, signal.SIGKILL)
        self.kills += 1

    async def wait_dead(self, within: float = 60.0) -> int:
        """Wait for the process to end; its return code (-9 after a SIGKILL)."""
        assert self._process is not None, "the worker was never started"
        try:
            code = await asyncio.wait_for(self._process.wait(), within)
        except TimeoutError:
            raise AssertionError(
                f"the worker (pid {self.pid}) still runs after {within:g}s:\n{self.log_tail()}"
            ) from None
        self._close_log()
        return code

    async def restart(self) -> None:
        """Start again, with no failpoint armed (killing the running one first, if any)."""
        if self.alive:
            await self.kill()
        if self._process is not None:
            await self.wait_dead()
        await self.start()

    async def stop(self) -> None:
        """Teardown: SIGTERM (graceful), SIGKILL if it does not end within STOP_GRACE."""
        if self.alive:
            assert self._process is not None
            self._process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._process.wait(), STOP_GRACE)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        self._close_log()

    def fired(self, point: str) -> bool:
        """Did the failpoint fire (it leaves a marker file before the process kills itself)?"""
        return (self.failpoints_dir / f"failpoint-{point}").exists()

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no worker log)"
        return "\n".join(text.splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def fault_temporal() -> AsyncIterator[TemporalServer]:
    key = secrets.token_bytes(32)
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=data_converter(key),
        ui=False,
        dev_server_extra_args=[
            "--dynamic-config-value",
            f'history.defaultWorkflowTaskTimeout="{LOST_WORKER_SECONDS}s"',
        ],
    )
    try:
        yield TemporalServer(env, key)
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
async def fault_stack(
    fault_temporal: TemporalServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FaultStack]:
    data_dir = tmp_path_factory.mktemp("keyturn-faults")
    settings = Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'keyturn.db'}",
        master_key=base64.b64encode(fault_temporal.master_key).decode(),
        admin_token=ADMIN_TOKEN,
        task_queue=f"keyturn-faults-{secrets.token_hex(4)}",
        sweep_interval_seconds=1.0,
        sweep_page_size=2,  # a sweep of a few credentials has pages to be interrupted between
        lost_worker_seconds=LOST_WORKER_SECONDS,
    )
    engine = make_engine(settings.resolved_database_url)
    app = create_app(settings, engine, fault_temporal.env.client)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://keyturn.test",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as api:
        yield FaultStack(settings, engine, fault_temporal.env.client, api, fault_temporal.address)
    engine.dispose()


_WORKER = pytest.StashKey[WorkerProcess]()


@pytest.fixture
async def worker(
    fault_stack: FaultStack, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[WorkerProcess]:
    """A worker subprocess for one test, not yet started: the test starts (and arms) it."""
    failpoints_dir = tmp_path / "failpoints"
    process = WorkerProcess(
        fault_stack.worker_environment(failpoints_dir), tmp_path / "worker.log", failpoints_dir
    )
    request.node.stash[_WORKER] = process
    try:
        yield process
    finally:
        try:
            await fault_stack.terminate_started()
        finally:
            await process.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, put the tail of the worker's log in the report."""
    report = yield
    process = item.stash.get(_WORKER, None)
    if report.failed and process is not None:
        report.sections.append((f"worker log tail ({process.log_path})", process.log_tail()))
    return report
