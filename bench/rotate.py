"""Password-rotation throughput: Keyturn against a plain asyncssh script, on a local OpenSSH sshd.

    sudo .venv/bin/python bench/rotate.py [--template T] [--changes N] [--users M] [--concurrency C]

Run from the repository root, as root (it creates throwaway Linux users and starts sshd). It is
self-contained: its own sshd on a loopback port, 2 × M throwaway users, an in-memory Temporal
dev server, a SQLite store in a temp dir, a Keyturn worker and the HTTP starter in process.
Everything is removed at the end, also on errors and Ctrl-C.

Both paths do the same work per change, the change protocol's change and verify steps, for the
template chosen with ``--template``:

- ``ssh/linux-passwd`` (the default), the user changes its own password:
  raw: log in over SSH as the user with its current password, run ``passwd`` in a PTY answering
  the current/new/retype prompts (as ``executors/templates/ssh/linux-passwd.tpl`` does);
- ``ssh/linux-chpasswd``, through one privileged account (a sudo account allowed to run
  ``chpasswd``, the Keyturn credentials' ``auth_credential_id``): raw: log in as that account and
  run the template's own command line (``sudo -k -S -v``, then ``sudo -k -S chpasswd`` fed
  ``user:password``), so the target does the same work on both paths;

then, either way, log in again as the user with the new password and run ``id -un`` (as
``ssh/verify-login.tpl`` does). keyturn: ``POST /v1/credentials/{id}/operations {"kind":
"change"}`` through the in-process API, then wait for the operation's workflow result (prepare →
change → verify → commit).

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
import contextlib
import logging
import os
import re
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
from sqlmodel import Session

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: bench/ is on sys.path, the repo root is not

from bench.harness import (  # noqa: E402
    CHPASSWD,
    HEADER,
    PASSWD,
    RULES,
    TEMPLATES,
    BenchFailed,
    CpuMeter,
    CpuUse,
    Figures,
    KeyturnRotator,
    KeyturnSample,
    StoreCounter,
    add_main_queue_option,
    bench_settings,
    expect_template,
    keyturn_in_process,
    keyturn_timeline,
    post_json,
    progress,
    register_credentials,
    register_policy,
    row,
    run_phase,
    split,
    ssh_device,
    steps_queue_line,
    temporal_dev_server,
    temporal_timeline,
)
from executors.ssh.executor import CIPHERS as SSH_CIPHERS  # noqa: E402
from store.engine import make_engine  # noqa: E402
from store.passwords import generate_password  # noqa: E402
from store.seed import seed_shipped_templates  # noqa: E402
from store.vault import Vault  # noqa: E402
from tests.servers.sshd import SSHD, Sshd, Users  # noqa: E402

DEFAULT_CHANGES = 60
DEFAULT_USERS = 6
DEFAULT_CONCURRENCY = 3
# Table-and-verb pairs the report names, most frequent first (where the statements go).
STORE_TABLES_SHOWN = 12
DEFAULT_ROUNDS = 3
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
    r"|sorry, try again|incorrect password attempt|is not in the sudoers|not allowed to|chpasswd:"
)
# ssh/linux-chpasswd's command line, as the template runs it (exec, no PTY).
SUDO_PROMPT_TEXT = "keyturn-sudo-password:"
SUDO_PROMPT = re.compile(re.escape(SUDO_PROMPT_TEXT))
SUDO_OK = re.compile("keyturn-sudo-ok")
CHPASSWD_COMMAND = (
    f"sudo -k -S -p '{SUDO_PROMPT_TEXT}' -v && echo keyturn-sudo-ok && "
    f"sudo -k -S -p '{SUDO_PROMPT_TEXT}' chpasswd"
)

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
    """The same change and verify as Keyturn's ssh templates, straight over asyncssh. With
    ``admin`` (username, password) the change runs ssh/linux-chpasswd's command line as that
    account; without, the user runs passwd itself (ssh/linux-passwd)."""

    def __init__(
        self,
        port: int,
        host_key_line: str,
        passwords: dict[str, str],
        admin: tuple[str, str] | None = None,
    ) -> None:
        self._port = port
        self._known_hosts: KnownHosts = ([asyncssh.import_public_key(host_key_line)], [], [])
        self.passwords = passwords  # user → current password, kept up to date
        self._admin = admin

    def _login(self, user: str, password: str) -> Any:
        # The options Keyturn's ssh executor uses: pinned host key, only this password, its
        # cipher preference (the same work per packet on both paths).
        return asyncssh.connect(
            "127.0.0.1",
            port=self._port,
            username=user,
            password=password,
            known_hosts=self._known_hosts,
            client_keys=None,
            agent_path=None,
            config=None,
            encryption_algs=SSH_CIPHERS,
            preferred_auth="password,keyboard-interactive",
            connect_timeout=STEP_TIMEOUT,
        )

    async def change(self, user: str) -> RawSample:
        old, new = self.passwords[user], generate_password(RULES)
        started = time.perf_counter()
        if self._admin is None:
            await self._passwd(user, old, new)
        else:
            await self._chpasswd(user, new, *self._admin)
        self.passwords[user] = new
        changed = time.perf_counter()
        async with asyncio.timeout(STEP_TIMEOUT), self._login(user, new) as conn:
            result = await conn.run("id -un", env=SSH_ENV)
        if result.exit_status != 0 or str(result.stdout).strip() != user:
            raise BenchFailed(f"verify of {user}: id -un said {result.stdout!r}")
        return RawSample(changed - started, time.perf_counter() - changed)

    async def _passwd(self, user: str, old: str, new: str) -> None:
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

    async def _chpasswd(self, user: str, new: str, admin: str, admin_password: str) -> None:
        async with asyncio.timeout(STEP_TIMEOUT), self._login(admin, admin_password) as conn:
            process = await conn.create_process(
                CHPASSWD_COMMAND,
                stderr=asyncssh.STDOUT,
                encoding="utf-8",
                errors="replace",
                env=SSH_ENV,
            )
            async with process:
                shell = _Expect(process, (admin_password, new))
                await shell.expect(SUDO_PROMPT)
                await shell.send(admin_password)
                await shell.expect(SUDO_OK)
                await shell.expect(SUDO_PROMPT)
                await shell.send(admin_password)
                await shell.send(f"{user}:{new}")
                process.stdin.write_eof()
                completed = await process.wait()
            if completed.exit_status != 0:
                output = str(completed.stdout or "").replace(new, "***")
                raise BenchFailed(
                    f"chpasswd for {user} exited with {completed.exit_status}: {output[-300:]!r}"
                )


RAW_CHANGE = {PASSWD: "passwd", CHPASSWD: "sudo -v, sudo chpasswd"}


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

    # The privileged account of each path (ssh/linux-chpasswd): sudo may run chpasswd.
    admins: list[tuple[str, str]] = []
    if args.template == CHPASSWD:
        for _ in range(2):
            password = generate_password(RULES)
            admin = users.create(password)
            users.make_admin(admin)
            admins.append((admin, password))
        progress(f"sudo accounts: raw {admins[0][0]}, keyturn {admins[1][0]}")

    key = secrets.token_bytes(32)
    progress("starting the Temporal dev server, the worker and the API")
    async with contextlib.AsyncExitStack() as stack:
        env = await stack.enter_async_context(temporal_dev_server(key))
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keyturn-bench-")))
        settings = bench_settings(data_dir, key, default_zone_on_main_queue=args.main_queue)
        engine = make_engine(settings.resolved_database_url)
        stack.callback(engine.dispose)
        seed_shipped_templates(engine)
        counter = StoreCounter(engine)
        api = await stack.enter_async_context(keyturn_in_process(settings, env, engine))
        device = await post_json(api, "/v1/devices", ssh_device(sshd.port, sshd.host_key_line))
        policy_id = await register_policy(api)
        auth_id = None
        if admins:
            admin, admin_password = admins[1]
            auth_id = (await register_credentials(api, device["id"], policy_id, dict([admins[1]])))[
                admin
            ]
        credentials = await register_credentials(
            api, device["id"], policy_id, kt_passwords, auth_credential_id=auth_id
        )
        await expect_template(api, next(iter(credentials.values())), args.template)
        raw = RawRotator(
            sshd.port, sshd.host_key_line, raw_passwords, admins[0] if admins else None
        )
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
        store_tables: Counter[str] = Counter()
        for number, size in enumerate(split(n, args.rounds), start=1):
            progress(f"round {number}/{args.rounds}: {size} changes per path")
            cpu = CpuMeter()
            seconds, raw_round = await run_phase(size, raw_users, c, raw.change)
            raw_cpu += cpu.used()
            raw_seconds += seconds
            raw_samples += raw_round
            before, tables_before = counter.snapshot(), counter.tables_snapshot()
            cpu = CpuMeter()
            seconds, kt_round = await run_phase(size, kt_users, c, keyturn.change)
            kt_cpu += cpu.used()
            kt_seconds += seconds
            kt_samples += kt_round
            store_ops += counter.snapshot() - before
            store_tables += counter.tables_snapshot() - tables_before
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
    by_table = ", ".join(
        f"{name} {count / n:.1f}" for name, count in store_tables.most_common(STORE_TABLES_SHOWN)
    )
    out.append(f"  the most frequent, by table: {by_table}")
    raw_rate, kt_rate = n / raw_seconds, n / kt_seconds
    out += [
        "raw asyncssh, per change (ms)" + HEADER[len("raw asyncssh, per change (ms)") :],
        row("  change + verify (wall)", [s.total for s in raw_samples]),
        row(
            f"    change (ssh login + {RAW_CHANGE[args.template]})", [s.change for s in raw_samples]
        ),
        row("    verify (ssh login + id -un)", [s.verify for s in raw_samples]),
        CpuUse.header(),
        raw_cpu.line("  raw", n, raw_seconds),
        kt_cpu.line("  keyturn", n, kt_seconds),
        "",
        f"template {args.template}"
        + (f" through the sudo account {admins[1][0]} (raw: {admins[0][0]})" if admins else ""),
        steps_queue_line(args.main_queue),
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
        "--warmup", type=int, default=None, metavar="W", help="changes per path before measuring"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        metavar="R",
        help="measure in R alternating rounds of N/R changes per path (raw, keyturn, raw, …)",
    )
    add_main_queue_option(parser)
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
