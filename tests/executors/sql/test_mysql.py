"""MysqlExecutor against a real MariaDB, the session's throwaway server (no Temporal involved)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executors.base import (
    Account,
    AuthenticationFailed,
    ChangeRejected,
    ConfigurationError,
    ConnectFailed,
    ExecutorError,
    LoginProgress,
    LoginRequest,
    RunRequest,
    Target,
    TemplateFailed,
    get_executor,
)
from executors.shipped import shipped_templates
from executors.sql.mysql import MysqlExecutor
from templating import TemplateContext, TemplateSyntaxProblem
from tests.executors.helpers import assert_no_secret, error_texts, make_context, make_target
from tests.servers.mysql import MysqlServer, MysqlUsers, users_on

TEMPLATES = {t.name: t.body for t in shipped_templates()}
EXECUTOR = MysqlExecutor()
SPECIALS = "'\"\\%$; {}é ßж_-"
# utf8mb4 text without NUL; surrogates can't be encoded at all.
ALPHABET = st.characters(codec="utf-8", exclude_characters="\x00")
passwords = st.text(alphabet=ALPHABET, min_size=1, max_size=24).flatmap(
    lambda base: st.permutations(list(base + SPECIALS)).map("".join)
)
NO_BACKSLASH_FIRST = (
    "SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',NO_BACKSLASH_ESCAPES');\n"
    "SET PASSWORD = PASSWORD({{ new_password }});\n"
)


def target(server: MysqlServer, **overrides: object) -> Target:
    """A target over verified TLS; ``options`` given are added to the TLS ones."""
    options = {**server.client_options(), **dict(overrides.pop("options", {}))}  # type: ignore[call-overload]
    return make_target("mysql-test", server.host, server.port, options=options, **overrides)


def context(
    server: MysqlServer, user: str, current: str, new: str, auth: str = "", auth_pw: str = ""
) -> TemplateContext:
    return make_context("mysql-test", server.host, server.port, user, current, new, auth, auth_pw)


async def change(
    server: MysqlServer,
    user: str,
    current: str,
    new: str,
    template: str = "",
    **target_fields: object,
) -> str:
    result = await EXECUTOR.run(
        RunRequest(
            target(server, **target_fields),
            Account(user, current),
            template or TEMPLATES["mysql/set-password-self"],
            context(server, user, current, new),
        )
    )
    return result.transcript


async def verify(server: MysqlServer, user: str, password: str) -> bool:
    result = await EXECUTOR.check_login(
        LoginRequest(
            target(server),
            Account(user, password),
            TEMPLATES["mysql/verify-login"],
            context(server, user, password, password),
        )
    )
    return result.ok


def test_registered_and_shipped_templates_valid() -> None:
    assert isinstance(get_executor("mysql"), MysqlExecutor)
    shipped = {t.name: t for t in shipped_templates() if t.executor == "mysql"}
    assert set(MysqlExecutor.default_templates.values()) <= set(shipped)
    assert shipped["mysql/set-password-self"].kind == "change"
    assert shipped["mysql/alter-user-admin"].kind == "change"
    assert shipped["mysql/verify-login"].kind == "verify"
    for template in shipped.values():
        EXECUTOR.validate(template.body)


async def test_change_then_verify(mysql_server: MysqlServer, mysql_users: MysqlUsers) -> None:
    current, new = "Current-pass-1234", "Brand-new-pass-5678"
    user = mysql_users.create(current)

    transcript = await change(mysql_server, user, current, new)

    assert await verify(mysql_server, user, new)
    assert not await verify(mysql_server, user, current)  # the old secret is refused
    assert await mysql_users.password_works(user, new)
    assert not await mysql_users.password_works(user, current)
    assert "> SET PASSWORD = PASSWORD('***');" in transcript
    assert_no_secret([transcript], current, new)


async def test_change_as_admin_with_account_host(
    mysql_server: MysqlServer, mysql_users: MysqlUsers
) -> None:
    admin_pw, current, new = "Adm1n'pw\\", "Current-1", "New-secret-2"
    admin = mysql_users.create(admin_pw, admin=True)
    user = mysql_users.create(current, host="127.0.0.1")
    await EXECUTOR.run(
        RunRequest(
            target(mysql_server, options={"account_host": "127.0.0.1"}),
            Account(admin, admin_pw),
            TEMPLATES["mysql/alter-user-admin"],
            context(mysql_server, user, current, new, admin, admin_pw),
        )
    )
    assert await mysql_users.password_works(user, new)
    assert not await mysql_users.password_works(user, current)
    assert await mysql_users.password_works(admin, admin_pw)


async def test_admin_change_of_a_missing_account_is_rejected(
    mysql_server: MysqlServer, mysql_users: MysqlUsers
) -> None:
    admin = mysql_users.create("Adm1n-pw", admin=True)
    user = mysql_users.create("Current-1")  # exists as user@'%', not user@'10.9.9.9'
    with pytest.raises(ChangeRejected) as caught:
        await EXECUTOR.run(
            RunRequest(
                target(mysql_server, options={"account_host": "10.9.9.9"}),
                Account(admin, "Adm1n-pw"),
                TEMPLATES["mysql/alter-user-admin"],
                context(mysql_server, user, "Current-1", "New-secret-2", admin, "Adm1n-pw"),
            )
        )
    assert "10.9.9.9" in str(caught.value)
    assert_no_secret(error_texts(caught.value), "New-secret-2", "Adm1n-pw")


async def test_wrong_current_password(mysql_server: MysqlServer, mysql_users: MysqlUsers) -> None:
    current, wrong, new = "Right-pass-1", "Wrong-pass-2", "New-pass-3"
    user = mysql_users.create(current)
    with pytest.raises(AuthenticationFailed) as caught:
        await change(mysql_server, user, wrong, new)
    assert "refused the password" in str(caught.value) and "mysql-test" in str(caught.value)
    assert_no_secret(error_texts(caught.value), current, wrong, new)
    assert await mysql_users.password_works(user, current)
    assert not await mysql_users.password_works(user, new)
    login = await EXECUTOR.check_login(LoginRequest(target(mysql_server), Account(user, wrong)))
    assert not login.ok


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(old=passwords, new=passwords, no_backslash_escapes=st.booleans())
async def test_any_password_changes_literally(
    mysql_server: MysqlServer,
    mysql_users: MysqlUsers,
    old: str,
    new: str,
    no_backslash_escapes: bool,
) -> None:
    if old == new:
        new += "x"
    user = mysql_users.create(old)
    template = NO_BACKSLASH_FIRST if no_backslash_escapes else ""
    transcript = await change(mysql_server, user, old, new, template)
    assert await mysql_users.password_works(user, new)
    assert not await mysql_users.password_works(user, old)
    assert_no_secret([transcript], old, new)


async def test_injection_in_password_and_username(
    mysql_server: MysqlServer, mysql_users: MysqlUsers
) -> None:
    victim = mysql_users.create("Victim-pass-1")
    evil_user = f"x\\'; DROP USER {victim}; --"
    evil_pw = f"x\\'); DROP USER '{victim}'@'%'; --"
    mysql_users.create("Start-pass-1", name=evil_user)
    admin = mysql_users.create("Adm1n-pw", admin=True)
    accounts_before = mysql_users.accounts()

    await change(mysql_server, evil_user, "Start-pass-1", evil_pw)
    assert await verify(mysql_server, evil_user, evil_pw)
    await EXECUTOR.run(  # the username lands in an account name too
        RunRequest(
            target(mysql_server),
            Account(admin, "Adm1n-pw"),
            TEMPLATES["mysql/alter-user-admin"],
            context(mysql_server, evil_user, evil_pw, evil_pw + "2", admin, "Adm1n-pw"),
        )
    )

    assert mysql_users.accounts() == accounts_before
    assert await mysql_users.password_works(evil_user, evil_pw + "2")
    assert await mysql_users.password_works(victim, "Victim-pass-1")


async def test_syntax_error_never_quotes_the_statement(
    mysql_server: MysqlServer, mysql_users: MysqlUsers
) -> None:
    user = mysql_users.create("Pass-word-1")
    secret = "a-rather-long-secret-that-the-server-would-cut-in-the-middle-0123456789"
    with pytest.raises(TemplateFailed) as caught:
        await change(
            mysql_server, user, "Pass-word-1", secret, "SET PASSWORD = {{ new_password }} x;\n"
        )
    assert "1064" in str(caught.value) and "line 1 (statement)" in str(caught.value)
    assert caught.value.login is LoginProgress.ACCEPTED  # the server ran it: logged in
    assert "a-rather" not in str(caught.value)
    assert_no_secret(error_texts(caught.value), secret, "Pass-word-1")


async def test_stopped_server_is_connect_failed(mysql_server: MysqlServer) -> None:
    # Nothing listens on port 1: the same as a stopped server, without stopping the shared one.
    with pytest.raises(ConnectFailed) as caught:
        await change(mysql_server, "nobody", "Pass-word-1", "New-pass-2", port=1)
    assert caught.value.retryable and "mysql-test" in str(caught.value)
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED and caught.value.may_retry
    assert_no_secret(error_texts(caught.value), "Pass-word-1", "New-pass-2")


async def test_a_missing_database_is_reported_after_an_accepted_login(
    mysql_server: MysqlServer, mysql_users: MysqlUsers
) -> None:
    user = mysql_users.create("Pass-word-1")
    with pytest.raises(TemplateFailed, match="database 'kt_nope'") as caught:
        await EXECUTOR.check_login(
            LoginRequest(
                target(mysql_server, options={"database": "kt_nope"}),
                Account(user, "Pass-word-1"),
            )
        )
    # Error 1044 (no access to it) answers a password the server took; 1045 is its refusal.
    assert caught.value.login is LoginProgress.ACCEPTED


# -- how far a login got, against a peer that stops answering ------------------------------------

_CLIENT_SSL = 0x0800  # capability flag: the server offers TLS


def _greeting(server: MysqlServer, tls: bool) -> bytes:
    """The real server's greeting packet, offering TLS or not."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        header = sock.recv(4, socket.MSG_WAITALL)
        payload = bytearray(sock.recv(int.from_bytes(header[:3], "little"), socket.MSG_WAITALL))
    caps = payload.index(0, 1) + 1 + 4 + 8 + 1  # protocol, version\0, thread id, salt, filler
    flags = int.from_bytes(payload[caps : caps + 2], "little")
    flags = flags | _CLIENT_SSL if tls else flags & ~_CLIENT_SSL
    payload[caps : caps + 2] = flags.to_bytes(2, "little")
    return header + bytes(payload)


