"""A throwaway RabbitMQ node whose management API is the http executor's real peer.

The machine's own RabbitMQ (if any) is never used. The node has a name, AMQP, distribution and
management ports of its own (all on 127.0.0.1), its own config, enabled-plugins file (with
``rabbitmq_management``), mnesia and log dirs in a temp dir, and runs as the ``rabbitmq`` OS user;
only epmd, the Erlang port mapper, may be shared with other nodes. One node serves the whole test
process: ``running_rabbitmq`` starts it on first use (or tests/conftest.py boots it in the
background once it sees a collected test that needs it) and it stops at exit. Users are created and
deleted through the management API as ``guest``, the administrator a fresh node creates, who may
log in from loopback only.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from tests.servers.ports import free_port

# Chosen once per test process, before the node starts, so that devices and templates can name
# the API as a constant (the node is started on this port when a test first needs it).
MANAGEMENT_PORT = free_port()
BASE_URL = f"http://127.0.0.1:{MANAGEMENT_PORT}"
ADMIN = ("guest", "guest")
READY_DEADLINE = 60.0
START_DEADLINE = 120.0  # a cold Erlang VM boots in ~10-30 s on a busy two-core machine
STOP_DEADLINE = 30.0
OS_USER = "rabbitmq"
SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # not /usr/sbin's wrapper: it logs to /var/log


def _path(name: str) -> str:
    return f"/api/users/{quote(name, safe='')}"


class RabbitNode:
    """rabbitmq-server in a temp dir owned by the rabbitmq OS user, on loopback ports of its own."""

    def __init__(self, management_port: int | None = None) -> None:
        self.name = f"keyturn-{secrets.token_hex(4)}@localhost"
        ports: set[int] = {management_port or free_port()}
        self.management_port = next(iter(ports))
        while len(ports) < 3:  # the kernel may hand out a port twice once its socket is closed
            ports.add(free_port())
        self.amqp_port, self.dist_port = sorted(ports - {self.management_port})
        self._dir = Path(tempfile.mkdtemp(prefix="keyturn-rabbitmq-"))
        self._process: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None  # start to management API ready, for the report

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def log_path(self) -> Path:
        return self._dir / "log" / f"{self.name}.log"

    def _write_files(self) -> None:
        (self._dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (self._dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.amqp_port}\n"
            "management.tcp.ip = 127.0.0.1\n"
            f"management.tcp.port = {self.management_port}\n"
        )
        # Empty, so that /etc/rabbitmq/rabbitmq-env.conf (which names the system node) is not read.
        (self._dir / "rabbitmq-env.conf").write_text("")
        owner = pwd.getpwnam(OS_USER)
        for path in (self._dir, *self._dir.iterdir()):
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def _environment(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self._dir),  # the node's Erlang cookie is written here, not shared
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(self._dir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self._dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self._dir / "advanced.config"),  # none
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self._dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self._dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self._dir / "log"),
            "RABBITMQ_PID_FILE": str(self._dir / "node.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",  # an epmd this node starts listens on loopback only
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self) -> None:
        began = time.monotonic()
        self._write_files()
        environment = [f"{key}={value}" for key, value in self._environment().items()]
        # env -i: runuser would set HOME to the rabbitmq user's (the system node's cookie) and
        # pass on whatever RABBITMQ_* or ERL_* variables the caller happens to have.
        with (self._dir / "stdout.log").open("wb") as output:  # the child keeps its own copy
            self._process = subprocess.Popen(
                ["runuser", "-u", OS_USER, "--", "env", "-i", *environment, SERVER],
                cwd=self._dir,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a process group of its own, for close()
            )
        client = RabbitMQ(self.base_url)
        try:
            client.wait_ready(START_DEADLINE, alive=self._alive)
        except RuntimeError:
            self.close()
            raise
        finally:
            client.close()
        self.start_seconds = time.monotonic() - began

    def _alive(self) -> str | None:
        """None while the node runs; else why it ended (the tail of its output)."""
        if self._process is None or self._process.poll() is None:
            return None
        return f"rabbitmq-server exited {self._process.returncode}:\n{self.log_tail()}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self._dir / "stdout.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """Stop the node (SIGTERM to the Erlang VM is a clean shutdown) and remove its files."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # The whole chain this started (runuser, the start script, the VM), booted or not.
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


_node: RabbitNode | None = None
_node_lock = threading.Lock()


