"""What the benchmarks share: lanes of changes, the Keyturn client path, CPU and history figures,
and the stack (Temporal dev server, store, worker and API, in process or as their own processes).

Nothing here asserts beyond a change succeeding: a benchmark that hits ``BenchFailed`` stops,
because figures of a run with failures would mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: bench/ is on sys.path, the repo root is not

from bench.peer import Peer  # noqa: E402
from keyturn.codec import data_converter  # noqa: E402
from keyturn.settings import Settings  # noqa: E402
from starter.app import create_app  # noqa: E402
from starter.devstack import temporal_cli  # noqa: E402
from store.models import Attempt, Operation  # noqa: E402
from store.passwords import PasswordRules  # noqa: E402
from store.vault import Vault  # noqa: E402
from worker import build_workers, run_workers  # noqa: E402
from workflows.contracts import (  # noqa: E402
    SEARCH_ATTRIBUTES,
    WORKFLOW_NAME,
    OperationResult,
)

# One set of password rules for every path: the Keyturn policy below and the raw generator.
RULES = PasswordRules(length=24, lowercase=True, uppercase=True, digits=True, symbols=True)
POLICY: dict[str, Any] = {
    "length": RULES.length,
    "lowercase": RULES.lowercase,
    "uppercase": RULES.uppercase,
    "digits": RULES.digits,
    "symbols": RULES.symbols,
    "exclude": RULES.exclude,
    # Retries should not happen here; if one does, it should cost little and is reported.
    "max_attempts": 3,
    "retry_interval_seconds": 0.2,
    "backoff": 1.0,
    # The raw path has no per-device cap; lift Keyturn's (default 2) above any --concurrency so
    # the figures compare orchestration, not a deliberate queue.
    "max_concurrent_operations": 1000,
}
WORKER_STOP_SECONDS = 5.0
# The change templates a benchmark may run: the user's own passwd, or chpasswd through one sudo
# account (the credentials' auth credential).
PASSWD = "ssh/linux-passwd"
CHPASSWD = "ssh/linux-chpasswd"
TEMPLATES = (PASSWD, CHPASSWD)

_S = TypeVar("_S")


class BenchFailed(RuntimeError):
    """A change did not succeed: the figures would mean nothing, so the run stops."""


def progress(message: str) -> None:
    print(f"[{Path(sys.argv[0]).stem}] {message}", file=sys.stderr, flush=True)


# -- scheduling ---------------------------------------------------------------------------------


async def run_phase(
    changes: int, users: Sequence[str], concurrency: int, change: Callable[[str], Awaitable[_S]]
) -> tuple[float, list[_S]]:
    """Run ``changes`` changes in ``concurrency`` lanes; lane k owns users k, k+C, k+2C, …

    A user belongs to one lane, so it never has two changes in flight. Returns (seconds, samples).
    """
    lanes = [list(users[k::concurrency]) for k in range(concurrency)]
    samples: list[_S] = []

    async def lane(k: int) -> None:
        mine = lanes[k]
        for j, _ in enumerate(range(k, changes, concurrency)):
            samples.append(await change(mine[j % len(mine)]))

    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            for k in range(min(concurrency, changes)):
                group.create_task(lane(k))
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None  # the first failure says why; the rest were cancelled
    return time.perf_counter() - started, samples


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` near-equal sizes, larger first, empty parts dropped."""
    sizes = [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
    return [size for size in sizes if size]


# -- Keyturn path -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyturnSample:
    operation_id: str
    workflow_id: str
    requested: datetime  # wall clock, to line up with the store's timestamps
    done: datetime
    post: float  # seconds for POST /operations (202)
    total: float  # seconds from POST to the workflow result


class KeyturnRotator:
    def __init__(self, api: httpx.AsyncClient, client: Client, credentials: dict[str, str]):
        self._api = api
        self._client = client
        self.credentials = credentials  # user → credential id

    async def change(self, user: str) -> KeyturnSample:
        credential_id = self.credentials[user]
        requested = datetime.now(UTC)
        started = time.perf_counter()
        response = await self._api.post(
            f"/v1/credentials/{credential_id}/operations", json={"kind": "change"}
        )
        posted = time.perf_counter()
        if response.status_code != 202:
            raise BenchFailed(f"POST operations for {user}: {response.status_code} {response.text}")
        accepted = response.json()
        handle = self._client.get_workflow_handle(
            accepted["workflow_id"], result_type=OperationResult
        )
        result = await handle.result()
        finished = time.perf_counter()
        if result.status != "succeeded":
            raise BenchFailed(
                f"operation {result.operation_id} for {user} {result.status}: "
                f"{result.resolution}; {result.error_type}: {result.error}"
            )
        return KeyturnSample(
            accepted["operation_id"],
            accepted["workflow_id"],
            requested,
            datetime.now(UTC),
            posted - started,
            finished - started,
        )


# The table a statement is about: the first one it names after its verb.
_TABLE = re.compile(
    r"^\s*(?:SELECT\b.*?\bFROM|INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+(\w+)", re.I | re.S
)


class StoreCounter:
    """Counts SQL statements and transactions on the store engine (all threads), by verb and
    by table and verb ("audithead UPDATE")."""

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.tables: Counter[str] = Counter()
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
        table = _TABLE.match(statement)
        with self._lock:
            self.counts[verb] += 1
            if table:
                self.tables[f"{table.group(1)} {verb}"] += 1

    def _commit(self, _conn: Any) -> None:
        with self._lock:
            self.counts["COMMIT"] += 1

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)

    def tables_snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.tables)


