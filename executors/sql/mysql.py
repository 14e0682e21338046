"""The mysql executor (MySQL and MariaDB): log in with PyMySQL and run SQL statement templates.

PyMySQL is blocking, so every call runs in a thread (asyncio.to_thread), each bounded by the
target's connect/read/write timeouts so a thread never outlives its call by much.

Escaping depends on the session's sql_mode: by default a backslash escapes the next character in
a literal (``mysql_literal`` doubles backslashes and escapes quotes), but with
NO_BACKSLASH_ESCAPES a backslash is a plain character (``sql_literal``: quotes doubled only).
The executor reads @@SESSION.sql_mode before rendering each statement that has tags, rather than
forcing a sql_mode of its own: the template runs under the server's rules (strictness, password
checks) and a template that changes sql_mode itself is still escaped right. The connection
character set is utf8mb4, which is also what keeps the backslash escape safe (the multi-byte
escaping attacks need GBK/Big5/SJIS).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

import pymysql
from pymysql.connections import Connection

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
    SYNTAX,
    SqlExecutor,
    SqlSession,
    StatementFailure,
    StatementResult,
)
from templating import TemplateContext
from templating.escaping import Escape, mysql_literal, sql_literal

_ACCESS_DENIED = 1045
# A locked account (ALTER USER … ACCOUNT LOCK): MySQL says 3118, MariaDB 4151. The server
# refuses the login whatever the password: a refusal, as a wrong password is.
_ACCOUNT_LOCKED = (3118, 4151)
_DB_ACCESS_DENIED = (1044, 1049)  # no access to / no such database: the login itself worked
# Client-side codes (can't connect, lost, gone away, …) and server states where the statement
# may not have run: lock wait timeout, deadlock, too many connections, query interrupted.
_LOST = frozenset({2002, 2003, 2005, 2006, 2013, 2055, 1040, 1053, 1205, 1213, 1317, 3024})
# The SQL is wrong for this server: syntax, unknown column/table/function, wrong arguments.
_TEMPLATE = frozenset({1054, 1064, 1146, 1149, 1305, 1582, 1583, 1584, 1193})
_DEFAULT_ACCOUNT_HOST = "%"


# A string: PyMySQL's Connection is generic in its type stubs only, not at run time.
class MysqlExecutor(SqlExecutor["Connection[Any]"]):
    name: ClassVar[str] = "mysql"
    syntax: ClassVar[str] = SYNTAX.replace(
        "{{ username | sql_ident }} for an identifier", "{{ username }}@{{ values.host }} account"
    )
    default_templates: ClassVar[dict[str, str]] = {
        "change": "mysql/set-password-self",
        "change-as-admin": "mysql/alter-user-admin",
        "verify": "mysql/verify-login",
        "activate": "mysql/account-unlock",
        "deactivate": "mysql/account-lock",
        "jit-create": "mysql/create-user",
        "jit-remove": "mysql/drop-user",
    }
    default_port: ClassVar[int] = 3306
    literal_context: ClassVar[str] = "mysql_literal"

    def check_target(self, target: Target) -> None:
        _settings(target)

    def insecure_transport(self, target: Target) -> str | None:
        if _settings(target).tls:
            return None
        return "the option 'ssl' is false: the session, password changes included, is not encrypted"

    async def _connect(
        self, target: Target, account: Account, secrets: tuple[str, ...]
    ) -> Connection[Any]:
        return await _connect(target, account, secrets)

    def _closing(self, conn: Connection[Any]) -> AbstractAsyncContextManager[Connection[Any]]:
        return _closing(conn)

    def _session(self, conn: Connection[Any], target: Target) -> SqlSession:
        return _Session(conn, target)

    def _context(self, target: Target, context: TemplateContext) -> TemplateContext:
        return with_account_host(target, context)


def with_account_host(target: Target, context: TemplateContext) -> TemplateContext:
    """``values.host``: the host part of the account ('user'@'host'), from the device option
    ``account_host`` unless the context already has one (default '%')."""
    host = target.options.get("account_host", _DEFAULT_ACCOUNT_HOST)
    if "host" in context.values or not isinstance(host, str):
        return context  # not a string: _settings refuses it before connecting
    return dataclasses.replace(context, values={**context.values, "host": host})


class _Session:
    def __init__(self, conn: Connection[Any], target: Target) -> None:
        self._conn = conn
        self._target = target

    async def escape(self) -> Escape:
        result = await self._query("SELECT @@SESSION.sql_mode")
        modes = (result.first_value or "").upper().split(",")
        return sql_literal if "NO_BACKSLASH_ESCAPES" in modes else mysql_literal

    async def execute(self, sql: str) -> StatementResult:
        return await self._query(sql)

    async def _query(self, sql: str) -> StatementResult:
        try:
            return await asyncio.to_thread(_execute, self._conn, sql)
        except pymysql.MySQLError as exc:
            raise _classified(exc) from None
        except OSError as exc:  # the socket failed under PyMySQL
            raise StatementFailure("lost", str(exc) or type(exc).__name__) from None


def _execute(conn: Connection[Any], sql: str) -> StatementResult:
    with conn.cursor() as cursor:
        count = cursor.execute(sql)
        row = cursor.fetchone() if cursor.description else None
    first = None
    if row:
        value = row[0]
        first = "NULL" if value is None else _text(value)
    return StatementResult(f"OK, {count} row(s)", first)


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _code_and_message(exc: pymysql.MySQLError) -> tuple[int | None, str]:
    args = exc.args
    code = args[0] if args and isinstance(args[0], int) else None
    message = str(args[1]) if len(args) > 1 else (str(exc) or type(exc).__name__)
    return code, message


def _classified(exc: pymysql.MySQLError) -> StatementFailure:
    code, message = _code_and_message(exc)
    if code == 1064:
        # "… near '<the rest of the statement, cut at 80 characters>'": the cut can leave part
        # of a secret that redaction would not recognise, so that excerpt is never quoted.
        message = message.split(" near '", 1)[0] + " (the statement is in the transcript)"
    shown = f"{message} [error {code}]" if code is not None else message
    if code is None or code in _LOST or isinstance(exc, pymysql.err.InterfaceError):
        return StatementFailure("lost", shown)
    if code in _TEMPLATE:
        return StatementFailure("template", shown)
    return StatementFailure("rejected", shown)


@dataclasses.dataclass(frozen=True)
class _Settings:
    database: str | None
    tls: bool
    ca_file: str | None  # the CA the server's certificate must chain to (else the system's)


def _settings(target: Target) -> _Settings:
    """The device's options, checked before connecting."""
    options = target.options

    def problem(cause: str) -> ConfigurationError:
        return ConfigurationError(target.name, "options", f"device {target.name!r}: {cause}")

    database = options.get("database")
    if database is not None and (not isinstance(database, str) or not database):
        raise problem(
            f"the option 'database' is {database!r}; give a database name, or leave it out "
            "to connect to none"
        )
    tls = options.get("ssl", True)
    if not isinstance(tls, bool):
        raise problem(f"the option 'ssl' is {tls!r}; it must be true or false")
    ca_file = options.get("ca_file")
    if ca_file is not None and (not isinstance(ca_file, str) or not ca_file):
        raise problem(f"the option 'ca_file' is {ca_file!r}; give the path of a PEM file")
    host = options.get("account_host", _DEFAULT_ACCOUNT_HOST)
    if not isinstance(host, str) or not host:
        raise problem(
            f"the option 'account_host' is {host!r}; give the host part of the accounts "
            f"('user'@'host'), e.g. '%' (the default) or 'localhost'"
        )
    return _Settings(database, tls, ca_file)


