"""A throwaway MariaDB serving TLS, and throwaway accounts to log in as.

``running_server`` initialises a data directory in a temp dir (mariadb-install-db) and starts
``mariadbd`` as the ``mysql`` OS user on a free loopback port, with a certificate of a throwaway CA
(``client_options`` are the device options that verify it). The tests never use a server the
machine may run. ``plain_server`` is the server for the one test of the insecure path: the
throwaway one (it answers in cleartext a client that asks for no TLS) unless
KEYTURN_TEST_MYSQL_HOST/PORT/USER/PASSWORD name another. The tests log in as an administrator
(root without a password) to create ``kt_<random>``@'%' accounts, and drop them at cleanup. The
server has no anonymous accounts, which would otherwise shadow '%' accounts for logins from
localhost (MariaDB matches the most specific host first, then user).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
from pymysql.connections import Connection

from tests.servers import tls
from tests.servers.ports import free_port

READY_DEADLINE = 30.0
_ACCESS_DENIED = 1045
_STANDARD_PORT = 3306  # only ever for a server a developer names (override_address)


@dataclass
class MysqlServer:
    host: str
    port: int
    admin_user: str = "root"
    admin_password: str = field(default="", repr=False)
    ready_seconds: float | None = None
    start_seconds: float | None = None  # a throwaway server's start to ready, for the report
    ca_file: Path | None = None  # set when the server serves TLS with a test CA's certificate

    def client_options(self) -> dict[str, object]:
        """Device options of a verified TLS session to this server."""
        assert self.ca_file is not None, "this server does not serve TLS"
        return {"ssl": True, "ca_file": str(self.ca_file)}

    def admin(self) -> Connection:
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.admin_user,
            password=self.admin_password.encode(),
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=5,
        )

    def wait_ready(self) -> None:
        """Poll until the administrator can log in (the service may still be starting)."""
        began = time.monotonic()
        deadline = began + READY_DEADLINE
        while True:
            try:
                self.admin().close()
                break
            except pymysql.err.OperationalError as exc:
                if exc.args and exc.args[0] == _ACCESS_DENIED:
                    raise
                if time.monotonic() > deadline:
                    where = f"{self.host}:{self.port}"
                    raise RuntimeError(f"MariaDB at {where} is not up: {exc}") from None
                time.sleep(0.1)
        self.ready_seconds = time.monotonic() - began


class MysqlUsers:
    """Throwaway accounts; every one created is dropped at cleanup."""

    def __init__(self, server: MysqlServer) -> None:
        self._server = server
        self._accounts: list[tuple[str, str]] = []

    def create(
        self, password: str, name: str | None = None, host: str = "%", admin: bool = False
    ) -> str:
        name = name or f"kt_{secrets.token_hex(6)}"
        conn = self._server.admin()
        try:
            with conn.cursor() as cursor:
                # PyMySQL's %s parameters quote (and escape for the session) every value.
                cursor.execute("CREATE USER %s@%s IDENTIFIED BY %s", (name, host, password))
                self._accounts.append((name, host))
                if admin:
                    cursor.execute("GRANT CREATE USER ON *.* TO %s@%s", (name, host))
        finally:
            conn.close()
        return name

    def accounts(self) -> set[tuple[str, str]]:
        conn = self._server.admin()
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT User, Host FROM mysql.user")
                return {(str(user), str(host)) for user, host in cursor.fetchall()}
        finally:
            conn.close()

    def _works(self, name: str, password: str) -> bool:
        try:
            conn = pymysql.connect(
                host=self._server.host,
                port=self._server.port,
                user=name,
                password=password.encode("utf-8"),
                charset="utf8mb4",
                connect_timeout=5,
            )
        except pymysql.err.OperationalError as exc:
            # A locked account is refused whatever the password (MariaDB 4151, MySQL 3118).
            if exc.args and exc.args[0] in (_ACCESS_DENIED, 4151, 3118):
                return False
            raise
        conn.close()
        return True

    async def password_works(self, name: str, password: str) -> bool:
        """Does ``password`` log ``name`` in (independently of Keyturn)?"""
        return await asyncio.to_thread(self._works, name, password)

    def cleanup(self) -> None:
        conn = self._server.admin()
        try:
            with conn.cursor() as cursor:
                for name, host in self._accounts:
                    cursor.execute("DROP USER IF EXISTS %s@%s", (name, host))
        finally:
            conn.close()
        self._accounts.clear()


# The bodies of the fixtures that the executor tests and the end-to-end tests each declare (at
# their own scope).


def override_address() -> tuple[str, int] | None:
    """The server KEYTURN_TEST_MYSQL_HOST and _PORT name, if either is set (the other defaults to
    127.0.0.1, or MariaDB's standard port)."""
    host = os.environ.get("KEYTURN_TEST_MYSQL_HOST")
    port = os.environ.get("KEYTURN_TEST_MYSQL_PORT")
    if host is None and port is None:
        return None
    return host or "127.0.0.1", int(port or _STANDARD_PORT)


def plain_server(throwaway: MysqlServer) -> MysqlServer:
    """The server the KEYTURN_TEST_MYSQL_* variables name, once it answers; else ``throwaway``."""
    address = override_address()
    if address is None:
        return throwaway
    server = MysqlServer(
        host=address[0],
        port=address[1],
        admin_user=os.environ.get("KEYTURN_TEST_MYSQL_USER", "root"),
        admin_password=os.environ.get("KEYTURN_TEST_MYSQL_PASSWORD", ""),
    )
    server.wait_ready()
    return server


@contextmanager
def running_server() -> Iterator[MysqlServer]:
    """A throwaway MariaDB with TLS on a free loopback port, removed afterwards."""
    began = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="keyturn-mariadb-"))
    owner = pwd.getpwnam("mysql")
    files = tls.issue(directory / "tls")
    files.chown(owner.pw_uid, owner.pw_gid)
    os.chown(directory, owner.pw_uid, owner.pw_gid)
    installed = subprocess.run(
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={directory / 'data'}",
            "--user=mysql",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if installed.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed:\n{installed.stdout}\n{installed.stderr}")
    port = free_port()
    process = subprocess.Popen(
        [
            "mariadbd",
            "--no-defaults",
            f"--datadir={directory / 'data'}",
            "--user=mysql",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={directory / 'mysqld.sock'}",
            f"--pid-file={directory / 'mysqld.pid'}",
            "--skip-name-resolve",
            f"--ssl-cert={files.cert}",
            f"--ssl-key={files.key}",
            f"--ssl-ca={files.ca}",
            f"--log-error={directory / 'error.log'}",
            "--innodb-flush-log-at-trx-commit=0",  # throwaway data: no fsync per commit
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = MysqlServer(
        host="127.0.0.1", port=port, admin_user="root", admin_password="", ca_file=files.ca
    )
    try:
        server.wait_ready()
        server.start_seconds = time.monotonic() - began
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def users_on(server: MysqlServer) -> Iterator[MysqlUsers]:
    users = MysqlUsers(server)
    try:
        yield users
    finally:
        users.cleanup()
