"""A real OpenSSH server on a loopback port, and throwaway local users to log in as.

Tests run as root on a disposable machine: sshd needs root to switch to the logged-in user, and
the users are real entries in /etc/passwd so PAM, passwd and chpasswd behave exactly as on a
target. Everything created here is removed at teardown.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import asyncssh

from tests.servers.ports import free_port

SSHD = "/usr/sbin/sshd"
START_DEADLINE = 15.0


def _answers_banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.settimeout(1.0)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


class Sshd:
    """``sshd -D`` with its own host key and config in a temp dir. Restartable on the same port.

    ``authorized_keys_file``: sshd's AuthorizedKeysFile (relative to the home). Two servers with
    different files are two hosts as far as keys go, though they share the local accounts.
    ``extra_config``: more sshd_config lines (``Ciphers …``: a server that offers less)."""

    def __init__(
        self, authorized_keys_file: str = ".ssh/authorized_keys", extra_config: Sequence[str] = ()
    ) -> None:
        self.authorized_keys_file = authorized_keys_file
        self.extra_config = tuple(extra_config)
        self._dir = Path(tempfile.mkdtemp(prefix="keyturn-sshd-"))
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._host_key = self._dir / "ssh_host_ed25519_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self._host_key)],
            check=True,
        )

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("sshd was never started")
        return self._port

    @property
    def host_key_line(self) -> str:
        """The public host key as OpenSSH writes it, without the comment: ``ssh-ed25519 AAAA…``."""
        kind, blob, *_ = self._host_key.with_suffix(".pub").read_text().split()
        return f"{kind} {blob}"

    @property
    def log_path(self) -> Path:
        return self._dir / "sshd.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _write_config(self) -> Path:
        config = self._dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {self.port}",
                    f"HostKey {self._host_key}",
                    f"PidFile {self._dir / 'sshd.pid'}",
                    "PasswordAuthentication yes",
                    f"AuthorizedKeysFile {self.authorized_keys_file}",
                    "KbdInteractiveAuthentication yes",
                    "UsePAM yes",
                    "PermitRootLogin no",
                    # Tests open many connections at once (hypothesis, parallel probes).
                    "MaxStartups 100:30:200",
                    "MaxSessions 50",
                    "LogLevel VERBOSE",
                    # Throwaway home directories are not worth getting permissions right for.
                    "StrictModes no",
                    "PrintMotd no",
                    *self.extra_config,
                    "",
                ]
            )
        )
        return config

    def start(self) -> None:
        if self.running:
            return
        if self._port is None:
            self._port = free_port()
        # sshd refuses to start without its privilege-separation directory.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        os.chmod("/run/sshd", 0o755)
        config = self._write_config()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + START_DEADLINE
        while not _answers_banner(self.port):
            if self._process.poll() is not None:
                raise RuntimeError(f"sshd exited at start:\n{self.log_path.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not answer on port {self.port}:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def close(self) -> None:
        """Stop and remove the temp dir (host key, config, log)."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Users:
    """Throwaway local accounts (``kt_<random>``), removed with their sudoers files at cleanup."""

    def __init__(self, sshd: Sshd) -> None:
        self._sshd = sshd
        self._users: list[str] = []
        self._sudoers: list[Path] = []

    def create(self, password: str) -> str:
        name = f"kt_{secrets.token_hex(6)}"
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True)
        self._users.append(name)
        self.set_password(name, password)
        return name

    def set_password(self, user: str, password: str) -> None:
        # chpasswd reads "user:password" on stdin, so the password is on no command line.
        subprocess.run(["chpasswd"], input=f"{user}:{password}\n".encode(), check=True)

    def make_admin(self, user: str, commands: tuple[str, ...] = ("/usr/sbin/chpasswd",)) -> None:
        """Let ``user`` run ``commands`` (default: chpasswd) as root through sudo, asked for its
        own password."""
        path = Path(f"/etc/sudoers.d/keyturn-test-{user}")
        path.write_text(f"{user} ALL=(root) {', '.join(commands)}\n")
        path.chmod(0o440)
        self._sudoers.append(path)
        subprocess.run(["visudo", "-c", "-q", "-f", str(path)], check=True)

    def new_name(self) -> str:
        """A name for an account something else creates (a just-in-time account), removed at
        cleanup like the others if it exists then."""
        name = f"kt_{secrets.token_hex(6)}"
        self._users.append(name)
        return name

    @staticmethod
    def exists(user: str) -> bool:
        return subprocess.run(["id", "-u", user], capture_output=True).returncode == 0

    def authorize_key(self, user: str) -> asyncssh.SSHKey:
        """A fresh key pair whose public key is in ``user``'s authorized_keys."""
        key = asyncssh.generate_private_key("ssh-ed25519")
        ssh_dir = Path(f"~{user}").expanduser() / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_bytes(key.export_public_key())
        shutil.chown(ssh_dir, user, user)
        shutil.chown(ssh_dir / "authorized_keys", user, user)
        return key

    def allow_shell_as(self, admin: str, user: str) -> None:
        """Let ``admin`` run sh as ``user`` through sudo, asked for its own password (what the
        ssh key templates' sudo variants need to edit that account's authorized_keys)."""
        path = Path(f"/etc/sudoers.d/keyturn-test-{admin}-as-{user}")
        path.write_text(f"{admin} ALL=({user}) /usr/bin/sh, /bin/sh\n")
        path.chmod(0o440)
        self._sudoers.append(path)
        subprocess.run(["visudo", "-c", "-q", "-f", str(path)], check=True)

    async def password_works(self, user: str, password: str) -> bool:
        """Does ``password`` log ``user`` in through the fixture sshd (independently of Keyturn)?"""
        try:
            async with asyncssh.connect(
                "127.0.0.1",
                port=self._sshd.port,
                username=user,
                password=password,
                known_hosts=([asyncssh.import_public_key(self._sshd.host_key_line)], [], []),
                client_keys=None,
                agent_path=None,
                preferred_auth="password",
                connect_timeout=10,
            ):
                return True
        except asyncssh.PermissionDenied:
            return False

    async def key_works(
        self, user: str, key: asyncssh.SSHKey | str, sshd: Sshd | None = None
    ) -> bool:
        """Does ``key`` (a key or an OpenSSH private key) log ``user`` in through ``sshd``
        (default: the fixture's), by public key alone, as far as running a command?"""
        server = sshd or self._sshd
        client_key = asyncssh.import_private_key(key) if isinstance(key, str) else key
        try:
            async with asyncssh.connect(
                "127.0.0.1",
                port=server.port,
                username=user,
                known_hosts=([asyncssh.import_public_key(server.host_key_line)], [], []),
                client_keys=[client_key],
                password=None,
                agent_path=None,
                config=None,
                preferred_auth="publickey",
                connect_timeout=10,
            ) as conn:
                # An expired account may pass authentication and be stopped at the session.
                result = await conn.run("true", check=False, timeout=10)
                return result.exit_status == 0
        except (asyncssh.PermissionDenied, asyncssh.ChannelOpenError, asyncssh.ConnectionLost):
            return False

    def authorized_keys_path(self, user: str, sshd: Sshd | None = None) -> Path:
        return Path(f"/home/{user}") / (sshd or self._sshd).authorized_keys_file

    def write_authorized_keys(self, user: str, text: str, sshd: Sshd | None = None) -> None:
        """The file as the account itself would have it: owned by it, in a directory it owns."""
        path = self.authorized_keys_path(user, sshd)
        subprocess.run(["install", "-d", "-o", user, "-g", user, "-m", "700", str(path.parent)])
        path.write_text(text)
        shutil.chown(path, user, user)
        path.chmod(0o600)

    def read_authorized_keys(self, user: str, sshd: Sshd | None = None) -> str:
        return self.authorized_keys_path(user, sshd).read_text()

    def cleanup(self) -> None:
        for path in self._sudoers:
            path.unlink(missing_ok=True)
        for user in self._users:
            # -f: a session of the user may still be closing; userdel would refuse without it.
            subprocess.run(["userdel", "-f", "-r", user], capture_output=True)
        self._sudoers.clear()
        self._users.clear()
