"""Password-rotation throughput: Keyturn against a plain asyncssh script, on a local OpenSSH sshd.

    sudo .venv/bin/python bench/rotate.py [--changes N] [--users M] [--concurrency C]

Run from the repository root, as root (it creates throwaway Linux users and starts sshd). It is
self-contained: its own sshd on a loopback port, 2 × M throwaway users, an in-memory Temporal
dev server, a SQLite store in a temp dir, a Keyturn worker and the HTTP starter in process.
Everything is removed at the end, also on errors and Ctrl-C.

Both paths do the same work per change, the change protocol's change and verify steps:

- raw: log in over SSH as the user with its current password, run ``passwd`` in a PTY answering
  the current/new/retype prompts (as ``executors/templates/ssh/linux-passwd.tpl`` does), then log
  in again with the new password and run ``id -un`` (as ``ssh/verify-login.tpl`` does).
- keyturn: ``POST /v1/credentials/{id}/operations {"kind": "change"}`` through the in-process API,
  then wait for the operation's workflow result (prepare → change → verify → commit).

The same N changes are spread over M users by C lanes; lane k owns users k, k+C, … and changes
them round-robin, so a user never has two changes in flight (Keyturn allows one operation per
credential). Each path has its own M users, so the whole stack is up for both: warm-up of both
paths (one change per user by default), then R alternating rounds of N/R changes per path (raw,
Keyturn, raw, Keyturn, …), so both see the same drift in the machine's load; a path's time is the
sum of its rounds. At the end the vault's current secret of every Keyturn user is checked to log
in, independently of Keyturn.

The report (stdout, after cleanup) breaks Keyturn's time down per operation from the client's
clock, the store's Attempt rows and the workflow histories, gives the raw path's per-step times,
the store statements per operation and the CPU per change of this process, the Temporal server,
the rest (sshd, passwd) and the whole machine. Its last line is ``ratio keyturn/raw: X.XX``, the
ratio of changes per second. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import re
import secrets
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
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

from keyturn.codec import data_converter  # noqa: E402
from keyturn.settings import Settings  # noqa: E402
from starter.app import create_app  # noqa: E402
from starter.devstack import temporal_cli  # noqa: E402
from store.engine import make_engine  # noqa: E402
from store.models import Attempt, Operation  # noqa: E402
from store.passwords import PasswordRules, generate_password  # noqa: E402
from store.seed import seed_shipped_templates  # noqa: E402
from store.vault import Vault  # noqa: E402
from tests.servers.sshd import SSHD, Sshd, Users  # noqa: E402
from worker import build_workers, run_workers  # noqa: E402
from workflows.contracts import (  # noqa: E402
    SEARCH_ATTRIBUTES,  # noqa: E402
    WORKFLOW_NAME,
    OperationResult,
)

DEFAULT_CHANGES = 60
DEFAULT_USERS = 6
DEFAULT_CONCURRENCY = 3
DEFAULT_ROUNDS = 3

# One set of password rules for both paths: the Keyturn policy below and the raw generator.
RULES = PasswordRules(length=24, lowercase=True, uppercase=True, digits=True, symbols=True)
POLICY = {
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
STEP_TIMEOUT = 30.0  # per raw step (connect + run); generous, a healthy step takes milliseconds

# What the shipped ssh templates do, so the raw path does the same work on the target.
PTY_TERM = "dumb"
PTY_SIZE = (200, 50)
SSH_ENV = {"LC_ALL": "C"}
CURRENT_PROMPT = re.compile(r"(?i)current password:|\(current\) unix password:")
NEW_PROMPT = re.compile(r"(?i)new password:")
RETYPE_PROMPT = re.compile(r"(?i)retype new password:|re-enter new password:")
UPDATED = re.compile(
    r"(?i)password updated successfully|all authentication tokens updated successfully"
)
REFUSED = re.compile(
    r"(?i)authentication token manipulation error|password unchanged|bad password|do not match"
)

_S = TypeVar("_S")


class BenchFailed(RuntimeError):
    """A change did not succeed: the figures would mean nothing, so the run stops."""


def progress(message: str) -> None:
    print(f"[rotate] {message}", file=sys.stderr, flush=True)


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


# -- raw asyncssh path --------------------------------------------------------------------------


@dataclass(frozen=True)
class RawSample:
    change: float  # seconds: connect with the current password + passwd in a PTY + close
    verify: float  # seconds: connect with the new password + id -un + close

    @property
    def total(self) -> float:
        return self.change + self.verify


KnownHosts = tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]]


class _Expect:
    """Just enough expect: wait for a prompt in a PTY's output, refuse on a rejection message."""

    def __init__(self, process: asyncssh.SSHClientProcess[str], secrets: tuple[str, ...]) -> None:
        self._process = process
        self._secrets = secrets
        self._buffer = ""

    async def expect(self, pattern: re.Pattern[str]) -> None:
        while True:
            if REFUSED.search(self._buffer):
                raise BenchFailed(f"passwd refused the change: {self._tail()!r}")
            match = pattern.search(self._buffer)
            if match:
                self._buffer = self._buffer[match.end() :]
                return
            data = await self._process.stdout.read(65536)
            if not data:
                raise BenchFailed(f"passwd ended before {pattern.pattern!r}: {self._tail()!r}")
            self._buffer += data

    async def send(self, text: str) -> None:
        self._process.stdin.write(text + "\n")
        await self._process.stdin.drain()

    def _tail(self) -> str:
        text = self._buffer
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[-300:]