# -- CPU accounting (Linux /proc) ---------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def _process_cpu(pid: int) -> float:
    """CPU seconds of a process, all its threads."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()  # fields[0] is field 3 (state) of proc(5)
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / TICK


def _children(name: str) -> list[int]:
    """Our direct child processes whose command name starts with ``name``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        if ppid == os.getpid() and comm.startswith(name):
            found.append(int(entry.name))
    return found


def _machine() -> tuple[float, float]:
    """CPU seconds all CPUs spent busy, and stolen by the hypervisor, since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq) / TICK, steal / TICK


@dataclass(frozen=True)
class CpuUse:
    own: float
    temporal: float
    machine: float
    steal: float  # time a virtual machine's CPUs were runnable but the host ran something else

    def line(self, label: str, changes: int, seconds: float) -> str:
        # The rest is the target's work: sshd and everything it forks per connection (bash,
        # passwd, unix_chkpwd), some of it reaped by init, hence only countable as a remainder.
        # Other processes would land there too: compare the two lines.
        rest = self.machine - self.own - self.temporal
        available = seconds * (os.cpu_count() or 1)
        busy, stolen = self.machine / available, self.steal / available
        per = [self.own, self.temporal, rest, self.machine]
        cells = "".join(
            f"{v / changes * 1000:>{w}.1f}" for v, w in zip(per, CPU_WIDTHS, strict=True)
        )
        return f"{label:<28}{cells}   {busy:.0%} of all CPUs busy, {stolen:.0%} stolen"

    def __add__(self, other: CpuUse) -> CpuUse:
        return CpuUse(
            self.own + other.own,
            self.temporal + other.temporal,
            self.machine + other.machine,
            self.steal + other.steal,
        )

    @staticmethod
    def header() -> str:
        cells = "".join(f"{t:>{w}}" for t, w in zip(CPU_COLUMNS, CPU_WIDTHS, strict=True))
        return f"{'CPU per change (ms)':<28}{cells}"


CPU_COLUMNS = ("this process", "temporal server", "sshd, passwd, rest", "whole machine")
CPU_WIDTHS = tuple(len(t) + 2 for t in CPU_COLUMNS)


class CpuMeter:
    """CPU used from construction to ``used()``: this process, the Temporal server, all CPUs."""

    def __init__(self) -> None:
        self._temporal = _children("temporal")
        self._start = self._read()

    def _read(self) -> CpuUse:
        machine, steal = _machine()
        return CpuUse(
            own=_process_cpu(os.getpid()),
            temporal=sum(_process_cpu(pid) for pid in self._temporal),
            machine=machine,
            steal=steal,
        )

    def used(self) -> CpuUse:
        end, start = self._read(), self._start
        return CpuUse(
            end.own - start.own,
            end.temporal - start.temporal,
            end.machine - start.machine,
            end.steal - start.steal,
        )


# -- report -------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f}"


def dist(values: Sequence[float]) -> str:
    """mean / p50 / p95 in milliseconds."""
    if not values:
        return "      -"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{ms(statistics.fmean(ordered))} {ms(statistics.median(ordered))} {ms(p95)}"


def row(label: str, values: Sequence[float]) -> str:
    return f"{label:<51}{dist(values)}"


HEADER = f"{'':<51}{'mean':>7} {'p50':>7} {'p95':>7}"


def _utc(value: datetime) -> datetime:
    # SQLite hands datetimes back naive; the store writes them in UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def keyturn_timeline(engine: Engine, samples: Sequence[KeyturnSample]) -> list[str]:
    """Where one operation's wall time goes, from the client's clock and the store's rows."""
    segments: dict[str, list[float]] = defaultdict(list)
    retries = 0
    with Session(engine) as session:
        for sample in samples:
            operation = session.get(Operation, sample.operation_id)
            assert operation is not None and operation.finished_at is not None
            attempts = session.exec(
                select(Attempt)
                .where(Attempt.operation_id == sample.operation_id)
                .order_by(col(Attempt.started_at))
            ).all()
            retries += sum(1 for a in attempts if a.number > 1)
            change = [a for a in attempts if a.step == "change"][-1]
            verify = [a for a in attempts if a.step == "verify"][-1]
            assert change.finished_at is not None and verify.finished_at is not None
            points = [
                sample.requested,
                _utc(change.started_at),
                _utc(change.finished_at),
                _utc(verify.started_at),
                _utc(verify.finished_at),
                _utc(operation.finished_at),
                sample.done,
            ]
            gaps = [(b - a).total_seconds() for a, b in zip(points, points[1:], strict=False)]
            for name, gap in zip(TIMELINE, gaps, strict=True):
                segments[name].append(gap)
            segments["post"].append(sample.post)
            segments["total"].append(sample.total)
            segments["orchestration"].append(
                sample.total
                - (change.finished_at - change.started_at).total_seconds()
                - (verify.finished_at - verify.started_at).total_seconds()
            )
    lines = [
        "keyturn, per operation (ms)" + HEADER[len("keyturn, per operation (ms)") :],
        row("  POST → workflow result (client wall)", segments["total"]),
    ]
    lines += [row(f"    {label}", segments[name]) for name, label in TIMELINE.items()]
    lines += [
        row("  of which POST /operations returned 202 after", segments["post"]),
        row("  all but the change and verify attempts", segments["orchestration"]),
        f"  retried attempts: {retries}",
    ]
    return lines


