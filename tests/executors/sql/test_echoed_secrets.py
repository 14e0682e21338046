"""A secret the server echoes back (in an error, a returned value, base64 or hex of it) never
appears in an executor's error or transcript, in any encoding, on PostgreSQL and MariaDB."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from executors.base import Account, ExecutorError, RunRequest
from executors.sql import MysqlExecutor, PostgresqlExecutor
from tests.executors.encodings import assert_masked, secrets_strategy
from tests.executors.helpers import error_texts, make_context, make_target
from tests.servers.mysql import MysqlServer, MysqlUsers
from tests.servers.postgresql import PostgresCluster, Roles

# Each statement makes the server echo the new password: in an error message, or as a value
# that the expect: line refuses (its error quotes the value, the transcript shows it).
POSTGRESQL_ECHOES = [
    "SELECT {{ new_password }}::int;",
    "SELECT {{ new_password }};\n-- expect: nothing",
    "SELECT quote_literal({{ new_password }});\n-- expect: nothing",
    "SELECT encode(convert_to({{ new_password }}, 'UTF8'), 'base64');\n-- expect: nothing",
    "SELECT encode(convert_to({{ new_password }}, 'UTF8'), 'hex');\n-- expect: nothing",
    "SELECT to_json({{ new_password }}::text)::text;\n-- expect: nothing",
]
MYSQL_ECHOES = [
    "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = {{ new_password }};",
    "SELECT {{ new_password }};\n-- expect: nothing",
    "SELECT QUOTE({{ new_password }});\n-- expect: nothing",
    "SELECT TO_BASE64({{ new_password }});\n-- expect: nothing",
    "SELECT HEX({{ new_password }});\n-- expect: nothing",
    "SELECT JSON_QUOTE({{ new_password }});\n-- expect: nothing",
]
SETTINGS = settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


async def _echo(executor: PostgresqlExecutor | MysqlExecutor, request: RunRequest) -> list[str]:
    with pytest.raises(ExecutorError) as raised:
        await executor.run(request)
    return error_texts(raised.value)


@SETTINGS
@given(secret=secrets_strategy)
async def test_postgresql_echo(pg_cluster: PostgresCluster, pg_roles: Roles, secret: str) -> None:
    current = "Current-pass-1234"
    user = pg_roles.create(current)
    options = pg_cluster.client_options()
    target = make_target("pg-test", "127.0.0.1", pg_cluster.port, options=options)
    context = make_context("pg-test", "127.0.0.1", pg_cluster.port, user, current, secret)
    for template in POSTGRESQL_ECHOES:
        request = RunRequest(target, Account(user, current), template, context)
        assert_masked(await _echo(PostgresqlExecutor(), request), secret, where=template)


@SETTINGS
@given(secret=secrets_strategy)
async def test_mysql_echo(mysql_server: MysqlServer, mysql_users: MysqlUsers, secret: str) -> None:
    current = "Current-pass-1234"
    user = mysql_users.create(current)
    options = mysql_server.client_options()
    target = make_target("mysql-test", mysql_server.host, mysql_server.port, options=options)
    context = make_context(
        "mysql-test", mysql_server.host, mysql_server.port, user, current, secret
    )
    for template in MYSQL_ECHOES:
        request = RunRequest(target, Account(user, current), template, context)
        assert_masked(await _echo(MysqlExecutor(), request), secret, where=template)
