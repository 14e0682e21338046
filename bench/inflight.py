"""Worker memory with many operations in flight, held at a slow target.

    .venv/bin/python bench/inflight.py [--operations 1000] [--devices 500]
                                       [--workflow-cache-size N] [--main-queue]

The target is the in-process asyncssh peer (``bench/peer.py``) listening on one port per device;
each ``passwd`` session waits on an event before its first prompt, so every change that reaches
the peer stays open there. Each device gets ceil(operations / devices) credentials (2 by
default) and the policy keeps the default per-device cap of 2, so with more credentials than
that per device the cap holds the rest queued. The worker (``python worker.py``) and the API run
as processes of their own; the Temporal server is the temporal CLI's dev server.

Steps: register the devices and credentials; read the worker's memory at idle; request a change
of every credential; wait until the peer holds as many sessions as it will (all of them, or as
many as the worker takes on at once: the count stops growing); read the memory with everything
in flight; release the peer, wait for every operation to end, check each succeeded and that the
vault's secret of each credential is the peer's; read the memory after release. Memory is
/proc/<pid>/status VmRSS (resident now) and VmHWM (the peak resident since the process started).

The report (stdout, after cleanup) gives those figures for the worker, the API and the Temporal
server, and how long each phase took. Needs no root. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from temporalio.client import Client

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: bench/ is on sys.path, the repo root is not

from bench.harness import (  # noqa: E402
    RULES,
    BenchFailed,
    Figures,
    KeyturnProcesses,
    add_main_queue_option,
    bench_settings,
    check_vault,
    keyturn_processes,
    memory_kib,
    post_json,
    progress,
    register_credentials,
    register_policy,
    ssh_device,
    steps_queue_line,
    temporal_dev_server,
    temporal_server_pids,
)
from bench.peer import Peer  # noqa: E402
from keyturn.settings import Settings  # noqa: E402
from store.engine import make_engine  # noqa: E402
from store.models import Attempt  # noqa: E402
from store.passwords import generate_password  # noqa: E402
from store.seed import seed_shipped_templates  # noqa: E402
from workflows.contracts import WORKFLOW_NAME, OperationResult  # noqa: E402

DEFAULT_OPERATIONS = 1000
DEFAULT_DEVICES = 500
DEVICE_CAP = 2  # the policy's default per-device cap, kept
AT_ONCE = 10  # API requests the benchmark makes at once (registering, requesting)
# How long the number of held sessions must stay put to count as all the worker takes on.
SETTLED_SECONDS = 15.0
FILL_DEADLINE = 400.0  # the held sessions wait at most the policy's read timeout (600 s)
DONE_DEADLINE = 900.0
AIM_WORKER_MIB = 150.0

_T = TypeVar("_T")


async def at_most(limit: int, calls: Sequence[Awaitable[_T]]) -> list[_T]:
    """Await the calls (coroutines not started yet), ``limit`` at a time, results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[_T]) -> _T:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(call) for call in calls)))


@dataclass(frozen=True)
class Memory:
    """VmRSS and VmHWM in MiB of the worker, the API and the Temporal server at one moment."""

    worker: tuple[float, float]
    api: tuple[float, float]
    temporal: tuple[float, float]

    @staticmethod
    def read(processes: KeyturnProcesses, temporal: Sequence[int]) -> Memory:
        def mib(pids: Sequence[int]) -> tuple[float, float]:
            figures = [memory_kib(pid) for pid in pids]
            return sum(f[0] for f in figures) / 1024, sum(f[1] for f in figures) / 1024

        return Memory(mib([processes.worker.pid]), mib([processes.api.pid]), mib(temporal))

    def line(self, label: str) -> str:
        cells = "".join(
            f"{rss:10.1f}{hwm:10.1f}" for rss, hwm in (self.worker, self.api, self.temporal)
        )
        return f"{label:<34}{cells}"

    @staticmethod
    def header() -> str:
        names = "".join(f"{n:>20}" for n in ("worker", "API", "temporal server"))
        cells = "".join(f"{'VmRSS':>10}{'VmHWM':>10}" for _ in range(3))
        return f"{'memory (MiB)':<34}{names}\n{'':<34}{cells}"