@contextlib.asynccontextmanager
async def silent_peer(greeting: bytes) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A MySQL peer that sends ``greeting`` (if any), then reads and never answers."""
    received: list[bytes] = []
    release = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(4096):
                received.append(data)
        await release.wait()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], received
    finally:
        release.set()
        server.close()


@pytest.mark.parametrize(
    ("greeting", "login"),
    [
        # No greeting: the handshake never began.
        pytest.param("none", LoginProgress.NOT_ATTEMPTED, id="no-greeting"),
        # Greeting offering TLS: the client starts it, the peer never answers the ClientHello.
        pytest.param("tls", LoginProgress.NOT_ATTEMPTED, id="tls-never-completes"),
        # Greeting without TLS: the handshake response with the password's scramble goes out.
        pytest.param("plain", LoginProgress.UNKNOWN, id="no-verdict"),
    ],
)
async def test_a_peer_that_stops_answering(
    mysql_server: MysqlServer, greeting: str, login: LoginProgress
) -> None:
    packet = b"" if greeting == "none" else _greeting(mysql_server, tls=greeting == "tls")
    # A client that asks for TLS never sends the handshake response without it: the plain case
    # is a device that allows cleartext.
    plain = {"options": {"ssl": False}, "allow_insecure_transport": True}
    async with silent_peer(packet) as (port, received):
        with pytest.raises(ConnectFailed) as caught:
            await EXECUTOR.check_login(
                LoginRequest(
                    target(
                        mysql_server,
                        port=port,
                        read_timeout=1.0,
                        **(plain if greeting == "plain" else {}),
                    ),
                    Account("kt_someone", "Pass-word-1"),
                )
            )
    assert caught.value.login is login
    assert caught.value.may_retry is (login is LoginProgress.NOT_ATTEMPTED)
    if greeting == "plain":
        assert b"kt_someone" in b"".join(received)  # the handshake response did go out


async def test_a_server_without_tls_gets_nothing(mysql_server: MysqlServer) -> None:
    # A greeting that does not offer TLS (a downgrade): the client asked for TLS and stops.
    async with silent_peer(_greeting(mysql_server, tls=False)) as (port, received):
        with pytest.raises(ConnectFailed) as caught:
            await EXECUTOR.check_login(
                LoginRequest(
                    target(mysql_server, port=port, read_timeout=1.0),
                    Account("kt_someone", "Pass-word-1"),
                )
            )
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED
    assert b"kt_someone" not in b"".join(received)


async def test_cleartext_is_refused_unless_the_device_allows_it(
    plain_mysql_server: MysqlServer,
) -> None:
    plain = make_target(
        "mysql-test", plain_mysql_server.host, plain_mysql_server.port, options={"ssl": False}
    )
    with pytest.raises(ConfigurationError, match="allow_insecure_transport") as caught:
        await EXECUTOR.check_login(LoginRequest(plain, Account("kt_someone", "Pass-word-1")))
    assert "'ssl' is false" in str(caught.value)
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED


async def test_insecure_transport_when_the_device_allows_it(
    plain_mysql_server: MysqlServer,
) -> None:
    with users_on(plain_mysql_server) as users:
        user = users.create("Pass-word-1")
        plain = make_target(
            "mysql-test",
            plain_mysql_server.host,
            plain_mysql_server.port,
            options={"ssl": False},
            allow_insecure_transport=True,
        )
        login = await EXECUTOR.check_login(LoginRequest(plain, Account(user, "Pass-word-1")))
        assert login.ok
        assert not (await EXECUTOR.check_login(LoginRequest(plain, Account(user, "Wrong-1")))).ok


async def test_the_default_is_verified_tls(
    mysql_server: MysqlServer, mysql_users: MysqlUsers
) -> None:
    # TLS without a CA file: the server's certificate chains to no CA the system trusts.
    user = mysql_users.create("Pass-word-1")
    default = make_target("mysql-test", mysql_server.host, mysql_server.port)
    with pytest.raises(ConnectFailed, match="(?i)certificate") as caught:
        await EXECUTOR.check_login(LoginRequest(default, Account(user, "Pass-word-1")))
    assert caught.value.login is LoginProgress.NOT_ATTEMPTED


async def test_read_timeout_after_a_secret_is_outcome_unknown(
    mysql_server: MysqlServer, mysql_users: MysqlUsers
) -> None:
    user = mysql_users.create("Pass-word-1")
    template = "SELECT LENGTH({{ new_password }});\nSELECT SLEEP(5);\n"
    with pytest.raises(ExecutorError) as caught:
        await change(mysql_server, user, "Pass-word-1", "Secret-77", template, read_timeout=0.5)
    assert caught.value.kind == "OutcomeUnknown" and "line 2" in str(caught.value)
    assert_no_secret(error_texts(caught.value), "Secret-77", "Pass-word-1")


@pytest.mark.parametrize(
    ("template", "line"),
    [
        ("SET PASSWORD = PASSWORD({{ new_password }})\n", 1),
        ("-- kind: change\nSELECT 1;\n-- expect: [\n", 3),
        ("SELECT 1;\nSELECT {% if %};\n", 2),
    ],
)
def test_validate_rejects_bad_templates(template: str, line: int) -> None:
    with pytest.raises(TemplateSyntaxProblem) as caught:
        EXECUTOR.validate(template)
    assert caught.value.line == line