TIMELINE = {
    "to_change": "POST, start workflow, prepare, dispatch change",
    "change": "change attempt (ssh login + change + 2 writes)",
    "to_verify": "change reported → verify attempt starts",
    "verify": "verify attempt (ssh login + id -un + 2 writes)",
    "to_commit": "verify reported → commit done",
    "to_result": "commit done → result at the client",
}


async def temporal_timeline(client: Client, samples: Sequence[KeyturnSample]) -> list[str]:
    """Per operation, from each workflow's history: events, workflow tasks, activity latencies."""
    wanted = {s.operation_id for s in samples}
    runs: list[tuple[str, str]] = []
    async for execution in client.list_workflows(f"WorkflowType = '{WORKFLOW_NAME}'"):
        memo = await execution.memo()
        if memo.get("operation_id") in wanted:
            runs.append((execution.id, execution.run_id))
    if len(runs) != len(wanted):
        return [f"temporal history: found {len(runs)} of {len(wanted)} runs; skipped"]
    events = 0
    kinds: Counter[str] = Counter()
    wft_wait: list[float] = []
    wft_run: list[float] = []
    wft_count = 0
    activity_wait: dict[str, list[float]] = defaultdict(list)
    activity_run: dict[str, list[float]] = defaultdict(list)
    workflow_wall: list[float] = []
    for workflow_id, run_id in runs:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        events += len(history.events)
        kinds.update(
            EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in history.events
        )
        at: dict[int, datetime] = {}
        names: dict[int, str] = {}
        first = last = None
        for e in history.events:
            when = e.event_time.ToDatetime(tzinfo=UTC)
            first = first or when
            last = when
            at[e.event_id] = when
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                scheduled = e.workflow_task_started_event_attributes.scheduled_event_id
                wft_wait.append((when - at[scheduled]).total_seconds())
                wft_count += 1
            elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                started = e.workflow_task_completed_event_attributes.started_event_id
                wft_run.append((when - at[started]).total_seconds())
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                names[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                scheduled = e.activity_task_started_event_attributes.scheduled_event_id
                activity_wait[names[scheduled]].append((when - at[scheduled]).total_seconds())
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                attributes = e.activity_task_completed_event_attributes
                name = names[attributes.scheduled_event_id]
                activity_run[name].append((when - at[attributes.started_event_id]).total_seconds())
        if first and last:
            workflow_wall.append((last - first).total_seconds())
    n = len(runs)
    activities = sum(len(v) for v in activity_run.values())
    lines = [
        f"temporal, per operation: {events / n:.1f} history events, {wft_count / n:.1f} workflow "
        f"tasks, {activities / n:.1f} activities",
        "  events: "
        + ", ".join(f"{kind.lower()} {count / n:.1f}" for kind, count in kinds.items()),
        "  (ms)" + HEADER[len("  (ms)") :],
        row("  workflow started → completed (history)", workflow_wall),
        row("  workflow task: scheduled → picked up", wft_wait),
        row("  workflow task: picked up → completed", wft_run),
    ]
    for name in activity_run:
        lines.append(row(f"  {name}: scheduled → started", activity_wait[name]))
        lines.append(row(f"  {name}: started → completed", activity_run[name]))
    return lines


# -- registering what to change -----------------------------------------------------------------


@dataclass
class Figures:
    lines: list[str] = field(default_factory=list)
    load: float = field(default_factory=lambda: os.getloadavg()[0])
    failure: str = ""  # set when the figures are printed though some operations failed


async def post_json(api: httpx.AsyncClient, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
    response = await api.post(path, json=dict(body))
    if response.status_code != 201:
        raise BenchFailed(f"POST {path}: {response.status_code} {response.text}")
    created: dict[str, Any] = response.json()
    return created


def ssh_device(port: int, host_key_line: str, address: str = "127.0.0.1") -> dict[str, Any]:
    """The body of POST /v1/devices for an SSH target, its host key pinned."""
    return {
        "name": f"bench-{secrets.token_hex(6)}",
        "address": address,
        "port": port,
        "executor": "ssh",
        "host_keys": [host_key_line],
    }


async def register_policy(api: httpx.AsyncClient, **overrides: Any) -> str:
    policy = {"name": f"bench-{secrets.token_hex(4)}", **POLICY, **overrides}
    return str((await post_json(api, "/v1/policies", policy))["id"])


async def register_credentials(
    api: httpx.AsyncClient,
    device_id: str,
    policy_id: str,
    passwords: Mapping[str, str],
    auth_credential_id: str | None = None,
) -> dict[str, str]:
    """One credential per user on the device; user → credential id. With an auth credential the
    change runs through that account (the store then picks the device's "as admin" template)."""
    credentials = {}
    for user, password in passwords.items():
        body: dict[str, Any] = {
            "device_id": device_id,
            "username": user,
            "password": password,
            "policy_id": policy_id,
        }
        if auth_credential_id is not None:
            body["auth_credential_id"] = auth_credential_id
        credentials[user] = str((await post_json(api, "/v1/credentials", body))["id"])
    return credentials


async def expect_template(api: httpx.AsyncClient, credential_id: str, template: str) -> None:
    """The store picks a credential's change template; make sure it picked the one asked for."""
    response = await api.get(f"/v1/credentials/{credential_id}")
    chosen = response.json().get("change_template") if response.status_code == 200 else None
    if chosen != template:
        raise BenchFailed(f"the credentials change with {chosen!r}, not {template!r}")


# -- checking the outcome -----------------------------------------------------------------------


def check_vault(
    engine: Engine, master_key: bytes, credentials: Mapping[str, str], peer: Peer
) -> None:
    """The vault's current secret of every credential is the peer's password for it."""
    vault = Vault(master_key)
    with Session(engine) as session:
        for user, credential_id in credentials.items():
            version = Vault.current(session, credential_id)
            if version is None or vault.reveal(version) != peer.accounts[user]:
                raise BenchFailed(f"the vault's current secret of {user} is not the peer's")


# -- the stack ----------------------------------------------------------------------------------


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Point fd 1 at stderr while a child process is spawned, so stdout carries only the report."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.asynccontextmanager
async def temporal_dev_server(key: bytes) -> AsyncIterator[WorkflowEnvironment]:
    """The in-memory dev server of the temporal CLI (a child process named ``temporal``)."""
    with stdout_to_stderr():  # the dev server prints a banner on its stdout
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal_cli(),
            search_attributes=SEARCH_ATTRIBUTES,
            data_converter=data_converter(key),
            ui=False,
        )
    try:
        yield env
    finally:
        await env.shutdown()


def add_main_queue_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--main-queue",
        action="store_true",
        help="the default zone's executor steps on the main task queue "
        "(KEYTURN_DEFAULT_ZONE_ON_MAIN_QUEUE)",
    )