async def register(
    api: httpx.AsyncClient, peer: Peer, ports: Sequence[int], per_device: int, operations: int
) -> dict[str, str]:
    """The devices (one per port) and ``operations`` credentials over them; user → credential."""
    policy_id = await register_policy(
        api, max_concurrent_operations=DEVICE_CAP, read_timeout_seconds=600.0
    )
    bodies = [ssh_device(port, peer.host_key_line) for port in ports]
    devices = await at_most(AT_ONCE, [post_json(api, "/v1/devices", body) for body in bodies])
    users = [f"kt_{secrets.token_hex(6)}" for _ in range(operations)]
    for user in users:
        peer.accounts[user] = generate_password(RULES)
    groups = [users[k : k + per_device] for k in range(0, operations, per_device)]

    async def on_device(device: dict[str, Any], group: list[str]) -> dict[str, str]:
        passwords = {user: peer.accounts[user] for user in group}
        return await register_credentials(api, device["id"], policy_id, passwords)

    made = await at_most(
        AT_ONCE,
        [on_device(device, group) for device, group in zip(devices, groups, strict=False)],
    )
    return {user: credential for part in made for user, credential in part.items()}


async def request_all(api: httpx.AsyncClient, credentials: dict[str, str]) -> list[str]:
    """A change of every credential; the workflow ids."""

    async def change(credential_id: str) -> str:
        response = await api.post(
            f"/v1/credentials/{credential_id}/operations", json={"kind": "change"}
        )
        if response.status_code != 202:
            raise BenchFailed(f"POST operations: {response.status_code} {response.text}")
        return str(response.json()["workflow_id"])

    return await at_most(AT_ONCE, [change(credential_id) for credential_id in credentials.values()])


async def until_held(peer: Peer, expected: int, processes: KeyturnProcesses) -> float:
    """Wait until the peer holds ``expected`` sessions, or their number has not moved for
    SETTLED_SECONDS (the worker takes on no more at once); the seconds it took."""
    started = time.monotonic()
    last, since = -1, started
    while peer.held < expected:
        now = time.monotonic()
        if peer.held != last:
            last, since = peer.held, now
        elif now - since >= SETTLED_SECONDS and peer.held > 0:
            break
        if now - started > FILL_DEADLINE:
            raise BenchFailed(f"the peer holds {peer.held} of {expected} after {FILL_DEADLINE:g} s")
        if processes.worker.poll() is not None:
            raise BenchFailed(f"the worker exited\n{processes.tail()}")
        await asyncio.sleep(0.2)  # polling a condition with a deadline
    return time.monotonic() - started


def running_attempts(engine: Engine) -> int:
    """Change attempts begun and not ended: the executor activities the worker is running."""
    with Session(engine) as session:
        rows = session.exec(
            select(Attempt.id).where(Attempt.step == "change", Attempt.outcome == "running")
        ).all()
    return len(rows)


def unsuccessful_attempts(engine: Engine) -> Counter[str]:
    """Attempts (change, verify, probe) that did not succeed, by step and outcome."""
    with Session(engine) as session:
        rows = session.exec(select(Attempt.step, Attempt.outcome)).all()
    return Counter(f"{step} {outcome}" for step, outcome in rows if outcome != "succeeded")


async def results(client: Client, workflow_ids: Sequence[str]) -> list[OperationResult]:
    async def one(workflow_id: str) -> OperationResult:
        handle = client.get_workflow_handle(workflow_id, result_type=OperationResult)
        result: OperationResult = await handle.result()
        return result

    async with asyncio.timeout(DONE_DEADLINE):
        return list(await asyncio.gather(*(one(w) for w in workflow_ids)))


