"""The postgresql executor: log in with psycopg 3 (async) and run SQL statement templates.

Literals are escaped with ``sql_literal`` (quotes doubled, backslashes plain). That is only right
while ``standard_conforming_strings`` is on; with it off, ``\\'`` would end a literal early. It is
on by default since 9.1, but a role or database can turn it off, so the session asks for it in
the startup packet and checks the server's report before anything is rendered.

``ALTER ROLE … PASSWORD '…'`` with the password itself would put it in the server's log when
``log_statement`` is ``'ddl'`` or ``'all'`` (or ``log_min_error_statement`` catches a failure);
the shipped templates send its SCRAM-SHA-256 verifier instead (``{{ new_password |
scram_sha_256 }}``, computed by templating.scram), which the server stores as given.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import os
import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import psycopg
from psycopg import AsyncConnection, pq
from psycopg.abc import PQGenConn
from psycopg.errors import finish_pgconn
from psycopg.waiting import Wait

from executors.base import (
    Account,
    AuthenticationFailed,
    ConfigurationError,
    ConnectFailed,
    LoginProgress,
    Target,
    TemplateFailed,
    redact,
)
from executors.sql.script import (
    SqlExecutor,
    SqlSession,
    StatementFailure,
    StatementResult,
)
from templating.escaping import Escape, sql_literal

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_CLOSE_WAIT = 5.0
# How a refused login reads. libpq reports connection failures as text only (no SQLSTATE), so
# these are the server's English messages for 28P01/28000 (plus libpq's own for no password).
# A server with a non-English lc_messages needs lc_messages = 'C' to be recognised.
_AUTH_FAILURES = (
    "authentication failed",
    "no pg_hba.conf entry",
    "pg_hba.conf rejects connection",
    "is not permitted to log in",
    "no password supplied",
)
# SQLSTATE classes where the statement may not have run because of the connection or the
# server's state: connection exception, transaction rollback, resources, operator intervention,
# system error. A retry (after a probe) may well succeed.
_TRANSIENT_CLASSES = ("08", "40", "53", "55", "57", "58")
# Classes that say the SQL itself is wrong for this server: fix the template.
_TEMPLATE_CLASSES = ("42", "0A", "26", "34", "3F", "25", "2B", "3D")
_INSUFFICIENT_PRIVILEGE = "42501"


class PostgresqlExecutor(SqlExecutor[AsyncConnection[Any]]):
    name: ClassVar[str] = "postgresql"
    default_templates: ClassVar[dict[str, str]] = {
        "change": "postgresql/alter-role-self",
        "change-as-admin": "postgresql/alter-role-admin",
        "verify": "postgresql/verify-login",
        "activate": "postgresql/role-login",
        "deactivate": "postgresql/role-nologin",
        "jit-create": "postgresql/create-role",
        "jit-remove": "postgresql/drop-role",
    }
    default_port: ClassVar[int] = 5432

    def check_target(self, target: Target) -> None:
        _options(target)

    def insecure_transport(self, target: Target) -> str | None:
        sslmode = _options(target).sslmode
        if sslmode == "verify-full":
            return None
        return (
            f"sslmode is {sslmode!r}: only 'verify-full' both encrypts and checks that the "
            "server's certificate names the device"
        )

    async def _connect(
        self, target: Target, account: Account, secrets: tuple[str, ...]
    ) -> AsyncConnection[Any]:
        return await _connect(target, account, secrets)

    def _closing(
        self, conn: AsyncConnection[Any]
    ) -> AbstractAsyncContextManager[AsyncConnection[Any]]:
        return _closing(conn)

    def _session(self, conn: AsyncConnection[Any], target: Target) -> SqlSession:
        return _Session(conn, target)


class _Session:
    def __init__(self, conn: AsyncConnection[Any], target: Target) -> None:
        self._conn = conn
        self._target = target

    async def escape(self) -> Escape:
        # Asked for in the startup packet; the server reports the value it actually uses.
        if self._conn.info.parameter_status("standard_conforming_strings") != "on":
            raise StatementFailure(
                "template",
                "standard_conforming_strings is off for this session and could not be turned "
                "on, so literals cannot be escaped safely",
            )
        return sql_literal

    async def execute(self, sql: str) -> StatementResult:
        try:
            async with asyncio.timeout(self._target.read_timeout):
                cursor = await self._conn.execute(sql, prepare=False)
                row = await cursor.fetchone() if cursor.description else None
        except TimeoutError:
            raise StatementFailure(
                "lost", f"no answer within {self._target.read_timeout:g}s"
            ) from None
        except psycopg.Error as exc:
            raise _classified(exc) from None
        status = cursor.statusmessage or "OK"
        first = None if row is None or not row else ("NULL" if row[0] is None else str(row[0]))
        return StatementResult(status, first)


def _classified(exc: psycopg.Error) -> StatementFailure:
    state = exc.sqlstate or ""
    # The primary message only: psycopg's str() adds a "LINE 1: …" excerpt of the statement.
    message = exc.diag.message_primary or str(exc).strip() or type(exc).__name__
    if exc.diag.message_hint:
        message = f"{message} (hint: {exc.diag.message_hint})"
    if state:
        message = f"{message} [SQLSTATE {state}]"
    if not state or state[:2] in _TRANSIENT_CLASSES:
        # No SQLSTATE: the client lost the connection (psycopg.OperationalError and the like).
        return StatementFailure("lost", message)
    if state[:2] in _TEMPLATE_CLASSES and state != _INSUFFICIENT_PRIVILEGE:
        return StatementFailure("template", message)
    return StatementFailure("rejected", message)


@dataclass(frozen=True)
class _Options:
    database: str
    sslmode: str
    sslrootcert: str | None  # the CA file the server's certificate must chain to


def _options(target: Target) -> _Options:
    database = target.options.get("database", "postgres")
    sslmode = target.options.get("sslmode", "verify-full")
    sslrootcert = target.options.get("sslrootcert")
    if not isinstance(database, str) or not database:
        raise ConfigurationError(
            target.name,
            "options",
            f"device {target.name!r}: the option 'database' is {database!r}; give the name of "
            "a database the account may connect to (default 'postgres')",
        )
    if sslmode not in SSLMODES:
        raise ConfigurationError(
            target.name,
            "options",
            f"device {target.name!r}: the option 'sslmode' is {sslmode!r}; use one of "
            f"{', '.join(SSLMODES)}",
        )
    if sslrootcert is not None and (not isinstance(sslrootcert, str) or not sslrootcert):
        raise ConfigurationError(
            target.name,
            "options",
            f"device {target.name!r}: the option 'sslrootcert' is {sslrootcert!r}; give the "
            "path of the PEM file of the CA that signed the server's certificate",
        )
    return _Options(database, str(sslmode), sslrootcert)


class _Attempt:
    """What libpq had done when a connection attempt ended: read from its connection object
    after every step, so that it is known even when the attempt is cut off by a timeout."""

    def __init__(self) -> None:
        self.started = False
        self.password_used = False  # the server asked for the password and libpq answered

    def note(self, pgconn: pq.abc.PGconn) -> None:
        self.started = True
        self.password_used = self.password_used or bool(pgconn.used_password)

    def login(self) -> LoginProgress:
        if not self.started or self.password_used:
            return LoginProgress.UNKNOWN  # the password went out, or nothing was observed
        return LoginProgress.NOT_ATTEMPTED


_ATTEMPT: ContextVar[_Attempt | None] = ContextVar("keyturn_postgresql_attempt", default=None)


class _WatchedConnection(AsyncConnection[Any]):
    """psycopg's AsyncConnection, connecting through _watched_connect so that the _Attempt
    of the calling task sees libpq's progress (psycopg's own generator keeps it hidden)."""

    @classmethod
    def _connect_gen(cls, conninfo: str = "") -> PQGenConn[Self]:
        pgconn = yield from _watched_connect(conninfo, _ATTEMPT.get() or _Attempt())
        return cls(pgconn)


def _watched_connect(conninfo: str, attempt: _Attempt) -> PQGenConn[pq.abc.PGconn]:
    """psycopg.generators.connect (libpq's non-blocking connect loop), noting each step."""
    pgconn = pq.PGconn.connect_start(conninfo.encode())
    while True:
        attempt.note(pgconn)
        if pgconn.status == pq.ConnStatus.BAD:
            raise psycopg.OperationalError(
                f"connection is bad: {pgconn.get_error_message()}", pgconn=pgconn
            )
        status = pgconn.connect_poll()
        attempt.note(pgconn)
        if status == pq.PollingStatus.OK:
            break
        if status in (pq.PollingStatus.READING, pq.PollingStatus.WRITING):
            wait = Wait.R if status == pq.PollingStatus.READING else Wait.W
            while not (yield pgconn.socket, wait):
                pass
        elif status == pq.PollingStatus.FAILED:
            raise psycopg.OperationalError(
                f"connection failed: {pgconn.get_error_message()}",
                pgconn=finish_pgconn(pgconn),
            )
        else:
            raise psycopg.InternalError(
                f"unexpected poll status: {status}", pgconn=finish_pgconn(pgconn)
            )
    pgconn.nonblocking = 1
    return pgconn


async def _hostaddr(target: Target) -> str | None:
    """One resolved address, so that libpq makes exactly one login attempt.

    Given a name with several addresses, psycopg tries each in turn, and a refused password
    would cost the lockout budget once per address.
    """
    if target.address.startswith("/"):
        return None  # a Unix socket directory
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(target.address))
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(target.connect_timeout):
            infos = await loop.getaddrinfo(target.address, target.port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise ConnectFailed(
            target.name,
            "connect",
            f"cannot resolve {target.address!r}: {exc or 'timed out'}; check the device address",
        ) from None
    return str(infos[0][4][0])


async def _connect(
    target: Target, account: Account, secrets: tuple[str, ...]
) -> AsyncConnection[Any]:
    options = _options(target)
    hostaddr = await _hostaddr(target)
    where = f"{target.address}:{target.port}"
    params: dict[str, Any] = {
        "host": target.address,
        "port": target.port,
        "user": account.username,
        "password": account.password,
        "dbname": options.database,
        "sslmode": options.sslmode,
        # libpq takes whole seconds, at least 2.
        "connect_timeout": max(2, math.ceil(target.connect_timeout)),
        # Settings in force before the first statement; see the module docstring for why.
        "options": (
            "-c standard_conforming_strings=on "
            f"-c statement_timeout={max(1, int(target.read_timeout * 1000))}"
        ),
        "client_encoding": "UTF8",  # so non-ASCII passwords reach the server as UTF-8
        "application_name": "keyturn",
        "autocommit": True,  # each statement commits on its own, as in psql
        # Only what we were given: no ~/.pgpass of the worker's user filling in a password.
        "passfile": os.devnull,
    }
    if hostaddr is not None:
        params["hostaddr"] = hostaddr
    if options.sslrootcert is not None:
        params["sslrootcert"] = options.sslrootcert
    elif options.sslmode == "verify-full":
        # Without a CA file of its own, the server's certificate must chain to one the system
        # trusts (not libpq's default, ~/.postgresql/root.crt of the worker's OS user).
        params["sslrootcert"] = "system"
    attempt = _Attempt()
    token = _ATTEMPT.set(attempt)
    try:
        async with asyncio.timeout(target.connect_timeout + 1):
            return await _WatchedConnection.connect(**params)
    except TimeoutError:
        reason = f"no answer within {target.connect_timeout:g}s"
        raise _connect_failed(target, reason, secrets, attempt) from None
    except psycopg.errors.ConnectionTimeout:
        reason = f"no answer within {params['connect_timeout']}s"
        raise _connect_failed(target, reason, secrets, attempt) from None
    except psycopg.Error as exc:
        text = str(exc)
        lowered = text.lower()
        # The text only tells a refusal from other failures; whether the password reached the
        # server (and so whether the lockout charge is kept) comes from libpq's state.
        if any(pattern in lowered for pattern in _AUTH_FAILURES):
            raise AuthenticationFailed(
                target.name,
                "login",
                f"{where} refused the login of {account.username!r}: check the credential "
                "(reconcile it if it drifted) and pg_hba.conf; not retried, to spare the "
                "lockout budget",
            ) from None
        if "database" in lowered and "does not exist" in lowered:
            raise TemplateFailed(
                target.name,
                "connect",
                f"{where} has no database {options.database!r}: fix the device option 'database'",
                login=attempt.login(),
            ) from None
        raise _connect_failed(target, text, secrets, attempt) from None
    finally:
        _ATTEMPT.reset(token)


def _connect_failed(
    target: Target, reason: str, secrets: tuple[str, ...], attempt: _Attempt
) -> ConnectFailed:
    reason = " ".join(reason.split())  # libpq's messages span lines
    where = f"{target.address}:{target.port}"
    if attempt.login() is LoginProgress.UNKNOWN:
        # The password (or its SCRAM proof) went out and no verdict came back: the server
        # may count a failed login, so the failure keeps its lockout charge and stops.
        return ConnectFailed(
            target.name,
            "login",
            redact(
                f"the PostgreSQL login to {where} failed after the password was sent: "
                f"{reason}; the target may have counted a failed login, so this is not "
                "retried. Check the server (its log says why) and its authentication delay",
                secrets,
            ),
            login=attempt.login(),
        )
    return ConnectFailed(
        target.name,
        "connect",
        redact(
            f"cannot open a PostgreSQL session to {where}: {reason}; "
            "check the address/port, that the server is running and that the network path is "
            "open",
            secrets,
        ),
    )


@contextlib.asynccontextmanager
async def _closing(conn: AsyncConnection[Any]) -> AsyncIterator[AsyncConnection[Any]]:
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_WAIT):
                await conn.close()