def steps_queue_line(main_queue: bool) -> str:
    where = "the main task queue" if main_queue else "the default zone's task queue"
    return f"executor steps on {where}"


def bench_settings(data_dir: Path, key: bytes, **overrides: Any) -> Settings:
    """A SQLite store in ``data_dir``, a fresh admin token and a task queue of this run's own."""
    return Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'keyturn.db'}",
        master_key=base64.b64encode(key).decode(),
        admin_token=secrets.token_urlsafe(16),
        task_queue=f"keyturn-bench-{secrets.token_hex(4)}",
        **overrides,
    )


@contextlib.asynccontextmanager
async def keyturn_in_process(
    settings: Settings, env: WorkflowEnvironment, engine: Engine
) -> AsyncIterator[httpx.AsyncClient]:
    """The worker and the HTTP API in this process; the worker is shut down gracefully on exit."""
    stop = asyncio.Event()
    workers = asyncio.create_task(run_workers(build_workers(env.client, settings, engine), stop))
    try:
        app = create_app(settings, engine, env.client)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://keyturn.bench",
            headers={"Authorization": f"Bearer {settings.admin_token}"},
        ) as api:
            yield api
    finally:
        stop.set()
        # Graceful, but bounded: after Ctrl-C in a terminal the dev server got the SIGINT too and
        # is gone, and the worker would retry reporting its last activities for a while.
        try:
            async with asyncio.timeout(WORKER_STOP_SECONDS):
                await asyncio.shield(workers)
        except TimeoutError:
            workers.cancel()
            with contextlib.suppress(BaseException):
                await workers


