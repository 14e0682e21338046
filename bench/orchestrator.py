"""Keyturn's own ceiling: password changes against a target that costs almost nothing.

    .venv/bin/python bench/orchestrator.py [--changes N] [--users M] [--concurrency C]

The target is the in-process asyncssh peer (``bench/peer.py``): password logins against an
in-memory table, ``passwd`` played prompt by prompt, ``id -un``; no shell, no PAM, no fork. So
nearly all the CPU a change costs is Keyturn's and the Temporal server's. The worker
(``python worker.py``) and the API (``python -m starter.cli api``) run as processes of their own,
so /proc gives each its own CPU time; the Temporal dev server is the temporal CLI's; the client
(HTTP requests, waiting for workflow results) and the peer stay in this process, reported apart.

N changes (ssh/linux-passwd, then the verify login, then commit) are spread over M credentials by
C lanes, as in bench/rotate.py, after a warm-up of one change per credential. At the end the
vault's current secret of every credential must equal the peer's table.

The report (stdout, after cleanup): changes/s; CPU ms per change of the worker, the API, the
Temporal server, this process (client and peer) and the whole machine; history events, workflow
tasks and activities per change, and the per-operation timeline of bench/rotate.py. Needs no
root. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: bench/ is on sys.path, the repo root is not

from bench.harness import (  # noqa: E402
    CHPASSWD,
    PASSWD,
    RULES,
    TEMPLATES,
    BenchFailed,
    Figures,
    KeyturnRotator,
    ProcessMeter,
    add_main_queue_option,
    bench_settings,
    check_vault,
    expect_template,
    keyturn_processes,
    keyturn_timeline,
    post_json,
    profiling,
    progress,
    register_credentials,
    register_policy,
    run_phase,
    ssh_device,
    steps_queue_line,
    temporal_dev_server,
    temporal_server_pids,
    temporal_timeline,
    top_frames,
)
from bench.peer import Peer  # noqa: E402
from store.engine import make_engine  # noqa: E402
from store.passwords import generate_password  # noqa: E402
from store.seed import seed_shipped_templates  # noqa: E402

DEFAULT_CHANGES = 150
DEFAULT_USERS = 30
DEFAULT_CONCURRENCY = 10
# The aims, printed beside the figures.
AIM_KEYTURN_MS = 40.0
AIM_EVENTS = 12.0

CPU_GROUPS = ("worker", "api", "temporal", "bench")
CPU_LABELS = {
    "worker": "keyturn worker",
    "api": "keyturn API",
    "temporal": "temporal server",
    "bench": "this process (client + peer)",
}


def cpu_lines(used: Mapping[str, float], changes: int, seconds: float) -> list[str]:
    per = {name: used[name] / changes * 1000 for name in used}
    keyturn = per["worker"] + per["api"]
    rest = per["machine"] - sum(per[name] for name in CPU_GROUPS)
    available = seconds * (os.cpu_count() or 1)
    lines = ["CPU per change (ms)"]
    lines += [f"  {CPU_LABELS[name]:<36}{per[name]:8.1f}" for name in CPU_GROUPS]
    lines += [
        f"  {'anything else on the machine':<36}{rest:8.1f}",
        f"  {'whole machine':<36}{per['machine']:8.1f}   "
        f"{used['machine'] / available:.0%} of all CPUs busy, "
        f"{used['steal'] / available:.0%} stolen",
        f"  {'keyturn (worker + API)':<36}{keyturn:8.1f}   aim ≤ {AIM_KEYTURN_MS:g}",
        f"  {'keyturn + temporal server':<36}{keyturn + per['temporal']:8.1f}",
    ]
    return lines


async def run(args: argparse.Namespace) -> Figures:
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None
    loop.add_signal_handler(signal.SIGTERM, me.cancel)  # SIGINT: asyncio.run cancels us itself
    figures = Figures()
    out = figures.lines
    n, c = args.changes, args.concurrency

    accounts = {f"kt_{secrets.token_hex(6)}": generate_password(RULES) for _ in range(args.users)}
    peer = Peer(dict(accounts))
    admin = None
    if args.template == CHPASSWD:  # one sudo account changes them all
        admin = f"kt_{secrets.token_hex(6)}"
        peer.accounts[admin] = generate_password(RULES)
        peer.sudoers.add(admin)
    key = secrets.token_bytes(32)
    progress("starting the Temporal dev server, the worker and the API processes, the peer")
    async with contextlib.AsyncExitStack() as stack:
        (port,) = await peer.listen()
        stack.push_async_callback(peer.close)
        env = await stack.enter_async_context(temporal_dev_server(key))
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keyturn-bench-")))
        settings = bench_settings(data_dir, key, default_zone_on_main_queue=args.main_queue)
        engine = make_engine(settings.resolved_database_url)  # migrates before the processes start
        stack.callback(engine.dispose)
        seed_shipped_templates(engine)
        api, processes = await stack.enter_async_context(keyturn_processes(settings, env))
        device = await post_json(api, "/v1/devices", ssh_device(port, peer.host_key_line))
        policy_id = await register_policy(api)
        auth_id = None
        if admin is not None:
            auth = await register_credentials(
                api, device["id"], policy_id, {admin: peer.accounts[admin]}
            )
            auth_id = auth[admin]
        credentials = await register_credentials(
            api, device["id"], policy_id, dict(accounts), auth_credential_id=auth_id
        )
        await expect_template(api, next(iter(credentials.values())), args.template)
        keyturn = KeyturnRotator(api, env.client, credentials)
        users = list(credentials)

        progress(f"warm-up: {args.warmup} changes")
        await run_phase(args.warmup, users, c, keyturn.change)
        progress(f"measuring: {n} changes, {c} in flight")
        meter = ProcessMeter(
            {
                "worker": [processes.worker.pid],
                "api": [processes.api.pid],
                "temporal": temporal_server_pids(),
                "bench": [os.getpid()],
            }
        )
        with profiling(processes.worker.pid, args.profile):
            seconds, samples = await run_phase(n, users, c, keyturn.change)
            used = meter.used()
        progress(f"{seconds:.2f} s; checking the vault against the peer")
        check_vault(engine, settings.master_key_bytes, credentials, peer)
        out += keyturn_timeline(engine, samples)
        out += await temporal_timeline(env.client, samples)

    rate = n / seconds
    out += cpu_lines(used, n, seconds)
    if args.profile is not None:
        out += top_frames(args.profile, args.profile_top)
    out += [
        f"peer: {peer.logins} logins, {peer.changes} changes, {peer.refused} refused",
        "",
        f"template {args.template}"
        + (f" through the sudo account {admin}" if admin else "")
        + f" against the in-process asyncssh peer; aim ≤ {AIM_EVENTS:g} history events per change",
        steps_queue_line(args.main_queue),
        f"N={n} changes, M={args.users} credentials on one device, C={c} in flight, "
        f"warm-up {args.warmup}, {os.cpu_count()} CPUs, load average at start {figures.load:.2f}",
        f"keyturn against the peer: {seconds:7.2f} s  {rate:6.2f} changes/s",
    ]
    return figures


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="N password changes over M credentials on an in-process SSH peer that costs "
        "almost nothing, C in flight: Keyturn's own ceiling and CPU per change.",
    )
    parser.add_argument(
        "--template",
        choices=TEMPLATES,
        default=PASSWD,
        help="the change template: the user's own passwd, or chpasswd through one sudo account",
    )
    parser.add_argument("--changes", "-n", type=int, default=DEFAULT_CHANGES, metavar="N")
    parser.add_argument("--users", "-m", type=int, default=DEFAULT_USERS, metavar="M")
    parser.add_argument("--concurrency", "-c", type=int, default=DEFAULT_CONCURRENCY, metavar="C")
    parser.add_argument(
        "--warmup", type=int, default=None, metavar="W", help="changes before measuring (M)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="sample the worker with py-spy while measuring; FILE gets its collapsed stacks "
        "(flamegraph.pl or speedscope read them) and the report its top functions. py-spy "
        "takes CPU too: compare figures of runs without it",
    )
    parser.add_argument("--profile-top", type=int, default=15, metavar="K")
    add_main_queue_option(parser)
    args = parser.parse_args(argv)
    if min(args.changes, args.users, args.concurrency) < 1:
        parser.error("--changes, --users and --concurrency must be at least 1")
    if args.users < args.concurrency:
        parser.error(
            "--users must be at least --concurrency: a credential has one change in flight"
        )
    if args.warmup is None:
        args.warmup = args.users
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    started = time.perf_counter()
    try:
        figures = asyncio.run(run(args))
    except BenchFailed as exc:
        progress(f"failed: {exc} (worker, API and Temporal stopped)")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:  # Ctrl-C, or SIGTERM
        progress("interrupted: worker, API and Temporal stopped")
        return 130 if isinstance(exc, KeyboardInterrupt) else 143
    progress(f"wall time {time.perf_counter() - started:.1f} s")
    print("\n".join(figures.lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
