"""Render template text in a Jinja2 sandbox.

StrictUndefined turns a misspelt tag into an error instead of an empty string, which on a
password change would silently set the wrong password. Segura-style ``[#NEW_PASSWORD#]`` tags are
rewritten to Jinja expressions on the same line, so error line numbers stay true.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes

from templating.budget import (
    CURRENT,
    Budget,
    BudgetedEnvironment,
    BudgetExceeded,
    budgeted_range,
    watchdog,
)
from templating.escaping import (
    FILTERS,
    Escape,
    Escaped,
    context_of,
    fits,
    sql_literal,
)
from templating.scram import scram_sha_256

SEGURA_TAGS = {
    "USERNAME": "username",
    "CURRENT_PASSWORD": "current_password",
    "NEW_PASSWORD": "new_password",
    "AUTH_USER": "auth_username",
    "AUTH_PASSWORD": "auth_password",
    "HOSTNAME": "hostname",
    "IP": "address",
    "PORT": "port",
}
_SEGURA_TAG = re.compile(r"\[#([A-Z_]+)#\]")


class TemplateSyntaxProblem(ValueError):
    """A template that cannot be used; ``line`` is 1-based within the template's text."""

    def __init__(self, message: str, line: int | None) -> None:
        self.message = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


@dataclass(frozen=True)
class TemplateContext:
    """What a template can refer to. Secrets live here only inside an activity's memory."""

    username: str
    current_password: str = field(repr=False)
    new_password: str = field(repr=False)
    hostname: str
    address: str
    port: int
    auth_username: str = ""
    auth_password: str = field(default="", repr=False)
    values: dict[str, str] = field(default_factory=dict)
    # A task's parameters (templating/parameters.py), checked against their declarations.
    params: dict[str, str | int | bool] = field(default_factory=dict)

    def __repr__(self) -> str:  # never print secrets, even by accident in a traceback
        return f"TemplateContext(username={self.username!r}, hostname={self.hostname!r})"

    def as_mapping(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "current_password": self.current_password,
            "new_password": self.new_password,
            "auth_username": self.auth_username,
            "auth_password": self.auth_password,
            "hostname": self.hostname,
            "address": self.address,
            "port": self.port,
            "values": self.values,
            "params": self.params,
        }

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.current_password, self.new_password, self.auth_password) if s)


def _scram_literal(value: object) -> Escaped:
    """PostgreSQL: the SQL literal of the password's SCRAM-SHA-256 verifier (templating.scram)."""
    return sql_literal(scram_sha_256(str(value)))


@lru_cache(maxsize=32)
def _environment(escape: Escape | None) -> BudgetedEnvironment:
    env = BudgetedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_finalizer(escape),
    )
    env.filters.update(FILTERS)
    env.filters["scram_sha_256"] = _scram_literal
    env.globals["range"] = budgeted_range
    return env


# The context each escaping filter escapes for (see templating.escaping.COMPATIBLE).
FILTER_CONTEXTS: dict[str, str] = {
    **{name: str(context_of(escape)) for name, escape in FILTERS.items()},
    "scram_sha_256": "sql_literal",
}


def _finalizer(escape: Escape | None) -> Callable[[object], object]:
    """Every ``{{ }}`` output passes here: escaped for the executor's context unless a filter
    already escaped it for a context that fits. StrictUndefined raises before this for a
    misspelt name."""
    if escape is None:
        return lambda value: value
    place = context_of(escape)

    def finalize(value: object) -> object:
        if not isinstance(value, Escaped):
            return escape(value)
        if not fits(value.context, place):
            raise ValueError(f"a value escaped for {value.context} cannot stand in {place}")
        return value

    return finalize


def _translate_segura_tags(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = SEGURA_TAGS.get(match.group(1))
        return "{{ " + name + " }}" if name else match.group(0)

    return _SEGURA_TAG.sub(replace, text)


@lru_cache(maxsize=1024)
def _compile(text: str, escape: Escape | None = None) -> jinja2.Template:
    try:
        return _environment(escape).from_string(_translate_segura_tags(text))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateSyntaxProblem(exc.message or "syntax error", exc.lineno) from None


def check_syntax(text: str, first_line: int = 1, context: str | None = None) -> None:
    """Raise TemplateSyntaxProblem (with the line, offset by ``first_line``) if text won't parse,
    or if it uses an escaping filter whose context does not fit ``context``, the context the
    executor escapes this text for (None: a place that takes any value)."""
    try:
        _compile(text)
    except TemplateSyntaxProblem as exc:
        line = exc.line + first_line - 1 if exc.line else first_line
        raise TemplateSyntaxProblem(exc.message, line) from None
    if context is None:
        return
    for name, lineno in _filters(text):
        escaped_for = FILTER_CONTEXTS.get(name)
        if escaped_for is not None and not fits(escaped_for, context):
            usable = sorted(n for n, c in FILTER_CONTEXTS.items() if fits(c, context))
            hint = f"use {' or '.join(usable)}, or" if usable else "use"
            raise TemplateSyntaxProblem(
                f"the {name} filter escapes for {escaped_for}, but this text is escaped "
                f"for {context}: {hint} no filter ({context} escaping applies by itself)",
                lineno + first_line - 1,
            )


@lru_cache(maxsize=1024)
def _filters(text: str) -> tuple[tuple[str, int], ...]:
    """The filters ``text`` uses and their lines. Cached like ``_compile``: the script of every
    attempt is checked again, and templates hold tags, never a secret."""
    source = _translate_segura_tags(text)
    return tuple(
        (node.name, node.lineno) for node in _environment(None).parse(source).find_all(nodes.Filter)
    )


def render(text: str, context: TemplateContext, line: int = 1, escape: Escape | None = None) -> str:
    """Render template text; every tag is passed through ``escape`` (templating.escaping) unless
    a filter escaped it already. An undefined name or a bad value is a TemplateSyntaxProblem
    naming ``line`` (the line of ``text`` within its template)."""
    try:
        return _render_within(_compile(text, escape), context, Budget.start())
    except TemplateSyntaxProblem as exc:
        raise TemplateSyntaxProblem(exc.message, line) from None
    except jinja2.UndefinedError as exc:
        raise TemplateSyntaxProblem(str(exc.message), line) from None
    except jinja2.TemplateError as exc:
        raise TemplateSyntaxProblem(str(exc), line) from None
    except ValueError as exc:  # an escape refused a value (a NUL in SQL, say); says which rule
        raise TemplateSyntaxProblem(str(exc), line) from None


def _render_within(template: jinja2.Template, context: TemplateContext, budget: Budget) -> str:
    """The template's output, piece by piece, within the budget (templating.budget)."""
    token = CURRENT.set(budget)
    try:
        pieces: list[str] = []
        size = 0
        with watchdog(budget):
            for piece in template.generate(context.as_mapping()):
                size += len(piece)
                budget.check_size(size)
                budget.check_time()
                pieces.append(piece)
        return "".join(pieces)
    except BudgetExceeded as exc:
        # Raised by the watchdog as a class: give it the message the budget's own checks give.
        raise BudgetExceeded(str(exc) or _LATE) from None
    finally:
        CURRENT.reset(token)


_LATE = "rendering took longer than its budget: simplify the template"