class RawRotator:
    """The same change and verify as Keyturn's ssh templates, straight over asyncssh."""

    def __init__(self, port: int, host_key_line: str, passwords: dict[str, str]) -> None:
        self._port = port
        self._known_hosts: KnownHosts = ([asyncssh.import_public_key(host_key_line)], [], [])
        self.passwords = passwords  # user → current password, kept up to date

    def _login(self, user: str, password: str) -> Any:
        # The options Keyturn's ssh executor uses: pinned host key, only this password.
        return asyncssh.connect(
            "127.0.0.1",
            port=self._port,
            username=user,
            password=password,
            known_hosts=self._known_hosts,
            client_keys=None,
            agent_path=None,
            config=None,
            preferred_auth="password,keyboard-interactive",
            connect_timeout=STEP_TIMEOUT,
        )

    async def change(self, user: str) -> RawSample:
        old, new = self.passwords[user], generate_password(RULES)
        started = time.perf_counter()
        async with asyncio.timeout(STEP_TIMEOUT), self._login(user, old) as conn:
            process = await conn.create_process(
                "passwd",
                stderr=asyncssh.STDOUT,
                encoding="utf-8",
                errors="replace",
                request_pty=True,
                term_type=PTY_TERM,
                term_size=PTY_SIZE,
                env=SSH_ENV,
            )
            async with process:
                pty = _Expect(process, (old, new))
                await pty.expect(CURRENT_PROMPT)
                await pty.send(old)
                await pty.expect(NEW_PROMPT)
                await pty.send(new)
                await pty.expect(RETYPE_PROMPT)
                await pty.send(new)
                await pty.expect(UPDATED)
                completed = await process.wait()
            if completed.exit_status != 0:
                raise BenchFailed(f"passwd for {user} exited with {completed.exit_status}")
        self.passwords[user] = new
        changed = time.perf_counter()
        async with asyncio.timeout(STEP_TIMEOUT), self._login(user, new) as conn:
            result = await conn.run("id -un", env=SSH_ENV)
        if result.exit_status != 0 or str(result.stdout).strip() != user:
            raise BenchFailed(f"verify of {user}: id -un said {result.stdout!r}")
        return RawSample(changed - started, time.perf_counter() - changed)


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


class StoreCounter:
    """Counts SQL statements and transactions on the store engine (all threads)."""

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
        with self._lock:
            self.counts[verb] += 1

    def _commit(self, _conn: Any) -> None:
        with self._lock:
            self.counts["COMMIT"] += 1

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)


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
    "change": "change attempt (ssh login + passwd + 2 writes)",
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
    wft_wait: list[float] = []
    wft_run: list[float] = []
    wft_count = 0
    activity_wait: dict[str, list[float]] = defaultdict(list)
    activity_run: dict[str, list[float]] = defaultdict(list)
    workflow_wall: list[float] = []
    for workflow_id, run_id in runs:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        events += len(history.events)
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
        "  (ms)" + HEADER[len("  (ms)") :],
        row("  workflow started → completed (history)", workflow_wall),
        row("  workflow task: scheduled → picked up", wft_wait),
        row("  workflow task: picked up → completed", wft_run),
    ]
    for name in activity_run:
        lines.append(row(f"  {name}: scheduled → started", activity_wait[name]))
        lines.append(row(f"  {name}: started → completed", activity_run[name]))
    return lines


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Figures:
    lines: list[str] = field(default_factory=list)
    load: float = field(default_factory=lambda: os.getloadavg()[0])