def shared_node() -> RabbitNode:
    """The test process's node, started on first use and stopped when the process exits."""
    global _node
    with _node_lock:
        if _node is None:
            node = RabbitNode(MANAGEMENT_PORT)
            atexit.register(node.close)  # first: a node still booting at exit is stopped too
            node.start()
            print(f"\nRabbitMQ answered {node.start_seconds:.3f}s after start")  # noqa: T201 (for -s)
            _node = node
        return _node


def boot_shared_node() -> None:
    """Start the node in the background: the Erlang VM boots while other tests run, and the first
    test that needs it waits only for the rest. A failure shows when that test calls
    ``shared_node`` (which tries again and raises)."""
    threading.Thread(target=_boot_quietly, name="rabbitmq-boot", daemon=True).start()


def _boot_quietly() -> None:
    with contextlib.suppress(Exception):  # reported by the test that needs the node
        shared_node()


class RabbitMQ:
    """A client for the management API as the built-in administrator."""

    def __init__(self, base_url: str = BASE_URL) -> None:
        self.base_url = base_url
        self._client = httpx.Client(base_url=base_url, auth=ADMIN, timeout=10.0, trust_env=False)
        self.ready_after: float | None = None  # seconds the API took to answer

    def wait_ready(
        self, deadline: float = READY_DEADLINE, alive: Callable[[], str | None] = lambda: None
    ) -> float:
        """Poll until the API answers as guest; the seconds it took. Fails with what it saw, or
        at once when ``alive`` says why the server has ended."""
        started = time.monotonic()
        last = "no answer yet"
        while True:
            ended = alive()
            if ended is not None:
                raise RuntimeError(f"RabbitMQ ended before its API answered: {ended}")
            try:
                response = self._client.get("/api/overview")
                if response.status_code == 200:
                    self.ready_after = time.monotonic() - started
                    return self.ready_after
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = str(exc) or type(exc).__name__
            if time.monotonic() - started > deadline:
                raise RuntimeError(
                    f"RabbitMQ's management API at {self.base_url} did not answer within "
                    f"{deadline:g}s ({last}); scripts/setup-test-deps installs rabbitmq-server"
                )
            time.sleep(0.2)

    def close(self) -> None:
        self._client.close()

    def put_user(self, name: str, password: str, tags: list[str]) -> None:
        response = self._client.put(_path(name), json={"password": password, "tags": tags})
        assert response.status_code in (201, 204), response.text

    def delete_user(self, name: str) -> None:
        response = self._client.delete(_path(name))
        assert response.status_code in (204, 404), response.text

    def user(self, name: str) -> dict[str, Any]:
        response = self._client.get(_path(name))
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def user_names(self) -> set[str]:
        response = self._client.get("/api/users")
        assert response.status_code == 200, response.text
        return {user["name"] for user in response.json()}

    def password_works(self, name: str, password: str) -> bool:
        """Does ``password`` log ``name`` in? (GET /api/whoami as that user.)"""
        with httpx.Client(base_url=self.base_url, timeout=10.0, trust_env=False) as client:
            response = client.get("/api/whoami", auth=(name, password))
        if response.status_code == 200:
            assert response.json()["name"] == name
            return True
        # 401 "Not management user" means the password was right but the user has no tags.
        assert response.status_code == 401, response.text
        return "Not management user" in response.text


class RabbitUsers:
    """Throwaway users; every one created here is deleted at cleanup."""

    def __init__(self, rabbitmq: RabbitMQ) -> None:
        self._rabbitmq = rabbitmq
        self._created: list[str] = []

    def create(
        self, password: str, tags: tuple[str, ...] = ("management",), name: str | None = None
    ) -> str:
        name = name or f"kt-{secrets.token_hex(4)}"
        self._created.append(name)
        self._rabbitmq.put_user(name, password, list(tags))
        return name

    def cleanup(self) -> None:
        for name in self._created:
            self._rabbitmq.delete_user(name)
        self._created.clear()


# The bodies of the fixtures that the executor tests and the end-to-end tests each declare (at
# their own scope).


@contextmanager
def running_rabbitmq() -> Iterator[RabbitMQ]:
    server = RabbitMQ(shared_node().base_url)
    server.wait_ready()
    try:
        yield server
    finally:
        server.close()


@contextmanager
def users_on(server: RabbitMQ) -> Iterator[RabbitUsers]:
    users = RabbitUsers(server)
    try:
        yield users
    finally:
        users.cleanup()