async def run(args: argparse.Namespace) -> Figures:
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None
    loop.add_signal_handler(signal.SIGTERM, me.cancel)  # SIGINT: asyncio.run cancels us itself
    figures = Figures()
    out = figures.lines
    ops, devices = args.operations, args.devices
    per_device = math.ceil(ops / devices)
    expected = min(ops, devices * DEVICE_CAP)

    hold = asyncio.Event()
    peer = Peer({}, hold)
    key = secrets.token_bytes(32)
    timings: list[tuple[str, float]] = []
    progress(f"peer on {devices} ports; starting Temporal, the worker and the API")
    async with contextlib.AsyncExitStack() as stack:
        ports = await peer.listen(devices)
        stack.push_async_callback(peer.close)
        env = await stack.enter_async_context(temporal_dev_server(key))
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keyturn-bench-")))
        settings = bench_settings(
            data_dir,
            key,
            default_zone_on_main_queue=args.main_queue,
            workflow_cache_size=args.workflow_cache_size,
        )
        engine = make_engine(settings.resolved_database_url)
        stack.callback(engine.dispose)
        seed_shipped_templates(engine)
        api, processes = await stack.enter_async_context(keyturn_processes(settings, env))
        temporal = temporal_server_pids()
        stack.callback(hold.set)  # first thing on the way out: no session is left waiting

        progress(f"registering {devices} devices and {ops} credentials")
        began = time.monotonic()
        credentials = await register(api, peer, ports, per_device, ops)
        timings.append(("register devices and credentials", time.monotonic() - began))
        idle = Memory.read(processes, temporal)

        progress(f"requesting {ops} changes")
        began = time.monotonic()
        workflow_ids = await request_all(api, credentials)
        timings.append((f"request {ops} changes (202s)", time.monotonic() - began))
        progress(f"waiting for the peer to hold {expected} sessions")
        timings.append(
            ("then until the held count settles", await until_held(peer, expected, processes))
        )
        held = peer.held
        in_flight = Memory.read(processes, temporal)
        attempting = running_attempts(engine)
        running = (
            await env.client.count_workflows(
                f"ExecutionStatus = 'Running' AND WorkflowType = '{WORKFLOW_NAME}'"
            )
        ).count

        progress(f"the peer holds {held}; releasing")
        began = time.monotonic()
        hold.set()
        ended = await results(env.client, workflow_ids)
        timings.append(("release → every operation ended", time.monotonic() - began))
        after = Memory.read(processes, temporal)
        failed = Counter(
            f"{r.status} {r.error_type}: {r.error}" for r in ended if r.status != "succeeded"
        )
        if failed:
            # The memory figures still stand; say what failed beside them, and exit 1.
            figures.failure = (
                f"{failed.total()} of {ops} operations did not succeed: {dict(failed)}"
            )
        else:
            check_vault(engine, settings.master_key_bytes, credentials, peer)
        unsuccessful = unsuccessful_attempts(engine)

    out += [
        Memory.header(),
        idle.line("  idle (registered, nothing asked)"),
        in_flight.line(f"  {ops} in flight"),
        after.line("  after release, all ended"),
        "",
        f"in flight: {running} operation workflows running, {held} passwd sessions held at the "
        f"peer (of {expected} the device caps allow), {attempting} change attempts begun in the "
        "store; the others wait for a device slot or for the worker to take their activity",
        steps_queue_line(args.main_queue),
        f"the worker keeps up to {args.workflow_cache_size} running workflows in memory "
        "(KEYTURN_WORKFLOW_CACHE_SIZE)",
        f"peer: {peer.logins} logins, {peer.changes} changes, {peer.refused} refused, "
        f"at most {peer.most_held} held at once",
        *(f"{label:<40}{seconds:8.1f} s" for label, seconds in timings),
        "",
        f"{ops} operations over {devices} devices ({per_device} credentials each, cap "
        f"{DEVICE_CAP}), {os.cpu_count()} CPUs, load average at start {figures.load:.2f}",
        f"attempts that did not succeed (retried or final): {dict(unsuccessful) or 'none'}",
        f"worker VmRSS with {ops} in flight: {in_flight.worker[0]:.1f} MiB "
        f"(aim ≤ {AIM_WORKER_MIB:g}), "
        + (figures.failure if figures.failure else f"all {ops} succeeded"),
    ]
    return figures


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Worker memory with OPERATIONS changes in flight over DEVICES devices, held "
        "at a slow in-process SSH peer.",
    )
    parser.add_argument("--operations", type=int, default=DEFAULT_OPERATIONS)
    parser.add_argument("--devices", type=int, default=DEFAULT_DEVICES)
    parser.add_argument(
        "--workflow-cache-size",
        type=int,
        default=Settings.model_fields["workflow_cache_size"].default,
        metavar="N",
        help="running workflows the worker keeps in memory (KEYTURN_WORKFLOW_CACHE_SIZE; "
        "default: the setting's): what they weigh is the in-flight figure at the default "
        "less the one at a small N",
    )
    add_main_queue_option(parser)
    args = parser.parse_args(argv)
    # The setting's own bounds (its Field's ge and le): refused here rather than by the worker.
    bounds = {
        name: getattr(rule, name)
        for rule in Settings.model_fields["workflow_cache_size"].metadata
        for name in ("ge", "le")
        if hasattr(rule, name)
    }
    if not bounds["ge"] <= args.workflow_cache_size <= bounds["le"]:
        parser.error(f"--workflow-cache-size must be from {bounds['ge']} to {bounds['le']}")
    if min(args.operations, args.devices) < 1:
        parser.error("--operations and --devices must be at least 1")
    if args.devices > args.operations:
        parser.error("--devices must be at most --operations (every device has a credential)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    started = time.perf_counter()
    try:
        figures = asyncio.run(run(args))
    except BenchFailed as exc:
        progress(f"failed: {exc} (peer released; worker, API and Temporal stopped)")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:  # Ctrl-C, or SIGTERM
        progress("interrupted: peer released; worker, API and Temporal stopped")
        return 130 if isinstance(exc, KeyboardInterrupt) else 143
    seconds = time.perf_counter() - started
    progress(f"wall time {seconds:.1f} s")
    print("\n".join([*figures.lines, f"wall time {seconds:.1f} s"]), flush=True)
    if figures.failure:
        progress(f"failed: {figures.failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