PROCESS_START_DEADLINE = 60.0
PROCESS_STOP_SECONDS = 15.0
WORKER_READY = "worker serving"  # the line worker.main logs once its workers are built


@dataclass
class KeyturnProcesses:
    """``python worker.py`` and ``keyturn api`` as processes of their own, so /proc gives each its
    own CPU time and memory. Their logs go to files in the data dir."""

    worker: subprocess.Popen[bytes]
    api: subprocess.Popen[bytes]
    worker_log: Path
    api_log: Path

    def tail(self) -> str:
        lines = []
        for name, path in (("worker", self.worker_log), ("api", self.api_log)):
            text = path.read_text(errors="replace").splitlines()[-15:] if path.exists() else []
            lines += [f"--- {name} log (last lines)", *text]
        return "\n".join(lines)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _process_env(settings: Settings, temporal_address: str, api_port: int) -> dict[str, str]:
    # Nothing of the caller's Keyturn or Temporal configuration may leak into the processes.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYTURN_", "TEMPORAL_"))}
    assert settings.database_url is not None and settings.master_key is not None
    assert settings.admin_token is not None
    env.update(
        {
            "KEYTURN_DATA_DIR": str(settings.data_dir),
            "KEYTURN_DATABASE_URL": settings.database_url,
            "KEYTURN_MASTER_KEY": settings.master_key,
            "KEYTURN_ADMIN_TOKEN": settings.admin_token,
            "KEYTURN_TASK_QUEUE": settings.task_queue,
            "KEYTURN_API_PORT": str(api_port),
            "KEYTURN_DEFAULT_ZONE_ON_MAIN_QUEUE": str(settings.default_zone_on_main_queue).lower(),
            "KEYTURN_WORKFLOW_CACHE_SIZE": str(settings.workflow_cache_size),
            "TEMPORAL_ADDRESS": temporal_address,
            "TEMPORAL_NAMESPACE": "default",
            "PYTHONPATH": str(REPO),
        }
    )
    return env


