"""Expiry at scale: schedules per policy, finding what is due, and a storm of due changes.

    .venv/bin/python bench/expiry.py [--credentials 100000] [--policies 20]
                                     [--storm 10000] [--devices 200] [--cap 2]

Run from the repository root. Self-contained: a Temporal dev server with its SQLite file in a
temp dir, a SQLite store, a Keyturn worker and the HTTP starter in process, and a lightweight
SSH peer (an asyncssh server, in a subprocess of its own, that speaks the ``passwd`` dialogue of
``ssh/linux-passwd`` and answers ``id -un`` for ``ssh/verify-login``) listening on one port per
device, so targets cost little and Keyturn's own limits show. Everything is removed at the end.

1. Scale: ``--credentials`` credentials under ``--policies`` policies with an expiry (paused, so
   nothing fires), their secrets' ages spread over ten periods (a tenth are due). Prints the
   schedules on the server, the time one sweep's pages take to find every due credential (the
   sweep's own store work: ``triggers.due.due_page``) with the query plan, and the sizes of the
   store and of Temporal's database.
2. Storm: ``--storm`` more credentials over ``--devices`` devices (the peer's ports) with a cap
   of ``--cap``, all due at once; their policy's expiry schedule drains them through the one
   request path. Prints changes/s until drained, the highest number of sessions the peer saw at
   once per device (never above the cap), the worker's RSS, where each change's time goes and
   the CPU of each process. Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import httpx
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select
from temporalio.testing import WorkflowEnvironment

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: bench/ is on sys.path, the repo root is not

from keyturn.codec import data_converter  # noqa: E402
from keyturn.settings import Settings  # noqa: E402
from starter.app import create_app  # noqa: E402
from starter.devstack import temporal_cli  # noqa: E402
from store.engine import make_engine  # noqa: E402
from store.models import (  # noqa: E402
    Attempt,
    Credential,
    Device,
    Operation,
    Policy,
    SecretState,
    SyncState,
    new_id,
)
from store.seed import seed_shipped_templates  # noqa: E402
from store.vault import Vault  # noqa: E402
from triggers.due import due_page  # noqa: E402
from worker import build_workers, run_workers  # noqa: E402
from workflows.contracts import SEARCH_ATTRIBUTES, DueQuery, schedule_id  # noqa: E402

DAY = 86400
FAST = {"max_attempts": 3, "retry_interval_seconds": 0.5, "backoff": 1.0}
INSERT_BATCH = 5000
DRAIN_TIMEOUT = 3600.0
TICK = os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    print(f"[expiry] {message}", file=sys.stderr, flush=True)


# -- the SSH peer (a subprocess: ``expiry.py --peer DIR PORTS``) ---------------------------------


class _PeerServer(asyncssh.SSHServer):
    passwords: dict[str, str] = {}

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return self.passwords.get(username) == password


async def _peer(directory: Path, ports: int) -> None:
    """Listen on ``ports`` ports; count sessions in flight per port; on SIGTERM write stats."""
    _PeerServer.passwords = json.loads((directory / "users.json").read_text())
    key = asyncssh.generate_private_key("ssh-ed25519")
    active: Counter[int] = Counter()
    highest: Counter[int] = Counter()
    changes = 0

    async def line(process: asyncssh.SSHServerProcess[str]) -> str:
        data = await process.stdin.readuntil(["\n", "\r"])
        return data.rstrip("\r\n")

    async def session(process: asyncssh.SSHServerProcess[str]) -> None:
        nonlocal changes
        port = process.get_extra_info("sockname")[1]
        user = process.get_extra_info("username")
        active[port] += 1
        highest[port] = max(highest[port], active[port])
        code = 0
        try:
            if process.command == "passwd":
                process.stdout.write("Current password: ")
                if await line(process) != _PeerServer.passwords.get(user):
                    process.stdout.write("passwd: Authentication token manipulation error\n")
                    code = 10
                else:
                    process.stdout.write("\nNew password: ")
                    new = await line(process)
                    process.stdout.write("\nRetype new password: ")
                    if await line(process) != new:
                        process.stdout.write("\nSorry, passwords do not match.\n")
                        code = 10
                    else:
                        _PeerServer.passwords[user] = new
                        changes += 1
                        process.stdout.write("\npasswd: password updated successfully\n")
            elif process.command == "id -un":
                process.stdout.write(f"{user}\n")
            else:
                code = 127
        except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged, EOFError):
            code = 1
        finally:
            active[port] -= 1
        process.exit(code)

    servers = [
        await asyncssh.listen(
            "127.0.0.1",
            0,
            server_host_keys=[key],
            server_factory=_PeerServer,
            process_factory=session,
            line_editor=False,  # no echo: a real passwd does not echo either
        )
        for _ in range(ports)
    ]
    (directory / "host_key.pub").write_text(key.export_public_key().decode())
    listening = [s.sockets[0].getsockname()[1] for s in servers]
    (directory / "ports.json").write_text(json.dumps(listening))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    stats = {"highest": {str(p): highest[p] for p in listening}, "changes": changes}
    (directory / "stats.json").write_text(json.dumps(stats))


class Peer:
    def __init__(self, directory: Path, users: dict[str, str], ports: int) -> None:
        self.directory = directory
        (directory / "users.json").write_text(json.dumps(users))
        self._ports = ports
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> tuple[list[int], str]:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--peer", str(self.directory), str(self._ports)
        )
        ports_file = self.directory / "ports.json"
        deadline = time.monotonic() + 60
        while not ports_file.exists():
            assert self.process.returncode is None, "the SSH peer exited at start"
            assert time.monotonic() < deadline, "the SSH peer did not start"
            await asyncio.sleep(0.1)
        ports: list[int] = json.loads(ports_file.read_text())
        kind, blob, *_ = (self.directory / "host_key.pub").read_text().split()
        return ports, f"{kind} {blob}"

    async def stop(self) -> dict[str, Any]:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        await self.process.wait()
        stats: dict[str, Any] = json.loads((self.directory / "stats.json").read_text())
        return stats


# -- measuring ---------------------------------------------------------------------------------


def _cpu(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _machine_busy() -> float:
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = values[:7]
    return (user + nice + system + irq + softirq) / TICK


def _rss_mb(pid: int) -> float:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    return 0.0


def _temporal_pids() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                comm = stat[stat.index("(") + 1 : stat.rindex(")")]
                ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
                if ppid == os.getpid() and comm.startswith("temporal"):
                    found.append(int(entry.name))
    return found


def _size_mb(*paths: Path) -> float:
    total = 0
    for path in paths:
        for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if candidate.exists():
                total += candidate.stat().st_size
    return total / 1e6


# -- setting up --------------------------------------------------------------------------------


def insert_credentials(
    engine: Engine,
    vault: Vault,
    rows: Sequence[tuple[str, str, str, str, datetime]],  # device, policy, user, password, age
) -> list[str]:
    """Credentials with a current secret each, written in batches (the API would take long)."""
    ids = []
    for start in range(0, len(rows), INSERT_BATCH):
        with Session(engine) as session:
            for device_id, policy_id, username, password, changed_at in rows[
                start : start + INSERT_BATCH
            ]:
                credential = Credential(
                    id=new_id(),
                    device_id=device_id,
                    username=username,
                    change_template="ssh/linux-passwd",
                    verify_template="ssh/verify-login",
                    policy_id=policy_id,
                    sync_state=SyncState.IN_SYNC,
                    secret_changed_at=changed_at,
                    verified_at=changed_at,
                )
                session.add(credential)
                vault.add(session, credential.id, password, SecretState.CURRENT)
                ids.append(credential.id)
            session.commit()
    return ids


@contextlib.asynccontextmanager
async def keyturn(
    settings: Settings, env: WorkflowEnvironment, engine: Engine
) -> AsyncIterator[httpx.AsyncClient]:
    stop = asyncio.Event()
    workers = asyncio.create_task(run_workers(build_workers(env.client, settings, engine), stop))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(settings, engine, env.client)),
            base_url="http://keyturn.bench",
            headers={"Authorization": f"Bearer {settings.admin_token}"},
            timeout=60,
        ) as api:
            yield api
    finally:
        stop.set()
        try:
            async with asyncio.timeout(10):
                await asyncio.shield(workers)
        except TimeoutError:
            workers.cancel()
            with contextlib.suppress(BaseException):
                await workers


async def post(api: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.post(path, json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def patch(api: httpx.AsyncClient, path: str, body: dict[str, Any]) -> None:
    response = await api.patch(path, json=body)
    assert response.status_code == 200, response.text


# -- 1. scale ----------------------------------------------------------------------------------


async def scale(
    args: argparse.Namespace,
    api: httpx.AsyncClient,
    env: WorkflowEnvironment,
    engine: Engine,
    vault: Vault,
    data: Path,
    out: list[str],
) -> None:
    period = 9 * DAY  # ages spread over 10/9 of it: a tenth are due
    policies = [
        await post(
            api,
            "/v1/policies",
            {"name": f"scale-{i}", "change_every_seconds": period, "paused": True, **FAST},
        )
        for i in range(args.policies)
    ]
    device = await post(
        api,
        "/v1/devices",
        {"name": "scale-device", "address": "127.0.0.1", "port": 1, "trust_on_first_use": True},
    )
    now = datetime.now(UTC)
    rng = random.Random(7)
    rows = [
        (
            device["id"],
            policies[i % len(policies)]["id"],
            f"scale{i:06d}",
            secrets.token_urlsafe(18),
            now - timedelta(seconds=rng.uniform(0, period / 0.9)),
        )
        for i in range(args.credentials)
    ]
    progress(f"inserting {args.credentials} credentials under {len(policies)} policies")
    started = time.monotonic()
    insert_credentials(engine, vault, rows)
    progress(f"inserted in {time.monotonic() - started:.1f}s")

    ours = {schedule_id("expiry", p["id"]) for p in policies}
    listed: set[str] = set()
    deadline = time.monotonic() + 60
    while listed != ours and time.monotonic() < deadline:  # the list is eventually consistent
        listed = {s.id async for s in await env.client.list_schedules()} & ours
        await asyncio.sleep(0.5)
    everything = [s.id async for s in await env.client.list_schedules()]

    # One sweep's finding, per policy: the pages the sweep workflow reads, as of now. The
    # policies are paused (so their schedules start nothing); the pause is lifted inside a
    # transaction that is rolled back, for the query's sake only.
    as_of = datetime.now(UTC).isoformat()
    timings, found = [], 0
    with Session(engine) as session:
        for policy in policies:
            row = session.get(Policy, policy["id"])
            assert row is not None
            row.paused = False
            session.flush()
            cursor, pages, started = "", 0, time.perf_counter()
            while True:
                page = due_page(
                    session, DueQuery(policy["id"], "expiry", as_of, cursor, args.page_size)
                )
                found += len(page.credential_ids)
                pages += 1
                cursor = page.cursor
                if not cursor:
                    break
            timings.append(time.perf_counter() - started)
        plan = session.execute(
            text(
                "EXPLAIN QUERY PLAN SELECT id, secret_changed_at FROM credential "
                "WHERE policy_id = :p AND secret_changed_at <= :t AND sync_state != 'OUT_OF_SYNC' "
                "ORDER BY secret_changed_at, id LIMIT 200"
            ),
            {"p": policies[0]["id"], "t": as_of},
        ).all()
        session.rollback()
    expected = sum(
        1 for r in rows if r[4] <= datetime.fromisoformat(as_of) - timedelta(seconds=period)
    )
    out += [
        f"== scale: {args.credentials} credentials under {args.policies} policies",
        f"schedules on the server: {len(listed)} of this bench's policies "
        f"({len(everything)} in all): one per policy, none per credential",
        f"one sweep finds the due ones: {found} due (expected {expected}), "
        f"{sum(timings) * 1000:.0f} ms for all {args.policies} policies "
        f"(per policy: median {statistics.median(timings) * 1000:.1f} ms, "
        f"max {max(timings) * 1000:.1f} ms; pages of {args.page_size})",
        f"query plan: {'; '.join(str(p[-1]) for p in plan)}",
        f"store (SQLite) {_size_mb(data / 'keyturn.db'):.1f} MB, "
        f"Temporal (SQLite) {_size_mb(data / 'temporal.db'):.1f} MB",
    ]


# -- 2. storm ----------------------------------------------------------------------------------


async def storm(
    args: argparse.Namespace,
    api: httpx.AsyncClient,
    env: WorkflowEnvironment,
    engine: Engine,
    vault: Vault,
    data: Path,
    out: list[str],
) -> None:
    users = {f"storm{i:06d}": secrets.token_urlsafe(18) for i in range(args.storm)}
    peer_dir = data / "peer"
    peer_dir.mkdir()
    peer = Peer(peer_dir, users, args.devices)
    ports, host_key = await peer.start()
    progress(f"SSH peer on {len(ports)} ports")
    devices = [
        await post(
            api,
            "/v1/devices",
            {
                "name": f"storm-{port}",
                "address": "127.0.0.1",
                "port": port,
                "host_keys": [host_key],
                "max_concurrent_operations": args.cap,
            },
        )
        for port in ports
    ]
    policy = await post(api, "/v1/policies", {"name": "storm", **FAST})
    old = datetime.now(UTC) - timedelta(days=2)
    rows = [
        (devices[i % len(devices)]["id"], policy["id"], user, password, old)
        for i, (user, password) in enumerate(users.items())
    ]
    ids = set(insert_credentials(engine, vault, rows))
    progress(f"{len(ids)} credentials due over {len(devices)} devices (cap {args.cap})")

    temporal = _temporal_pids()
    cpu_start = (
        _cpu(os.getpid()),
        sum(_cpu(p) for p in temporal),
        _cpu(peer.process.pid if peer.process else 0),
        _machine_busy(),
    )
    began = time.monotonic()
    await patch(api, f"/v1/policies/{policy['id']}", {"change_every_seconds": DAY})
    rss = 0.0
    done = 0
    while done < len(ids):
        await asyncio.sleep(2)
        rss = max(rss, _rss_mb(os.getpid()))
        with Session(engine) as session:
            done = session.exec(
                select(func.count(func.distinct(Operation.credential_id))).where(
                    Operation.trigger == "expiry", Operation.status == "SUCCEEDED"
                )
            ).one()
        progress(f"{done}/{len(ids)} changed after {time.monotonic() - began:.0f}s")
        assert time.monotonic() - began < DRAIN_TIMEOUT, "not drained"
    elapsed = time.monotonic() - began
    cpu_end = (
        _cpu(os.getpid()),
        sum(_cpu(p) for p in temporal),
        _cpu(peer.process.pid if peer.process else 0),
        _machine_busy(),
    )
    await patch(api, f"/v1/policies/{policy['id']}", {"change_every_seconds": None})
    stats = await peer.stop()

    with Session(engine) as session:
        ops = session.exec(select(Operation).where(Operation.trigger == "expiry")).all()
        attempts = session.exec(
            select(Attempt).where(col(Attempt.operation_id).in_([o.id for o in ops]))
        ).all()
        statuses = Counter(str(o.status) for o in ops)
        device_of = {d.id: d.port for d in session.exec(select(Device))}
        cred_device = {
            c.id: device_of[c.device_id]
            for c in session.exec(select(Credential).where(Credential.policy_id == policy["id"]))
        }
    created = [o.created_at for o in ops]
    finished = [o.finished_at for o in ops if o.finished_at]
    drain = (max(finished) - min(created)).total_seconds()
    by_op: dict[str, list[Attempt]] = defaultdict(list)
    for a in attempts:
        by_op[a.operation_id].append(a)
    waits, steps, tails = [], defaultdict(list), []
    for o in ops:
        rows_ = sorted(by_op.get(o.id, []), key=lambda a: a.started_at)
        if not rows_ or o.finished_at is None:
            continue
        waits.append((rows_[0].started_at - o.created_at).total_seconds())
        for a in rows_:
            if a.finished_at:
                steps[a.step].append((a.finished_at - a.started_at).total_seconds())
        last = max(a.finished_at or a.started_at for a in rows_)
        tails.append((o.finished_at - last).total_seconds())
    requested_span = (max(created) - min(created)).total_seconds()
    highest = max(stats["highest"].values())
    per_device = Counter(cred_device.values())
    seconds = cpu_end[3] - cpu_start[3]
    out += [
        f"== storm: {len(ids)} credentials due at once over {len(devices)} devices, cap {args.cap}",
        f"drained in {elapsed:.1f}s from the policy's update ({drain:.1f}s first request to last "
        f"commit): {len(ids) / drain:.1f} changes/s; operations {dict(statuses)}; "
        f"the peer saw {stats['changes']} passwd changes",
        f"requests: {len(ops)} in {requested_span:.1f}s "
        f"({len(ops) / max(requested_span, 1e-9):.0f}/s through request_operation, from the "
        "sweep's activity)",
        f"highest sessions at once on one device: {highest} (cap {args.cap}; "
        f"{'never above it' if highest <= args.cap else 'ABOVE THE CAP'}); "
        f"{max(per_device.values())} credentials per device",
        f"worker + API process RSS: up to {rss:.0f} MB",
        "per change (mean): "
        f"requested → first step {statistics.mean(waits):.2f}s (gate, queue for the device "
        f"slot); "
        + ", ".join(f"{k} {statistics.mean(v) * 1000:.0f} ms" for k, v in sorted(steps.items()))
        + f"; last step → committed {statistics.mean(tails) * 1000:.0f} ms",
        f"CPU seconds: this process (worker, API, store) {cpu_end[0] - cpu_start[0]:.0f}, "
        f"Temporal server {cpu_end[1] - cpu_start[1]:.0f}, "
        f"SSH peer {cpu_end[2] - cpu_start[2]:.0f}, "
        f"whole machine {seconds:.0f} of {elapsed * (os.cpu_count() or 1):.0f} available",
    ]


# -- main --------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> list[str]:
    data = Path(tempfile.mkdtemp(prefix="keyturn-bench-expiry-"))
    key = secrets.token_bytes(32)
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=data_converter(key),
        dev_server_database_filename=str(data / "temporal.db"),
        # As ``keyturn dev`` runs it (starter/devstack.py).
        dev_server_extra_args=[
            "--sqlite-pragma",
            "journal_mode=wal",
            "--sqlite-pragma",
            "synchronous=normal",
        ],
    )
    out: list[str] = []
    try:
        settings = Settings(
            data_dir=data,
            database_url=f"sqlite:///{data / 'keyturn.db'}",
            master_key=base64.b64encode(key).decode(),
            admin_token=secrets.token_urlsafe(16),
            task_queue="keyturn-bench-expiry",
            sweep_interval_seconds=args.sweep_interval,
            sweep_page_size=args.page_size,
        )
        engine = make_engine(settings.resolved_database_url)
        seed_shipped_templates(engine)
        vault = Vault(settings.master_key_bytes)
        async with keyturn(settings, env, engine) as api:
            if args.credentials:
                await scale(args, api, env, engine, vault, data, out)
            if args.storm:
                await storm(args, api, env, engine, vault, data, out)
        engine.dispose()
    finally:
        await env.shutdown()
        await asyncio.to_thread(shutil.rmtree, data, True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--credentials", type=int, default=100_000)
    parser.add_argument("--policies", type=int, default=20)
    parser.add_argument("--storm", type=int, default=10_000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--cap", type=int, default=2)
    parser.add_argument("--page-size", type=int, default=200)
    parser.add_argument("--sweep-interval", type=float, default=5.0)
    parser.add_argument("--peer", nargs=2, metavar=("DIR", "PORTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer:
        asyncio.run(_peer(Path(args.peer[0]), int(args.peer[1])))
        return 0
    print("\n".join(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