async def register(api: httpx.AsyncClient, sshd: Sshd, passwords: dict[str, str]) -> dict[str, str]:
    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await api.post(path, json=body)
        if response.status_code != 201:
            raise BenchFailed(f"POST {path}: {response.status_code} {response.text}")
        created: dict[str, Any] = response.json()
        return created

    tag = secrets.token_hex(4)
    device = await post(
        "/v1/devices",
        {
            "name": f"bench-{tag}",
            "address": "127.0.0.1",
            "port": sshd.port,
            "executor": "ssh",
            "host_keys": [sshd.host_key_line],
        },
    )
    policy = await post("/v1/policies", {"name": f"bench-{tag}", **POLICY})
    credentials = {}
    for user, password in passwords.items():
        body = {
            "device_id": device["id"],
            "username": user,
            "password": password,
            "policy_id": policy["id"],
        }
        credentials[user] = (await post("/v1/credentials", body))["id"]
    return credentials


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
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
async def keyturn_stack(
    settings: Settings, env: WorkflowEnvironment, engine: Engine
) -> AsyncIterator[httpx.AsyncClient]:
    """The worker and the in-process HTTP API; the worker is shut down gracefully on exit."""
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


async def run(args: argparse.Namespace, sshd: Sshd, users: Users) -> Figures:
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None
    loop.add_signal_handler(signal.SIGTERM, me.cancel)  # SIGINT: asyncio.run cancels us itself
    figures = Figures()
    out = figures.lines
    n, c = args.changes, args.concurrency

    # Each path gets its own M users, so both can be warmed up before either is measured.
    def new_users() -> dict[str, str]:
        return {users.create(p): p for p in (generate_password(RULES) for _ in range(args.users))}

    raw_passwords, kt_passwords = new_users(), new_users()
    raw_users, kt_users = list(raw_passwords), list(kt_passwords)
    progress(f"sshd on 127.0.0.1:{sshd.port}, 2 × {args.users} throwaway users")

    key = secrets.token_bytes(32)
    progress("starting the Temporal dev server, the worker and the API")
    async with contextlib.AsyncExitStack() as stack:
        with _stdout_to_stderr():  # the dev server prints a banner on its stdout
            env = await WorkflowEnvironment.start_local(
                dev_server_existing_path=temporal_cli(),
                search_attributes=SEARCH_ATTRIBUTES,
                data_converter=data_converter(key),
                ui=False,
            )
        stack.push_async_callback(env.shutdown)
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keyturn-bench-")))
        settings = Settings(
            data_dir=data_dir,
            database_url=f"sqlite:///{data_dir / 'keyturn.db'}",
            master_key=base64.b64encode(key).decode(),
            admin_token=secrets.token_urlsafe(16),
            task_queue=f"keyturn-bench-{secrets.token_hex(4)}",
        )
        engine = make_engine(settings.resolved_database_url)
        stack.callback(engine.dispose)
        seed_shipped_templates(engine)
        counter = StoreCounter(engine)
        api = await stack.enter_async_context(keyturn_stack(settings, env, engine))
        credentials = await register(api, sshd, kt_passwords)
        raw = RawRotator(sshd.port, sshd.host_key_line, raw_passwords)
        keyturn = KeyturnRotator(api, env.client, credentials)

        progress(f"warm-up: {args.warmup} changes per path")
        await run_phase(args.warmup, raw_users, c, raw.change)
        await run_phase(args.warmup, kt_users, c, keyturn.change)

        # Alternate the paths in rounds, so both see the same drift in the machine's load.
        raw_seconds = kt_seconds = 0.0
        raw_samples: list[RawSample] = []
        kt_samples: list[KeyturnSample] = []
        raw_cpu = kt_cpu = CpuUse(0.0, 0.0, 0.0, 0.0)
        store_ops: Counter[str] = Counter()
        for number, size in enumerate(split(n, args.rounds), start=1):
            progress(f"round {number}/{args.rounds}: {size} changes per path")
            cpu = CpuMeter()
            seconds, raw_round = await run_phase(size, raw_users, c, raw.change)
            raw_cpu += cpu.used()
            raw_seconds += seconds
            raw_samples += raw_round
            before = counter.snapshot()
            cpu = CpuMeter()
            seconds, kt_round = await run_phase(size, kt_users, c, keyturn.change)
            kt_cpu += cpu.used()
            kt_seconds += seconds
            kt_samples += kt_round
            store_ops += counter.snapshot() - before
        progress(f"raw {raw_seconds:.2f} s, keyturn {kt_seconds:.2f} s; checking the vault")

        # Independent check: the vault's current secret logs every user in.
        vault = Vault(settings.master_key_bytes)
        for user, credential_id in credentials.items():
            with Session(engine) as session:
                version = Vault.current(session, credential_id)
                assert version is not None
                secret = vault.reveal(version)
            if not await users.password_works(user, secret):
                raise BenchFailed(f"the vault's current secret of {user} does not log in")
        out += keyturn_timeline(engine, kt_samples)
        out += await temporal_timeline(env.client, kt_samples)

    per_op = ", ".join(f"{verb} {count / n:.1f}" for verb, count in sorted(store_ops.items()))
    out.append(f"store (SQLite) statements per operation: {per_op}")
    raw_rate, kt_rate = n / raw_seconds, n / kt_seconds
    out += [
        "raw asyncssh, per change (ms)" + HEADER[len("raw asyncssh, per change (ms)") :],
        row("  change + verify (wall)", [s.total for s in raw_samples]),
        row("    change (ssh login + passwd)", [s.change for s in raw_samples]),
        row("    verify (ssh login + id -un)", [s.verify for s in raw_samples]),
        CpuUse.header(),
        raw_cpu.line("  raw", n, raw_seconds),
        kt_cpu.line("  keyturn", n, kt_seconds),
        "",
        f"N={n} changes, M={args.users} users per path, C={c} in flight, "
        f"warm-up {args.warmup} per path, {args.rounds} alternating rounds, "
        f"password length {RULES.length}, "
        f"{os.cpu_count()} CPUs, load average at start {figures.load:.2f}",
        f"raw asyncssh: {raw_seconds:7.2f} s  {raw_rate:6.2f} changes/s",
        f"keyturn:      {kt_seconds:7.2f} s  {kt_rate:6.2f} changes/s",
        f"ratio keyturn/raw: {kt_rate / raw_rate:.2f}",
    ]
    return figures


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="N password changes over M throwaway users on a local sshd, with C in "
        "flight, through Keyturn and through a plain asyncssh script (run as root).",
    )
    parser.add_argument("--changes", "-n", type=int, default=DEFAULT_CHANGES, metavar="N")
    parser.add_argument("--users", "-m", type=int, default=DEFAULT_USERS, metavar="M")
    parser.add_argument("--concurrency", "-c", type=int, default=DEFAULT_CONCURRENCY, metavar="C")
    parser.add_argument(
        "--warmup", type=int, default=None, metavar="W", help="changes per path before measuring"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        metavar="R",
        help="measure in R alternating rounds of N/R changes per path (raw, keyturn, raw, …)",
    )
    args = parser.parse_args(argv)
    if min(args.changes, args.users, args.concurrency, args.rounds) < 1:
        parser.error("--changes, --users, --concurrency and --rounds must be at least 1")
    if args.users < args.concurrency:
        parser.error("--users must be at least --concurrency: a user has one change in flight")
    if args.warmup is None:
        args.warmup = args.users
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print(
            "bench/rotate.py must run as root: it creates throwaway Linux users and starts sshd "
            "(sudo .venv/bin/python bench/rotate.py)",
            file=sys.stderr,
        )
        return 2
    if not Path(SSHD).exists():
        print(f"{SSHD} is missing: install openssh-server", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    started = time.perf_counter()
    sshd = Sshd()
    users = Users(sshd)
    try:
        try:
            sshd.start()
            figures = asyncio.run(run(args, sshd, users))
        finally:
            users.cleanup()
            sshd.close()
    except BenchFailed as exc:
        progress(f"failed: {exc} (users removed, sshd, worker and Temporal stopped)")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:  # Ctrl-C, or SIGTERM
        progress("interrupted: users removed, sshd, worker and Temporal stopped")
        return 130 if isinstance(exc, KeyboardInterrupt) else 143
    progress(f"wall time {time.perf_counter() - started:.1f} s")
    print("\n".join(figures.lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