def _spawn(argv: list[str], env: Mapping[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    # A session of its own: Ctrl-C in the terminal reaches only the benchmark, which stops them.
    return subprocess.Popen(
        argv, cwd=REPO, env=dict(env), stdout=log, stderr=log, start_new_session=True
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()  # the worker shuts down gracefully on SIGTERM
        try:
            process.wait(timeout=PROCESS_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.asynccontextmanager
async def keyturn_processes(
    settings: Settings, env: WorkflowEnvironment
) -> AsyncIterator[tuple[httpx.AsyncClient, KeyturnProcesses]]:
    """Start the worker and the API as processes on ``settings`` (whose store must exist: make
    its engine first, it migrates), wait until both serve, stop both on exit."""
    port = _free_port()
    child_env = _process_env(settings, env.client.service_client.config.target_host, port)
    worker_log = settings.data_dir / "worker.log"
    api_log = settings.data_dir / "api.log"
    with worker_log.open("ab") as wlog, api_log.open("ab") as alog:
        worker = _spawn([sys.executable, str(REPO / "worker.py")], child_env, wlog)
        api = _spawn([sys.executable, "-m", "starter.cli", "api"], child_env, alog)
    processes = KeyturnProcesses(worker, api, worker_log, api_log)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {settings.admin_token}"},
            timeout=120.0,
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=50),
        ) as api_client:
            await _until_serving(processes, api_client)
            yield api_client, processes
    finally:
        for process in (api, worker):
            await asyncio.to_thread(_stop, process)


async def _until_serving(processes: KeyturnProcesses, api: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + PROCESS_START_DEADLINE
    api_up = worker_up = False
    while not (api_up and worker_up):
        for name, process in (("worker", processes.worker), ("api", processes.api)):
            if process.poll() is not None:
                raise BenchFailed(
                    f"the {name} exited with {process.returncode}\n{processes.tail()}"
                )
        if time.monotonic() > deadline:
            raise BenchFailed(f"worker or API not serving in time\n{processes.tail()}")
        if not api_up:
            with contextlib.suppress(httpx.TransportError):
                api_up = (await api.get("/healthz")).status_code == 200
        if not worker_up and processes.worker_log.exists():
            worker_up = WORKER_READY in processes.worker_log.read_text(errors="replace")
        await asyncio.sleep(0.1)  # polling a condition with a deadline


# -- per-process figures (/proc) ----------------------------------------------------------------


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, from /proc/<pid>/status; (0, 0) once it is gone."""
    values = {"VmRSS": 0, "VmHWM": 0}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0, 0
    for line in lines:
        name, _, rest = line.partition(":")
        if name in values:
            values[name] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def temporal_server_pids() -> list[int]:
    """The dev server: our child process named ``temporal``."""
    return _children("temporal")


class ProcessMeter:
    """CPU seconds per named group of processes from construction to ``used()``, plus the whole
    machine's busy and stolen time (keys ``machine`` and ``steal``)."""

    def __init__(self, groups: Mapping[str, Sequence[int]]) -> None:
        self._groups = {name: list(pids) for name, pids in groups.items()}
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        figures = {
            name: sum(_process_cpu(pid) for pid in pids) for name, pids in self._groups.items()
        }
        figures["machine"], figures["steal"] = _machine()
        return figures

    def used(self) -> dict[str, float]:
        end = self._read()
        return {name: end[name] - self._start[name] for name in end}


# -- profiling a process (py-spy) ---------------------------------------------------------------

PROFILE_RATE = 100  # samples per second
_LINE_NUMBER = re.compile(r":\d+\)$")


@contextlib.contextmanager
def profiling(pid: int, output: Path | None) -> Iterator[None]:
    """Sample ``pid`` with py-spy while the block runs, into ``output`` (collapsed stacks);
    nothing when ``output`` is None. Non-blocking: the process is not paused to be sampled."""
    if output is None:
        yield
        return
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        raise BenchFailed(f"{py_spy} is missing: pip install -e '.[dev]'")
    argv = [str(py_spy), "record", "--pid", str(pid), "--rate", str(PROFILE_RATE)]
    # --gil: only the thread holding the GIL is sampled, so threads waiting (the store's pool,
    # the event loop in epoll) do not count as busy.
    argv += ["--format", "raw", "--output", str(output), "--nonblocking", "--gil"]
    recorder = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its output as it stops
        try:
            _, errors = recorder.communicate(timeout=PROCESS_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            recorder.kill()
            _, errors = recorder.communicate()
        if not output.exists():
            raise BenchFailed(f"py-spy wrote no profile: {errors.decode(errors='replace')[-500:]}")


def _own_code(frame: str) -> bool:
    """Is this frame in Keyturn's own code (a package at the repository's top)?"""
    where = frame[frame.rfind("(") + 1 :]
    return where.split("/", 1)[0] in OWN_PACKAGES or where.startswith("worker.py")


OWN_PACKAGES = {p.name for p in REPO.iterdir() if (p / "__init__.py").exists()} - {"tests", "bench"}


def top_frames(profile: Path, count: int = 15) -> list[str]:
    """The functions that took most samples of a py-spy profile (collapsed stacks): by own time
    (the sampled frame itself), and Keyturn's own functions by total time (anywhere on the
    stack, so what they called counts too)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in profile.read_text(errors="replace").splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frames = [_LINE_NUMBER.sub(")", frame) for frame in stack.split(";")]
        n = int(number)
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    if not samples:
        return ["profile: no samples"]
    lines = [f"profile of the worker: {samples} samples at {PROFILE_RATE}/s, top by own time"]
    lines += [f"  {n / samples:6.1%}  {frame}" for frame, n in own.most_common(count)]
    lines.append("Keyturn's own functions by total time (the function and what it called)")
    ours = [
        (frame, n)
        for frame, n in total.most_common()
        if _own_code(frame) and not frame.startswith("<module>")
    ][:count]
    lines += [f"  {n / samples:6.1%}  {frame}" for frame, n in ours]
    return lines
