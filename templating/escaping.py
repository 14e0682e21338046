"""Escaping per context, applied automatically where a tag lands in code.

An executor renders its templates with one *context escape* (SQL literal, PowerShell string,
JSON value, …): every ``{{ value }}`` is escaped for that context unless a filter already escaped
it for another one (``{{ username | sql_ident }}``). So no template can paste a secret unescaped,
and a template author who wants a different quoting says so explicitly.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable

from ldap3.utils.conv import escape_filter_chars


class Escaped(str):
    """Text already escaped for its context: the automatic escape leaves it alone."""


Escape = Callable[[object], str]


def _escaped(fn: Callable[[str], str]) -> Callable[[object], Escaped]:
    def apply(value: object) -> Escaped:
        return value if isinstance(value, Escaped) else Escaped(fn(str(value)))

    apply.__name__ = fn.__name__
    return apply


@_escaped
def sql_literal(value: str) -> str:
    """A standard SQL string literal ('' doubles a quote). Backslashes are plain characters in
    PostgreSQL (standard_conforming_strings) but escapes in MySQL: MySQL executors use
    ``mysql_literal``."""
    if "\x00" in value:
        raise ValueError("a NUL character cannot be sent in an SQL literal")
    return "'" + value.replace("'", "''") + "'"


@_escaped
def mysql_literal(value: str) -> str:
    """A MySQL/MariaDB string literal: backslash and quote escaped (default sql_mode)."""
    if "\x00" in value:
        raise ValueError("a NUL character cannot be sent in an SQL literal")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@_escaped
def sql_ident(value: str) -> str:
    """A double-quoted SQL identifier (PostgreSQL, standard SQL)."""
    if "\x00" in value:
        raise ValueError("a NUL character cannot be part of an identifier")
    return '"' + value.replace('"', '""') + '"'


@_escaped
def ldap_dn(value: str) -> str:
    """One RDN value of an LDAP distinguished name (RFC 4514). Every special character is
    escaped wherever it stands (RFC 4514 only requires '#' and spaces at the ends, but ldap3's
    own DN parser refuses a bare '#' anywhere, and escaping more is always valid)."""
    out = []
    for index, char in enumerate(value):
        if char in _DN_SPECIAL or (char == " " and index in (0, len(value) - 1)):
            out.append("\\" + char)
        elif char == "\x00":
            out.append("\\00")
        else:
            out.append(char)
    return "".join(out)


_DN_SPECIAL = frozenset(',+"\\<>;=#')


@_escaped
def ldap_filter(value: str) -> str:
    """An assertion value inside an LDAP search filter (RFC 4515)."""
    return str(escape_filter_chars(value))


@_escaped
def powershell(value: str) -> str:
    """A PowerShell single-quoted string: no expansion; quotes (incl. typographic) doubled."""
    for quote in ("'", "\u2018", "\u2019", "\u201a", "\u201b"):
        value = value.replace(quote, quote + quote)
    return "'" + value + "'"


@_escaped
def json_value(value: str) -> str:
    """A JSON string, quotes included."""
    return json.dumps(value, ensure_ascii=False)


@_escaped
def shell(value: str) -> str:
    """One POSIX shell word."""
    return shlex.quote(value)


@_escaped
def plain(value: str) -> str:
    """No escaping: for contexts where the executor passes values out of band (SSH send:)."""
    return value


FILTERS: dict[str, Callable[[object], Escaped]] = {
    "sql_literal": sql_literal,
    "mysql_literal": mysql_literal,
    "sql_ident": sql_ident,
    "ldap_dn": ldap_dn,
    "ldap_filter": ldap_filter,
    "powershell": powershell,
    "json": json_value,
    "shell": shell,
}
