"""Escaping per context, applied automatically where a tag lands in code.

An executor renders its templates with one *context escape* (SQL literal, PowerShell string,
JSON value, …): every ``{{ value }}`` is escaped for that context unless a filter already escaped
it for another one (``{{ username | sql_ident }}``). So no template can paste a secret unescaped,
and a template author who wants a different quoting says so explicitly.

An escaped value remembers the context it was escaped for (``Escaped.context``). Text escaped for
one context is not safe in another (an SQL literal inside a PowerShell string, a JSON string in
a shell command), so a filter whose context does not fit the place it is used in is refused: by
``check_syntax`` when a template is saved, and by the renderer should one get through.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from typing import Any, TypeVar


class Escaped(str):
    """Text already escaped for ``context``: the automatic escape of that context (or of one
    that accepts it, see COMPATIBLE) leaves it alone; any other refuses it."""

    context: str

    def __new__(cls, text: str, context: str) -> Escaped:
        escaped = super().__new__(cls, text)
        escaped.context = context
        return escaped


Escape = Callable[[object], str]

# For each context a place is escaped for: the contexts whose escaped text is valid there too.
COMPATIBLE: dict[str, frozenset[str]] = {
    "sql_literal": frozenset({"sql_literal", "sql_ident"}),  # PostgreSQL statements
    "mysql_literal": frozenset({"mysql_literal"}),  # MySQL quotes identifiers otherwise
    "sql_ident": frozenset({"sql_ident"}),
    "ldap_dn": frozenset({"ldap_dn"}),
    "ldap_filter": frozenset({"ldap_filter"}),
    "powershell": frozenset({"powershell"}),
    "json": frozenset({"json"}),
    "shell": frozenset({"shell"}),
    "regex": frozenset({"regex"}),
    "url": frozenset(),  # a URL path segment: no filter escapes for it
}


def fits(value_context: str, place_context: str | None) -> bool:
    """May text escaped for ``value_context`` stand in a place escaped for ``place_context``?
    A place with no context (a value passed out of band) takes any."""
    return place_context is None or value_context in COMPATIBLE.get(place_context, ())


def context_of(escape: Escape | None) -> str | None:
    """The context an escape function escapes for, if it says (see escapes_for)."""
    return getattr(escape, "context", None)


_E = TypeVar("_E", bound=Callable[..., Any])


def escapes_for(context: str) -> Callable[[_E], _E]:
    """Mark an executor's escape function with the context it escapes for, so the renderer
    refuses a value a filter escaped for a context that does not fit."""

    def mark(escape: _E) -> _E:
        escape.context = context  # type: ignore[attr-defined]
        return escape

    return mark


def _escaped(fn: Callable[[str], str]) -> Callable[[object], Escaped]:
    context = "json" if fn.__name__ == "json_value" else fn.__name__

    def apply(value: object) -> Escaped:
        if isinstance(value, Escaped):
            if not fits(value.context, context):
                raise ValueError(
                    f"a value escaped for {value.context} cannot be escaped again for {context}"
                )
            return value
        return Escaped(fn(str(value)), context)

    apply.__name__ = fn.__name__
    return escapes_for(context)(apply)


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
    # Imported on first use, as the LDAP executor imports ldap3: a worker that never renders
    # an LDAP template does not hold the library (~5 MiB).
    from ldap3.utils.conv import escape_filter_chars

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
def regex(value: str) -> str:
    """A regular expression matching the value literally."""
    return re.escape(value)


def plain(value: object) -> str:
    """No escaping: for contexts where the executor passes values out of band (SSH send:).
    Has no context: any escaped value may stand there."""
    return str(value)


FILTERS: dict[str, Callable[[object], Escaped]] = {
    "sql_literal": sql_literal,
    "mysql_literal": mysql_literal,
    "sql_ident": sql_ident,
    "ldap_dn": ldap_dn,
    "ldap_filter": ldap_filter,
    "powershell": powershell,
    "json": json_value,
    "shell": shell,
    "regex": regex,
}
