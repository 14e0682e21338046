"""A lightweight SSH target in the benchmark's own process: what ssh/linux-passwd and
ssh/verify-login expect, at almost no CPU cost, so a benchmark measures Keyturn and not the target.

It accepts password logins against an in-memory table (user → password), answers ``id -un``
with the user's name, and plays ``passwd``: the current/new/retype prompts, then updates the
table, so a login with the new password works right after. For ssh/linux-chpasswd it plays the
template's command line too: each ``sudo -S -p PROMPT`` asks for the password of the account
logged in (which must be in ``sudoers``), ``echo`` echoes, and ``chpasswd`` reads
``user:password`` lines until the end of input and updates the table. No shell, no PAM, no fork;
an ed25519 host key (the cheapest handshake). With ``hold`` set, each ``passwd`` waits for the
event before its first prompt: a slow target that keeps many sessions open at once.

One peer may listen on many ports (``listen(count)``): each port is a device of its own to
Keyturn, since its per-device cap counts devices, not servers.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import MutableMapping

import asyncssh

CURRENT_PROMPT = "Current password: "
NEW_PROMPT = "New password: "
RETYPE_PROMPT = "Retype new password: "
UPDATED = "passwd: password updated successfully\n"
REFUSED = "passwd: Authentication token manipulation error\npasswd: password unchanged\n"
MISMATCH = "Sorry, passwords do not match.\npasswd: password unchanged\n"
SUDO_PROMPT = re.compile(r"-p '([^']*)'")
SUDO_REFUSED = "Sorry, try again.\nsudo: 1 incorrect password attempt\n"


class Peer:
    """The in-process SSH target. ``accounts`` is shared: the table the target keeps."""

    def __init__(
        self, accounts: MutableMapping[str, str], hold: asyncio.Event | None = None
    ) -> None:
        self.accounts = accounts
        self.sudoers: set[str] = set()  # accounts whose sudo may run chpasswd
        self.hold = hold
        self.held = 0  # passwd sessions waiting at the hold right now
        self.most_held = 0
        self.logins = 0
        self.changes = 0
        self.refused = 0  # passwd runs that did not change anything (wrong current password…)
        self._host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._servers: list[asyncssh.SSHAcceptor] = []

    @property
    def host_key_line(self) -> str:
        """The public host key as a device pins it: ``ssh-ed25519 AAAA…``."""
        kind, blob, *_ = self._host_key.export_public_key("openssh").decode().split()
        return f"{kind} {blob}"

    async def listen(self, count: int = 1, host: str = "127.0.0.1") -> list[int]:
        """Listen on ``count`` more ports (picked by the kernel); their numbers."""
        ports = []
        for _ in range(count):
            server = await asyncssh.create_server(
                lambda: _Server(self),
                host,
                0,
                server_host_keys=[self._host_key],
                process_factory=self._session,
                # Input arrives as sent: no echo, no line editing (a PTY is still granted).
                line_editor=False,
                encoding="utf-8",
            )
            self._servers.append(server)
            ports.append(server.get_port())
        return ports

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        await asyncio.gather(*(server.wait_closed() for server in self._servers))
        self._servers.clear()

    async def _session(self, process: asyncssh.SSHServerProcess[str]) -> None:
        user = str(process.get_extra_info("username"))
        try:
            if process.command == "id -un":
                process.stdout.write(user + "\n")
                process.exit(0)
            elif process.command == "passwd":
                process.exit(await self._passwd(user, process))
            elif process.command is not None and process.command.startswith("sudo "):
                process.exit(await self._shell_line(user, process.command, process))
            else:
                process.stderr.write(f"{process.command}: command not found\n")
                process.exit(127)
        except (asyncssh.BreakReceived, asyncssh.SignalReceived, asyncssh.TerminalSizeChanged):
            process.exit(1)
        except (asyncssh.ConnectionLost, BrokenPipeError, ConnectionResetError):
            pass  # the client went away; nothing to answer

    async def _passwd(self, user: str, process: asyncssh.SSHServerProcess[str]) -> int:
        if self.hold is not None and not self.hold.is_set():
            self.held += 1
            self.most_held = max(self.most_held, self.held)
            try:
                await self.hold.wait()
            finally:
                self.held -= 1
        process.stdout.write(CURRENT_PROMPT)
        current = await _line(process)
        if current != self.accounts.get(user):
            self.refused += 1
            process.stdout.write(REFUSED)
            return 10
        process.stdout.write(NEW_PROMPT)
        new = await _line(process)
        process.stdout.write(RETYPE_PROMPT)
        if await _line(process) != new:
            self.refused += 1
            process.stdout.write(MISMATCH)
            return 10
        self.accounts[user] = new
        self.changes += 1
        process.stdout.write(UPDATED)
        return 0

    async def _shell_line(
        self, user: str, command: str, process: asyncssh.SSHServerProcess[str]
    ) -> int:
        """``sudo … -v && echo … && sudo … chpasswd``, as ssh/linux-chpasswd runs it."""
        for part in (p.strip() for p in command.split("&&")):
            if part.startswith("echo "):
                process.stdout.write(part.removeprefix("echo ") + "\n")
                continue
            if not part.startswith("sudo ") or user not in self.sudoers:
                process.stdout.write(f"{user} is not in the sudoers file.\n")
                return 1
            prompt = SUDO_PROMPT.search(part)
            process.stdout.write(prompt.group(1) if prompt else f"[sudo] password for {user}: ")
            if await _line(process) != self.accounts.get(user):
                self.refused += 1
                process.stdout.write(SUDO_REFUSED)
                return 1
            if part.endswith("chpasswd"):
                while line := await process.stdin.readline():
                    name, _, password = line.rstrip("\r\n").partition(":")
                    if name not in self.accounts:
                        process.stdout.write(f"chpasswd: line 1: user '{name}' does not exist\n")
                        return 1
                    self.accounts[name] = password
                    self.changes += 1
        return 0


async def _line(process: asyncssh.SSHServerProcess[str]) -> str:
    return (await process.stdin.readline()).rstrip("\r\n")


class _Server(asyncssh.SSHServer):
    def __init__(self, peer: Peer) -> None:
        self._peer = peer

    def begin_auth(self, username: str) -> bool:
        return True  # every user must authenticate

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        ok = self._peer.accounts.get(username) == password
        if ok:
            self._peer.logins += 1
        return ok
