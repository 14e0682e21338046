"""A throwaway PostgreSQL cluster on a loopback port, and throwaway roles to log in as.

The tests never use a cluster the machine may run (one that trusts logins from 127.0.0.1 would
let a wrong password in, and nothing may depend on a service someone left running). They run their
own cluster, initdb'd into a temp dir with ``scram-sha-256`` for every connection, started as the
``postgres`` OS user (initdb and postgres refuse to run as root). Start to ready takes ~1 s. It
serves TLS (``ssl=on``) with a certificate of a throwaway CA: ``client_options`` are the device
options that verify it (``sslmode=verify-full``). The store's tests create databases on it
(``new_databases``) and log in as the superuser (``url``).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from tests.servers import tls
from tests.servers.ports import free_port

START_DEADLINE = 30.0
OS_USER = "postgres"
SUPERUSER = "postgres"
# SQLSTATEs of a refused login: invalid_password, invalid_authorization_specification.
_AUTH_SQLSTATES = ("28P01", "28000")


def _bin_dir() -> Path:
    """The newest installed server's bin dir (Debian: /usr/lib/postgresql/<major>/bin)."""
    override = os.environ.get("KEYTURN_TEST_PG_BINDIR")
    if override:
        return Path(override)
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    if not found:
        raise RuntimeError("no PostgreSQL server found under /usr/lib/postgresql/*/bin")
    return Path(found[-1]).parent


class PostgresCluster:
    """initdb + pg_ctl in a temp dir owned by the postgres OS user. Restartable on one port."""

    def __init__(self, settings: str = "") -> None:
        self._bin = _bin_dir()
        self._settings = settings  # more server options, e.g. "-c auth_delay.milliseconds=…"
        self._dir = Path(tempfile.mkdtemp(prefix="keyturn-pg-"))
        owner = pwd.getpwnam(OS_USER)
        os.chown(self._dir, owner.pw_uid, owner.pw_gid)
        self.tls = tls.issue(self._dir / "tls")
        self.tls.chown(owner.pw_uid, owner.pw_gid)
        self.superuser_password = secrets.token_urlsafe(16)
        self._port: int | None = None
        self.start_seconds: float | None = None  # how long the first start took, for the report

    def client_options(self) -> dict[str, str]:
        """Device options of a verified TLS session to this cluster."""
        return {"sslmode": "verify-full", "sslrootcert": str(self.tls.ca)}

    @property
    def data_dir(self) -> Path:
        return self._dir / "data"

    @property
    def log_path(self) -> Path:
        return self._dir / "postgres.log"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the cluster was never started")
        return self._port

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", OS_USER, "--", *args], capture_output=True, text=True, check=False
        )

    def _initdb(self) -> None:
        pwfile = self._dir / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        owner = pwd.getpwnam(OS_USER)
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        done = self._run(
            str(self._bin / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",  # throwaway data: durability is not worth the fsyncs
        )
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")

    def running(self) -> bool:
        if self._port is None:
            return False
        ready = subprocess.run(
            [str(self._bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self._port)],
            check=False,
        )
        return ready.returncode == 0

    def start(self) -> None:
        if self.running():
            return
        began = time.monotonic()
        if not self.data_dir.exists():
            self._initdb()
        if self._port is None:
            self._port = free_port()
        options = (
            f"-p {self._port} -k {self._dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c log_connections=on -c ssl=on -c ssl_cert_file={self.tls.cert} "
            f"-c ssl_key_file={self.tls.key} {self._settings}"
        )
        started = self._run(
            str(self._bin / "pg_ctl"),
            "start",
            "-W",  # don't let pg_ctl wait: readiness is polled below, with our own deadline
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-o",
            options,
        )
        if started.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed:\n{started.stderr}\n{self.log_tail()}")
        deadline = time.monotonic() + START_DEADLINE
        while not self.running():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"PostgreSQL did not get ready:\n{self.log_tail()}")
            time.sleep(0.05)
        if self.start_seconds is None:
            self.start_seconds = time.monotonic() - began

    def stop(self) -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        self._run(str(self._bin / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def url(self, database: str = "postgres", driver: str = "postgresql") -> str:
        """The superuser's URL of ``database``; ``postgresql+psycopg`` is SQLAlchemy's driver."""
        return f"{driver}://{SUPERUSER}:{self.superuser_password}@127.0.0.1:{self.port}/{database}"

    @contextmanager
    def new_databases(self, count: int = 1) -> Iterator[list[str]]:
        """``count`` new empty databases (their names), dropped afterwards with any sessions."""
        names = [f"keyturn_test_{secrets.token_hex(4)}" for _ in range(count)]
        with self.superuser_connection() as admin:
            for name in names:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield names
        finally:
            with self.superuser_connection() as admin:
                for name in names:
                    admin.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(name)
                        )
                    )

    def superuser_connection(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            password=self.superuser_password,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        )


class Roles:
    """Throwaway login roles (``kt_<random>`` unless named), dropped at cleanup."""

    def __init__(self, cluster: PostgresCluster) -> None:
        self._cluster = cluster
        self._roles: list[str] = []

    def create(self, password: str, name: str | None = None, admin: bool = False) -> str:
        name = name or f"kt_{secrets.token_hex(6)}"
        with self._cluster.superuser_connection() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
                    sql.Identifier(name),
                    sql.SQL("CREATEROLE" if admin else "NOCREATEROLE"),
                    sql.Literal(password),
                )
            )
        self._roles.append(name)
        return name

    def role_names(self) -> set[str]:
        with self._cluster.superuser_connection() as conn:
            return {str(row[0]) for row in conn.execute("SELECT rolname FROM pg_roles")}

    def attributes(self, name: str) -> tuple[object, ...] | None:
        """The role's privilege attributes, to show nothing but the password changed."""
        with self._cluster.superuser_connection() as conn:
            return conn.execute(
                "SELECT rolsuper, rolcreaterole, rolcreatedb, rolcanlogin, rolvaliduntil"
                " FROM pg_roles WHERE rolname = %s",
                (name,),
            ).fetchone()

    async def password_works(self, name: str, password: str) -> bool:
        """Does ``password`` log ``name`` in (independently of Keyturn)?"""
        try:
            conn = await psycopg.AsyncConnection.connect(
                host="127.0.0.1",
                port=self._cluster.port,
                user=name,
                password=password,
                dbname="postgres",
                connect_timeout=10,
            )
        except psycopg.OperationalError as exc:
            refused = ("authentication failed", "is not permitted to log in")  # NOLOGIN
            if exc.sqlstate in _AUTH_SQLSTATES or any(text in str(exc) for text in refused):
                return False
            raise
        await conn.close()
        return True

    def cleanup(self) -> None:
        with self._cluster.superuser_connection() as conn:
            for name in self._roles:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        self._roles.clear()


# The bodies of the fixtures that the executor tests and the end-to-end tests each declare (at
# their own scope): started before, cleaned up after, even when the test failed.


@contextmanager
def running_cluster(settings: str = "") -> Iterator[PostgresCluster]:
    cluster = PostgresCluster(settings)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


@contextmanager
def roles_on(cluster: PostgresCluster) -> Iterator[Roles]:
    roles = Roles(cluster)
    try:
        yield roles
    finally:
        roles.cleanup()
