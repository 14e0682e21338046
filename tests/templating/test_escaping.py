"""Each context escape, checked by the real parser of its context where one runs here:
PostgreSQL and MariaDB read the SQL literals back, ldap3 parses the DNs, json parses JSON,
sh reads the shell words. PowerShell cannot run here: its rule is checked by a parser of
PowerShell's single-quoted strings (language spec §2.3.5.2), quote by quote."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator

import psycopg
import pymysql
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ldap3.utils.dn import parse_dn

from templating import TemplateContext, render
from templating.escaping import (
    Escaped,
    json_value,
    ldap_dn,
    mysql_literal,
    powershell,
    shell,
    sql_ident,
    sql_literal,
)
from tests.servers.mysql import MysqlServer
from tests.servers.postgresql import PostgresCluster

TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    max_size=40,
)
TRICKY = "x'; DROP ROLE admin; -- \\ \" % $ {} é ß ж ‘’"


@pytest.fixture(scope="module")
def postgres(pg_cluster: PostgresCluster) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with pg_cluster.superuser_connection() as connection:
        yield connection


@pytest.fixture(scope="module")
def mariadb(mysql_server: MysqlServer) -> Iterator[pymysql.connections.Connection]:
    connection = mysql_server.admin()
    yield connection
    connection.close()


@settings(max_examples=60, deadline=None)
@given(TEXT)
def test_sql_literal_reads_back_in_postgresql(
    postgres: psycopg.Connection[tuple[object, ...]], value: str
) -> None:
    row = postgres.execute(f"SELECT {sql_literal(value)} AS {sql_ident(value or 'x')}").fetchone()
    assert row is not None and row[0] == value


@settings(max_examples=60, deadline=None)
@given(TEXT)
def test_mysql_literal_reads_back_in_mariadb(
    mariadb: pymysql.connections.Connection,
    value: str,
) -> None:
    with mariadb.cursor() as cursor:
        cursor.execute("SET SESSION sql_mode = 'STRICT_TRANS_TABLES'")
        cursor.execute(f"SELECT {mysql_literal(value)}")
        assert cursor.fetchone() == (value,)


@settings(max_examples=100)
@given(TEXT.filter(bool))
def test_ldap_dn_value_parses_back_as_one_rdn(value: str) -> None:
    dn = f"uid={ldap_dn(value)},ou=people,dc=keyturn,dc=test"
    parsed = parse_dn(dn, escape=False)
    assert len(parsed) == 4 and parsed[0][0] == "uid"


@settings(max_examples=100)
@given(TEXT)
def test_json_value_round_trips(value: str) -> None:
    assert json.loads(json_value(value)) == value


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30))
def test_shell_word_is_read_back_by_sh(value: str) -> None:
    out = subprocess.run(["sh", "-c", f"printf %s {shell(value)}"], capture_output=True, check=True)
    assert out.stdout.decode() == value


def _read_powershell_single_quoted(source: str) -> str:
    """PowerShell's rule: inside '…', any single-quote character ('‘’‚‛) doubled is one quote."""
    quotes = "'\u2018\u2019\u201a\u201b"
    assert source[0] == "'" and source[-1] == "'"
    body, out, i = source[1:-1], [], 0
    while i < len(body):
        if body[i] in quotes:
            assert i + 1 < len(body) and body[i + 1] in quotes, "a lone quote ends the string"
            out.append(body[i])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


@settings(max_examples=100)
@given(TEXT)
def test_powershell_string_reads_back(value: str) -> None:
    assert _read_powershell_single_quoted(powershell(value)) == value


def test_automatic_escape_applies_to_every_tag_unless_a_filter_escaped_it() -> None:
    context = TemplateContext("ro'le", "old", TRICKY, "h", "127.0.0.1", 25432)
    sql = render(
        "ALTER ROLE {{ username | sql_ident }} WITH PASSWORD {{ new_password }}",
        context,
        escape=sql_literal,
    )
    assert sql == f'ALTER ROLE "ro\'le" WITH PASSWORD {sql_literal(TRICKY)}'
    assert isinstance(sql_literal("x"), Escaped) and sql_literal(sql_literal("x")) == "'x'"
    # Without a context escape (the SSH executor sends values out of band) nothing changes.
    assert render("{{ new_password }}", context) == TRICKY


def test_a_value_sql_cannot_carry_is_refused_with_a_reason() -> None:
    context = TemplateContext("u", "old", "nul\x00", "h", "127.0.0.1", 1)
    with pytest.raises(ValueError, match="NUL"):
        render("{{ new_password }}", context, escape=sql_literal)
    assert re.search("nul", str(context)) is None