class _WatchedTls:
    """The SSLContext PyMySQL upgrades the connection with, noting whether the TLS handshake
    began and completed (PyMySQL calls only wrap_socket, and sends the password after it)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self.started = False
        self.done = False

    def wrap_socket(self, sock: Any, server_hostname: str | None = None) -> ssl.SSLSocket:
        self.started = True
        wrapped = self._context.wrap_socket(sock, server_hostname=server_hostname)
        self.done = True
        return wrapped


class _Attempt:
    """How far a PyMySQL connect got, from what the connection object shows: the server's
    greeting read (server_version), the TLS upgrade begun and done. PyMySQL sends the account's
    password (its scramble) right after those, in its handshake response."""

    def __init__(self, tls_required: bool) -> None:
        self._tls_required = tls_required
        self._conn: Connection[Any] | None = None
        self._tls: _WatchedTls | None = None

    def attach(self, conn: Connection[Any]) -> None:
        self._conn = conn
        if getattr(conn, "ssl", False) and isinstance(getattr(conn, "ctx", None), ssl.SSLContext):
            self._tls = _WatchedTls(conn.ctx)
            conn.ctx = self._tls

    def login(self) -> LoginProgress:
        if self._conn is None or getattr(self._conn, "server_version", None) is None:
            return LoginProgress.NOT_ATTEMPTED  # no greeting: the handshake never began
        tls_done = self._tls is not None and self._tls.done
        if self._tls is not None and self._tls.started and not tls_done:
            return LoginProgress.NOT_ATTEMPTED  # the TLS upgrade failed, before the password
        if self._tls_required and not tls_done:
            return LoginProgress.NOT_ATTEMPTED  # PyMySQL never sends it without the TLS asked
        return LoginProgress.UNKNOWN


def _ssl_context(settings: _Settings) -> ssl.SSLContext | None:
    if not settings.tls:
        return None
    # Verified TLS: the server's certificate must chain to a trusted CA and name the address.
    return ssl.create_default_context(cafile=settings.ca_file)


def _open(
    target: Target, account: Account, settings: _Settings, attempt: _Attempt
) -> Connection[Any]:
    conn: Connection[Any] = Connection(
        host=target.address,
        port=target.port,
        user=account.username,
        # As UTF-8 bytes: PyMySQL would encode a str password as latin-1, and the server hashed
        # the password from the utf8mb4 bytes of the statement that set it.
        password=account.password.encode("utf-8"),
        database=settings.database,
        charset="utf8mb4",
        connect_timeout=target.connect_timeout,
        read_timeout=target.read_timeout,
        write_timeout=target.read_timeout,
        ssl=_ssl_context(settings),
        autocommit=True,
        # No option files of the worker's user changing where or how we connect.
        read_default_file=None,
        local_infile=False,
        defer_connect=True,
    )
    attempt.attach(conn)
    conn.connect()
    return conn


async def _connect(target: Target, account: Account, secrets: tuple[str, ...]) -> Connection[Any]:
    settings = _settings(target)
    attempt = _Attempt(tls_required=settings.tls)
    where = f"{target.address}:{target.port}"
    try:
        return await asyncio.to_thread(_open, target, account, settings, attempt)
    except pymysql.MySQLError as exc:
        code, message = _code_and_message(exc)
        # The server's error code in answer to the handshake response says refused (1045) or
        # accepted but not allowed that database (1044/1049); anything else is unclassified.
        if code in _ACCOUNT_LOCKED:
            raise AuthenticationFailed(
                target.name,
                "login",
                f"{where} refused {account.username!r}: the account is locked",
            ) from None
        if code == _ACCESS_DENIED:
            raise AuthenticationFailed(
                target.name,
                "login",
                f"{where} refused the password of {account.username!r}: check the credential "
                "(reconcile it if it drifted) and the account's host part; not retried, to "
                "spare the lockout budget",
            ) from None
        if code in _DB_ACCESS_DENIED:
            raise TemplateFailed(
                target.name,
                "connect",
                f"{where}: {message}: fix the device option 'database' (or grant access to it)",
                login=LoginProgress.ACCEPTED,
            ) from None
        raise _connect_failed(target, f"{message} [error {code}]", secrets, attempt) from None
    except OSError as exc:
        raise _connect_failed(target, str(exc) or type(exc).__name__, secrets, attempt) from None


def _connect_failed(
    target: Target, reason: str, secrets: tuple[str, ...], attempt: _Attempt
) -> ConnectFailed:
    where = f"{target.address}:{target.port}"
    login = attempt.login()
    if login is LoginProgress.UNKNOWN:
        return ConnectFailed(
            target.name,
            "login",
            redact(
                f"the MySQL login to {where} failed after the password was sent: {reason}; "
                "the target may have counted a failed login, so this is not retried",
                secrets,
            ),
            login=login,
        )
    return ConnectFailed(
        target.name,
        "connect",
        redact(
            f"cannot open a MySQL session to {where}: {reason}; check "
            "the address/port, that the server is running and that the network path is open",
            secrets,
        ),
        login=login,
    )


@contextlib.asynccontextmanager
async def _closing(conn: Connection[Any]) -> AsyncIterator[Connection[Any]]:
    try:
        yield conn
    finally:
        # close() sends COM_QUIT on the socket, bounded by write_timeout: a thread, like the rest.
        with contextlib.suppress(Exception):
            await asyncio.to_thread(conn.close)
